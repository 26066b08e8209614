"""The lung and lesion masks as a DICOM Segmentation (BINARY), built through highdicom's typed classes.

Frame k of the mask is slice k of the volume, whose source dataset is ``series.datasets[k]``;
highdicom takes each frame's position and per-frame source image reference from that dataset,
so the SEG lies exactly on the CT slices it was computed from. Frames without the segment are
left out (:data:`OMIT_EMPTY_FRAMES`). No lung at all is an :class:`EncodingError` here; the
caller writes a scan without lungs as a report alone (:func:`dicomnode.encode.encode_results`).

Lesions lie inside the lungs, so with lesions the segments overlap and cannot share one label
map: highdicom then gets one binary mask per segment (SegmentsOverlap YES). highdicom checks
the overlap by summing the masks into a 64-bit count per voxel, so encoding costs about
(segments + 9) bytes per voxel it is given. Two things keep that down without changing the
object: highdicom is given only the slices from the first to the last one holding a segment
(the others are referenced as further source images; their frames would be empty and left
out), and the masks are laid out segment by segment, so each frame highdicom takes is one
contiguous plane. The lung-only SEG keeps the compact label map.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicomnode.encode.identity import (
    SEG_INSTANCE,
    SEG_SERIES,
    derived_uid,
    device_identity,
    seg_algorithm_identification,
    tracking_kind,
)
from dicomnode.encode.segments import (
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ABNORMAL,
    EncodingError,
    LesionSegment,
    NumberedSegment,
    check_labels,
    lesion_segments,
    present_segments,
)
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

logger = logging.getLogger(__name__)

CONTENT_LABEL = "LUNGS"
CONTENT_DESCRIPTION = "Lung segmentation"
CONTENT_DESCRIPTION_WITH_LESIONS = "Lungs and lesion candidates"

#: Whether frames without the segment are left out (highdicom's default, stated here). The slice
#: range given to highdicom depends on it: without omission every slice is given.
OMIT_EMPTY_FRAMES = True

#: Attributes highdicom copies from the source images (Type 2 in CT Image: present, maybe empty).
_PATIENT_STUDY_ATTRIBUTES = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)


def encode_seg(series: SeriesVolume, findings: Findings, settings: Settings) -> hd.seg.Segmentation:
    """A BINARY Segmentation of the lungs, then of each lesion, on the source slices of ``series``.

    Raises :class:`EncodingError` when there is no lung, or when the findings or the source
    headers cannot make a valid object.
    """
    labels = findings.lung_labels
    check_labels(labels, series.volume.hu.shape)
    segments = present_segments(labels)
    lesions = lesion_segments(findings, after=len(segments))
    sources = _source_images(series.datasets)
    planes = _segment_planes(findings) if OMIT_EMPTY_FRAMES else slice(0, len(sources))
    device = device_identity(settings)
    context = (series, findings, settings)
    descriptions = [
        _describe(n.number, n.segment.name, n.segment.key, ANATOMICAL_STRUCTURE, n.segment.code, n.segment.rgb, context)
        for n in segments
    ]
    descriptions += [
        _describe(les.number, les.name, les.key, MORPHOLOGICALLY_ABNORMAL, les.code, les.rgb, context, [les.site])
        for les in lesions
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources[planes],
            further_source_images=sources[: planes.start] + sources[planes.stop :] or None,
            pixel_array=_pixel_array(findings, segments, lesions, planes),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=derived_uid(SEG_SERIES, series, findings, settings),
            series_number=settings.encoding.seg_series_number,
            sop_instance_uid=derived_uid(SEG_INSTANCE, series, findings, settings),
            instance_number=1,
            manufacturer=device.manufacturer,
            manufacturer_model_name=device.model_name,
            software_versions=device.software_versions,
            device_serial_number=device.serial_number,
            institution_name=device.institution_name,
            series_description=settings.encoding.seg_series_description,
            content_label=CONTENT_LABEL,
            content_description=CONTENT_DESCRIPTION_WITH_LESIONS if lesions else CONTENT_DESCRIPTION,
            omit_empty_frames=OMIT_EMPTY_FRAMES,
        )
    except ValueError as error:  # highdicom's word that these inputs make no valid SEG
        raise EncodingError(f"the lung segmentation cannot be encoded: {error}") from error
    names = [n.segment.name for n in segments] + [lesion.name for lesion in lesions]
    logger.info("Encoded SEG %s: %s", seg.SOPInstanceUID, ", ".join(names))
    return seg


def _segment_planes(findings: Findings) -> slice:
    """The slices from the first to the last one with a lung or lesion voxel (there is one: a lung).

    At least two slices where the volume has them: highdicom derives SpacingBetweenSlices from
    the planes it is given (unless the source headers state it), and from a single plane it
    writes 1 mm, whatever the real spacing.
    """
    occupied = np.any(findings.lung_labels, axis=(1, 2))
    if findings.lesion_labels is not None:
        occupied |= np.any(findings.lesion_labels, axis=(1, 2))
    indices = np.flatnonzero(occupied)
    start, stop = int(indices[0]), int(indices[-1]) + 1
    if stop - start < 2 and len(occupied) >= 2:
        start, stop = (start, stop + 1) if stop < len(occupied) else (start - 1, stop)
    return slice(start, stop)


def _pixel_array(
    findings: Findings, segments: Sequence[NumberedSegment], lesions: Sequence[LesionSegment], planes: slice
) -> np.ndarray:
    """The masks of slices ``planes`` as highdicom takes them: a label map without lesions, else
    one mask per segment.

    In the stacked form, ``[..., n - 1]`` is segment ``n``: the lung segments, then the lesions.
    It is a (slices, rows, columns, segments) view of a bool array stored segment by segment, so
    that one segment's frame is a contiguous plane (highdicom encodes frame by frame).
    """
    labels = findings.lung_labels[planes]
    lesion_labels = findings.lesion_labels
    if not lesions or lesion_labels is None:  # lesion_segments() found no lesions without a map
        return _segment_number_map(labels, segments)
    lesion_labels = lesion_labels[planes]
    stack = np.empty((len(segments) + len(lesions), *labels.shape), dtype=bool)
    for numbered in segments:
        np.equal(labels, numbered.segment.label, out=stack[numbered.number - 1])
    for lesion in lesions:
        np.equal(lesion_labels, lesion.lesion.label, out=stack[lesion.number - 1])
    return np.moveaxis(stack, 0, -1)


def _segment_number_map(labels: np.ndarray, segments: Sequence[NumberedSegment]) -> np.ndarray:
    """The label map with each LungLabel replaced by its segment number (0 stays background)."""
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for numbered in segments:
        lookup[numbered.segment.label] = numbered.number
    return lookup[labels]


def _describe(
    number: int,
    name: str,
    key: str,
    category: hd.sr.CodedConcept | Code,
    code: hd.sr.CodedConcept | Code,
    rgb: tuple[int, int, int],
    context: tuple[SeriesVolume, Findings, Settings],
    sites: Sequence[hd.sr.CodedConcept] | None = None,
) -> hd.seg.SegmentDescription:
    """One segment's description: lung segments and lesion segments differ only in these fields."""
    series, findings, settings = context
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=category,
        segmented_property_type=code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=seg_algorithm_identification(findings),
        tracking_uid=derived_uid(tracking_kind(key), series, findings, settings),
        tracking_id=name,
        anatomic_regions=sites,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


def _source_images(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The source headers as highdicom needs them: patient/study attributes present, one frame of reference.

    Missing Type 2 attributes are an :class:`EncodingError` (highdicom copies them). Some
    de-identified collections (LIDC-IDRI) give every slice of one series its own
    FrameOfReferenceUID; the volume builder has checked that the slices form one regular
    stack, so the SEG takes the first slice's frame of reference (logged) rather than failing.
    Only copies are changed: the series' own headers stay as received.
    """
    missing = [keyword for keyword in _PATIENT_STUDY_ATTRIBUTES if keyword not in datasets[0]]
    if missing:
        raise EncodingError(f"the source images lack {', '.join(missing)} (Type 2 attributes of CT Image)")
    frames = {ds.get("FrameOfReferenceUID") for ds in datasets}
    if len(frames) <= 1:
        return list(datasets)
    first = datasets[0].get("FrameOfReferenceUID")
    logger.warning("The source slices carry %d FrameOfReferenceUIDs; the SEG uses the first slice's %s", len(frames), first)
    harmonised = []
    for ds in datasets:
        header = copy.deepcopy(ds)  # headers only (no pixel data): cheap
        header.FrameOfReferenceUID = first
        harmonised.append(header)
    return harmonised

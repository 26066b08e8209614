"""The lung and lesion masks as a DICOM Segmentation, BINARY or LABELMAP, built through highdicom.

Frame k of the mask is slice k of the volume, whose source dataset is ``series.datasets[k]``;
highdicom takes each frame's plane position and per-frame source image reference from that
dataset (and the plane orientation, shared by all frames), so the SEG lies exactly on the CT
slices it was computed from and a viewer can place every frame by its reference alone.

Empty frames are kept unless ``encoding.omit_empty_frames`` is set: viewers that place frames
by their index misplace a SEG whose empty frames are missing. No lung at all is an
:class:`EncodingError` here; the caller writes a scan without lungs as a report alone
(:func:`dicomnode.encode.encode_results`).

Two encodings, chosen per destination (:class:`dicomnode.settings.Delivery`):

- **BINARY**: one 1-bit frame per segment and slice. Lesions lie inside the lungs, so with
  lesions the segments overlap (SegmentsOverlap YES). highdicom takes overlapping segments as
  one full mask per segment (a byte per voxel and segment, 8 segments: 1.26 GB for 600 slices)
  and sums them into 64-bit counts to learn that they overlap (another 1.26 GB);
  :class:`_Segmentation` takes the lungs' and the lesions' segment numbers packed into one
  byte a voxel instead (:class:`PackedLabels`), and cuts each segment's frame from them. With
  omitted empty frames, highdicom is also given only the slices from the first to the last one
  holding a segment (the others are referenced as further source images).
- **LABELMAP**: one 8-bit frame per slice holding segment numbers (DICOM 2024, recent viewers
  such as OHIF 3.10): a lesion voxel shows its lesion, so there a lung segment is the lung
  without its lesions (:func:`dicomnode.encode.segments.shown_lung_labels`; the SR measures
  each segment as shown).
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
    derived_uid,
    device_identity,
    seg_algorithm_identification,
    seg_kinds,
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
    shown_lung_labels,
)
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

logger = logging.getLogger(__name__)

CONTENT_LABEL = "LUNGS"
CONTENT_DESCRIPTION = "Lung segmentation"
CONTENT_DESCRIPTION_WITH_LESIONS = "Lungs and lesion candidates"

#: highdicom's name of each SEG encoding of :data:`dicomnode.settings.SEG_TYPES`.
SEGMENTATION_TYPES = {
    "binary": hd.seg.SegmentationTypeValues.BINARY,
    "labelmap": hd.seg.SegmentationTypeValues.LABELMAP,
}

#: Attributes highdicom copies from the source images (Type 2 in CT Image: present, maybe empty).
_PATIENT_STUDY_ATTRIBUTES = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)


def encode_seg(
    series: SeriesVolume, findings: Findings, settings: Settings, seg_type: str = "binary"
) -> hd.seg.Segmentation:
    """A Segmentation (``seg_type`` "binary" or "labelmap") of the lungs, then of each lesion, on
    the source slices of ``series``.

    Raises :class:`EncodingError` when there is no lung, or when the findings or the source
    headers cannot make a valid object.
    """
    if seg_type not in SEGMENTATION_TYPES:
        raise ValueError(f"seg_type must be one of {', '.join(SEGMENTATION_TYPES)}, got {seg_type!r}")
    labels = findings.lung_labels
    check_labels(labels, series.volume.hu.shape)
    segments = present_segments(labels)
    lesions = lesion_segments(findings, after=len(segments))
    sources = _source_images(series.datasets)
    omit = settings.encoding.omit_empty_frames
    planes = _segment_planes(findings) if omit and seg_type == "binary" else slice(0, len(sources))
    instance_kind, series_kind = seg_kinds(seg_type)
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
        seg = _Segmentation(
            source_images=sources[planes],
            further_source_images=sources[: planes.start] + sources[planes.stop :] or None,
            pixel_array=_pixel_array(findings, segments, lesions, planes, seg_type),
            segmentation_type=SEGMENTATION_TYPES[seg_type],
            segment_descriptions=descriptions,
            series_instance_uid=derived_uid(series_kind, series, findings, settings),
            series_number=settings.encoding.seg_series_number,
            sop_instance_uid=derived_uid(instance_kind, series, findings, settings),
            instance_number=1,
            manufacturer=device.manufacturer,
            manufacturer_model_name=device.model_name,
            software_versions=device.software_versions,
            device_serial_number=device.serial_number,
            institution_name=device.institution_name,
            series_description=settings.encoding.seg_series_description,
            content_label=CONTENT_LABEL,
            content_description=CONTENT_DESCRIPTION_WITH_LESIONS if lesions else CONTENT_DESCRIPTION,
            omit_empty_frames=omit,
        )
    except ValueError as error:  # highdicom's word that these inputs make no valid SEG
        raise EncodingError(f"the lung segmentation cannot be encoded: {error}") from error
    names = [n.segment.name for n in segments] + [lesion.name for lesion in lesions]
    logger.info("Encoded %s SEG %s: %s", seg_type.upper(), seg.SOPInstanceUID, ", ".join(names))
    return seg


class PackedLabels(np.ndarray):
    """Two maps of segment numbers in one byte a voxel (slices, rows, columns): the lungs' in
    the low four bits, the lesions' in the high four.

    Segments overlap only across the two maps, never within one: segment ``n`` is wherever
    either half holds ``n``. A BINARY SEG with lesions needs at most 3 lung and
    ``MAX_LESIONS`` (10) lesion segments, so every number fits in four bits; two maps of a byte
    each took 157 MB more for 600 slices.
    """

    #: The largest segment number either half can hold.
    MAX_SEGMENT = 0x0F

    @classmethod
    def pack(cls, lung_lookup: np.ndarray, lung_labels: np.ndarray, lesion_lookup: np.ndarray, lesion_labels: np.ndarray) -> "PackedLabels":
        """``lung_lookup[lung_labels]`` in the low bits and ``lesion_lookup[lesion_labels]`` in
        the high bits, a few planes at a time (no volume-sized temporary)."""
        if max(int(lung_lookup.max()), int(lesion_lookup.max())) > cls.MAX_SEGMENT:
            raise ValueError(f"segment numbers above {cls.MAX_SEGMENT} do not fit in four bits")
        high = (lesion_lookup << 4).astype(np.uint8)
        packed = np.empty(lung_labels.shape, dtype=np.uint8)
        for start in range(0, len(packed), _LOOKUP_PLANES):
            planes = slice(start, start + _LOOKUP_PLANES)
            packed[planes] = lung_lookup[lung_labels[planes]]
            packed[planes] |= high[lesion_labels[planes]]
        return packed.view(cls)

    @staticmethod
    def segment_frame(plane: np.ndarray, segment_number: int) -> np.ndarray:
        """Where ``segment_number`` is, in a plane of packed labels (bool)."""
        frame = (plane & PackedLabels.MAX_SEGMENT) == segment_number
        frame |= (plane >> 4) == segment_number
        return frame


class _Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation that also takes a BINARY SEG's masks as :class:`PackedLabels`.

    Two private methods of highdicom are extended for them (any other pixel array goes to
    highdicom's own): the check of the pixel array, which here learns whether segments overlap
    a few planes at a time, and the cut of one segment's frame from a plane. Should a later
    highdicom rename them, every SEG with lesions fails to encode with highdicom's complaint
    about the array, loudly, in the tests first.
    """

    @classmethod
    def _check_and_cast_pixel_array(  # type: ignore[override]
        cls,
        pixel_array: np.ndarray,
        segment_numbers: np.ndarray,
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[np.ndarray, hd.seg.SegmentsOverlapValues]:
        if not isinstance(pixel_array, PackedLabels):
            return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)
        if segmentation_type != hd.seg.SegmentationTypeValues.BINARY or pixel_array.ndim != 3:
            raise ValueError("packed labels are for a BINARY SEG, shaped (slices, rows, columns)")
        highest, overlap = 0, False
        for start in range(0, len(pixel_array), _OVERLAP_CHECK_PLANES):  # a few MB at a time
            planes = np.asarray(pixel_array[start : start + _OVERLAP_CHECK_PLANES])
            lungs, lesions = planes & PackedLabels.MAX_SEGMENT, planes >> 4
            highest = max(highest, int(lungs.max()), int(lesions.max()))
            overlap = overlap or bool(np.any((lungs != 0) & (lesions != 0)))
        if highest > int(np.max(segment_numbers)):
            raise ValueError("Pixel array contains segments that lack descriptions.")
        return pixel_array, hd.seg.SegmentsOverlapValues.YES if overlap else hd.seg.SegmentsOverlapValues.NO

    @staticmethod
    def _get_segment_pixel_array(  # type: ignore[override]
        pixel_array: np.ndarray,
        segment_number: int,
        described_segment_numbers: np.ndarray,
        segmentation_type: hd.seg.SegmentationTypeValues,
        max_fractional_value: int,
        dtype: type,
    ) -> np.ndarray:
        if not isinstance(pixel_array, PackedLabels):
            return hd.seg.Segmentation._get_segment_pixel_array(
                pixel_array, segment_number, described_segment_numbers, segmentation_type, max_fractional_value, dtype
            )
        return PackedLabels.segment_frame(np.asarray(pixel_array), segment_number).astype(dtype)


#: Planes checked at once for segments that overlap (a few MB at a time).
_OVERLAP_CHECK_PLANES = 8


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
    findings: Findings,
    segments: Sequence[NumberedSegment],
    lesions: Sequence[LesionSegment],
    planes: slice,
    seg_type: str,
) -> np.ndarray:
    """The masks of slices ``planes`` as highdicom takes them: a map of segment numbers (a
    LABELMAP, or a BINARY SEG without lesions), else the lungs' and the lesions' maps as
    :class:`PackedLabels`.
    """
    lesion_labels = findings.lesion_labels
    if seg_type == "labelmap":
        numbers = _segment_number_map(shown_lung_labels(findings)[planes], segments)
        if lesions and lesion_labels is not None:
            shown = lesion_labels[planes]
            lesion_numbers = _look_up_by_plane(_lesion_number_lookup(lesions), shown, out=np.empty(shown.shape, np.uint8))
            numbers = np.where(shown > 0, lesion_numbers, numbers)
        return numbers
    labels = findings.lung_labels[planes]
    if not lesions or lesion_labels is None:  # lesion_segments() found no lesions without a map
        return _segment_number_map(labels, segments)
    return PackedLabels.pack(_segment_number_lookup(labels, segments), labels, _lesion_number_lookup(lesions), lesion_labels[planes])


def _segment_number_map(labels: np.ndarray, segments: Sequence[NumberedSegment]) -> np.ndarray:
    """The label map with each LungLabel replaced by its segment number (0 stays background)."""
    return _look_up_by_plane(_segment_number_lookup(labels, segments), labels, out=np.empty(labels.shape, np.uint8))


def _look_up_by_plane(lookup: np.ndarray, labels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``lookup[labels]`` into ``out``, a few planes at a time: ``lookup[labels]`` whole builds a
    volume-sized result before it is copied (157 MB for 600 slices), and ``np.take`` with
    ``out`` first copies the indices to 64 bits (1.26 GB)."""
    for start in range(0, len(labels), _LOOKUP_PLANES):
        out[start : start + _LOOKUP_PLANES] = lookup[labels[start : start + _LOOKUP_PLANES]]
    return out


#: Planes looked up at once (a 4 MB temporary for 512x512).
_LOOKUP_PLANES = 16


def _segment_number_lookup(labels: np.ndarray, segments: Sequence[NumberedSegment]) -> np.ndarray:
    """Segment number by LungLabel value (0 for the background and for labels not shown)."""
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for numbered in segments:
        lookup[numbered.segment.label] = numbered.number
    return lookup


def _lesion_number_lookup(lesions: Sequence[LesionSegment]) -> np.ndarray:
    """Segment number by lesion label value (0 for the background)."""
    lookup = np.zeros(max(lesion.lesion.label for lesion in lesions) + 1, dtype=np.uint8)
    for lesion in lesions:
        lookup[lesion.lesion.label] = lesion.number
    return lookup


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

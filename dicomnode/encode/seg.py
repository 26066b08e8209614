"""The lung masks as a DICOM Segmentation (BINARY), built through highdicom's typed classes.

Frame k of the mask is slice k of the volume, whose source dataset is ``series.datasets[k]``;
highdicom takes each frame's position and per-frame source image reference from that dataset,
so the SEG lies exactly on the CT slices it was computed from. Frames without lung are left out
(highdicom's default). No lung at all is an :class:`EncodingError`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

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
    EncodingError,
    NumberedSegment,
    check_labels,
    present_segments,
)
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

logger = logging.getLogger(__name__)

CONTENT_LABEL = "LUNGS"
CONTENT_DESCRIPTION = "Lung segmentation"

#: Attributes highdicom copies from the source images (Type 2 in CT Image: present, maybe empty).
_PATIENT_STUDY_ATTRIBUTES = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)


def encode_seg(series: SeriesVolume, findings: Findings, settings: Settings) -> hd.seg.Segmentation:
    """A BINARY Segmentation of the lungs on the source slices of ``series``.

    Raises :class:`EncodingError` when there is no lung, or when the findings or the source
    headers cannot make a valid object.
    """
    labels = findings.lung_labels
    check_labels(labels, series.volume.hu.shape)
    segments = present_segments(labels)
    sources = _source_images(series.datasets)
    device = device_identity(settings)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=_segment_number_map(labels, segments),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_describe(numbered, series, findings, settings) for numbered in segments],
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
            content_description=CONTENT_DESCRIPTION,
        )
    except ValueError as error:  # highdicom's word that these inputs make no valid SEG
        raise EncodingError(f"the lung segmentation cannot be encoded: {error}") from error
    logger.info("Encoded SEG %s: %s", seg.SOPInstanceUID, ", ".join(n.segment.name for n in segments))
    return seg


def _segment_number_map(labels: np.ndarray, segments: Sequence[NumberedSegment]) -> np.ndarray:
    """The label map with each LungLabel replaced by its segment number (0 stays background)."""
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for numbered in segments:
        lookup[numbered.segment.label] = numbered.number
    return lookup[labels]


def _describe(
    numbered: NumberedSegment, series: SeriesVolume, findings: Findings, settings: Settings
) -> hd.seg.SegmentDescription:
    segment = numbered.segment
    return hd.seg.SegmentDescription(
        segment_number=numbered.number,
        segment_label=segment.name,
        segmented_property_category=ANATOMICAL_STRUCTURE,
        segmented_property_type=segment.code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=seg_algorithm_identification(findings),
        tracking_uid=derived_uid(tracking_kind(segment.key), series, findings, settings),
        tracking_id=segment.name,
        display_color=hd.color.CIELabColor.from_rgb(*segment.rgb),
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

"""Lung volumes as a TID 1500 Measurement Report (Comprehensive 3D SR), built through highdicom.

One volumetric ROI group (TID 1411) per SEG segment, referencing that segment and sharing its
tracking UID, holds the segment's volume; one measurement group (TID 1501) holds the total lung
volume, always in the same place whether or not the lungs were separated. The observer is the
node itself (a device observer); the evidence is the source CT slices and the SEG.
"""

from __future__ import annotations

import logging

import highdicom as hd
from pydicom.sr.codedict import codes

from dicomnode.encode.identity import (
    SR_INSTANCE,
    SR_SERIES,
    TOTAL_LUNG_TRACKING,
    DeviceIdentity,
    derived_uid,
    device_identity,
    sr_algorithm_identification,
    tracking_kind,
)
from dicomnode.encode.segments import (
    LUNG_SEGMENTS,
    MILLILITRE,
    EncodingError,
    NumberedSegment,
    segment_volume_ml,
)
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

logger = logging.getLogger(__name__)

#: Procedure reported (CID 100 is extensible): LOINC "CT Chest".
CT_CHEST = hd.sr.CodedConcept(value="24627-2", scheme_designator="LN", meaning="CT Chest")
TOTAL_LUNG = "Total lung"


def encode_sr(
    series: SeriesVolume, seg: hd.seg.Segmentation, findings: Findings, settings: Settings
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report of the lung volumes of ``findings``, referencing the segments of ``seg``."""
    device = device_identity(settings)
    segments = _segments_of(seg)
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_segment_group(numbered, series, seg, findings, settings, alone=len(segments) == 1) for numbered in segments]
    groups.append(_total_group(series, findings, settings))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(device),
        procedure_reported=CT_CHEST,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*series.datasets, seg],
            content=report,
            series_instance_uid=derived_uid(SR_SERIES, series, findings, settings),
            series_number=settings.encoding.sr_series_number,
            sop_instance_uid=derived_uid(SR_INSTANCE, series, findings, settings),
            instance_number=1,
            manufacturer=device.manufacturer,
            institution_name=device.institution_name,
            is_complete=True,
            series_description=settings.encoding.sr_series_description,
            manufacturer_model_name=device.model_name,
            software_versions=device.software_versions,
            device_serial_number=device.serial_number,
        )
    except ValueError as error:  # highdicom's word that these inputs make no valid SR
        raise EncodingError(f"the lung volume report cannot be encoded: {error}") from error
    logger.info("Encoded SR %s referencing SEG %s", sr.SOPInstanceUID, seg.SOPInstanceUID)
    return sr


def _segments_of(seg: hd.seg.Segmentation) -> list[NumberedSegment]:
    """The lung segments of the SEG, recognised by their property type codes."""
    by_code = {segment.code.value: segment for segment in LUNG_SEGMENTS}
    numbered = []
    for item in seg.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
        if code not in by_code:
            raise EncodingError(f"SEG segment {item.SegmentNumber} has property type {code}, not a lung segment")
        numbered.append(NumberedSegment(int(item.SegmentNumber), by_code[code]))
    return numbered


def _observation_context(device: DeviceIdentity) -> hd.sr.ObservationContext:
    """The node as the (device) observer of every measurement."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device.uid,
                name=device.model_name,
                manufacturer_name=device.manufacturer,
                model_name=device.model_name,
                serial_number=device.serial_number,
            ),
        )
    )


def _volume(value_ml: float, findings: Findings) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.SCT.Volume,
        value=value_ml,
        unit=MILLILITRE,
        algorithm_id=sr_algorithm_identification(findings),
    )


def _segment_group(
    numbered: NumberedSegment,
    series: SeriesVolume,
    seg: hd.seg.Segmentation,
    findings: Findings,
    settings: Settings,
    alone: bool,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The volume of one SEG segment, in a group that references the segment."""
    segment = numbered.segment
    volume_ml = segment_volume_ml(segment, findings, series.volume.voxel_volume_ml, alone=alone)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(tracking_kind(segment.key), series, findings, settings), identifier=segment.name
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=numbered.number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(series.datasets[0].SeriesInstanceUID)),
        ),
        finding_type=segment.code,
        algorithm_id=sr_algorithm_identification(findings),
        measurements=[_volume(volume_ml, findings)],
    )


def _total_group(
    series: SeriesVolume, findings: Findings, settings: Settings
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The total lung volume (all lung segments together)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(TOTAL_LUNG_TRACKING, series, findings, settings),
            identifier=TOTAL_LUNG,
        ),
        finding_type=codes.SCT.Lung,
        algorithm_id=sr_algorithm_identification(findings),
        measurements=[_volume(float(findings.lungs.total_ml), findings)],
    )

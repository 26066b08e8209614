"""Lung volumes and the COVID-19 assessment as a TID 1500 Measurement Report (Comprehensive 3D SR).

Built through highdicom. One volumetric ROI group (TID 1411) per lung segment of the SEG,
referencing that segment and sharing its tracking UID, holds the segment's volume; one
measurement group (TID 1501) holds the total lung volume, always in the same place whether or not
the lungs were separated. The observer is the node itself (a device observer); the evidence is
the source CT slices and the SEG.

When the classifier ran, a second TID 1501 group assesses the whole scan for COVID-19: the
probability, the threshold, the call (positive/negative), the number of lesions, their total
volume and the percentage of the lung they involve; or, for a scan it could not assess, the call
"indeterminate" and the reason as text, without a probability. Each lesion then gets its own
TID 1411 group referencing its SEG segment, and a TID 1410 group with its outline on its key
slice (an SCOORD polyline on the source CT image where the lesion is largest) and its area
there: viewers that list measurements with an image region (OHIF's SR display) list each lesion
and jump to it. Findings without a classifier give the report as before: lung groups only.

The report references one SEG; a LABELMAP SEG gets a report of its own (other UIDs), whose lung
volumes measure the lung segments as that SEG shows them (without the lesions).

A scan in which no lung was found at all (the analysis then says it is not assessable) has no
SEG: its report holds the assessment group alone (the call "indeterminate" and the reason; no
lung volume, since no lung was measured) and its evidence is the source CT slices.

Concepts without a standard code (a lesion's mean class activation, the total lesion volume,
the lung involvement) use the private coding scheme ``99DECOV``, declared in the header's Coding
Scheme Identification Sequence.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes

from dicomnode.encode.identity import (
    TOTAL_LUNG_TRACKING,
    DeviceIdentity,
    derived_uid,
    device_identity,
    sr_algorithm_identification,
    sr_kinds,
    tracking_kind,
)
from dicomnode.encode.outline import key_planes, outline
from dicomnode.encode.segments import (
    LUNG,
    LUNG_SEGMENTS,
    MILLILITRE,
    MORPHOLOGICALLY_ABNORMAL,
    EncodingError,
    LesionSegment,
    NumberedSegment,
    lesion_segments,
    segment_volume_ml,
)
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

logger = logging.getLogger(__name__)

#: Procedure reported (CID 100 is extensible): LOINC "CT Chest".
CT_CHEST = hd.sr.CodedConcept(value="24627-2", scheme_designator="LN", meaning="CT Chest")
TOTAL_LUNG = "Total lung"
COVID_ASSESSMENT = "COVID-19 assessment"
COVID_ASSESSMENT_TRACKING = "tracking-covid-19-assessment"

#: The disease assessed (finding of the scan group, and the question of its call).
COVID_19 = hd.sr.CodedConcept("840539006", "SCT", "Disease caused by SARS-CoV-2")
POSITIVE = hd.sr.CodedConcept("10828004", "SCT", "Positive")
NEGATIVE = hd.sr.CodedConcept("260385009", "SCT", "Negative")
#: The call of a scan the classifier could not assess (the reason follows as text).
INDETERMINATE = hd.sr.CodedConcept("82334004", "SCT", "Indeterminate")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
THRESHOLD = hd.sr.CodedConcept("122411", "DCM", "Threshold Value")
NUMBER_OF_LESIONS = hd.sr.CodedConcept("246206008", "SCT", "Number of lesions")
MEAN_ATTENUATION = hd.sr.CodedConcept("112181", "DCM", "Mean Attenuation Coefficient")
AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")

#: The private coding scheme of the concepts DICOM and SNOMED CT have no code for.
PRIVATE_SCHEME = "99DECOV"
MEAN_ACTIVATION = hd.sr.CodedConcept("MEAN-ACTIVATION", PRIVATE_SCHEME, "Mean class activation")
LESION_VOLUME = hd.sr.CodedConcept("LESION-VOLUME", PRIVATE_SCHEME, "Total lesion volume")
LUNG_INVOLVEMENT = hd.sr.CodedConcept("LUNG-INVOLVEMENT", PRIVATE_SCHEME, "Percentage of lung involved by lesions")


#: Units (UCUM).
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "Percent")
SQUARE_MILLIMETRE = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
HOUNSFIELD_UNIT = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")

_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def _private_scheme() -> CodingSchemeIdentificationItem:
    """The declaration of ``99DECOV`` (a new item per SR: datasets must not share items)."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="decov-node private codes",
        version="1",
        responsible_organization="decov-node project",
    )


def encode_sr(
    series: SeriesVolume, seg: hd.seg.Segmentation | None, findings: Findings, settings: Settings
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report of ``findings``, referencing the segments of ``seg``.

    ``seg`` is None only for a scan without any lung voxel that the analysis found not
    assessable: the report then states that, with the reason, and nothing else.
    """
    device = device_identity(settings)
    labelmap = seg is not None and seg.SegmentationType == "LABELMAP"
    instance_kind, series_kind = sr_kinds("labelmap" if labelmap else "binary")
    groups: list[_Group]
    if seg is None:
        _check_without_seg(findings)
        groups = [_assessment_group(series, findings, settings)]
    else:
        segments, lesions = _segments_of(seg, findings)
        groups = [
            _segment_group(numbered, series, seg, findings, settings, alone=len(segments) == 1, labelmap=labelmap)
            for numbered in segments
        ]
        groups.append(_total_group(series, findings, settings))
        if _assessed(findings):
            groups.append(_assessment_group(series, findings, settings))
        planes = key_planes(findings.lesion_labels) if lesions and findings.lesion_labels is not None else {}
        for lesion in lesions:
            groups += [
                _lesion_group(lesion, series, seg, findings, settings),
                _lesion_outline_group(lesion, planes[lesion.lesion.label], series, findings, settings),
            ]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(device),
        procedure_reported=CT_CHEST,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*series.datasets] if seg is None else [*series.datasets, seg],
            content=report,
            series_instance_uid=derived_uid(series_kind, series, findings, settings),
            series_number=settings.encoding.sr_series_number,
            sop_instance_uid=derived_uid(instance_kind, series, findings, settings),
            instance_number=1,
            manufacturer=device.manufacturer,
            institution_name=device.institution_name,
            is_complete=True,
            series_description=settings.encoding.sr_series_description,
            manufacturer_model_name=device.model_name,
            software_versions=device.software_versions,
            device_serial_number=device.serial_number,
            coding_schemes=[_private_scheme()] if _uses_private_codes(findings) else None,
        )
    except ValueError as error:  # highdicom's word that these inputs make no valid SR
        raise EncodingError(f"the lung volume report cannot be encoded: {error}") from error
    if seg is None:
        logger.info("Encoded SR %s without a SEG (no lung found)%s", sr.SOPInstanceUID, _describe(findings))
    else:
        logger.info("Encoded SR %s referencing SEG %s%s", sr.SOPInstanceUID, seg.SOPInstanceUID, _describe(findings))
    return sr


def _check_without_seg(findings: Findings) -> None:
    """A report without a SEG is for a scan without lungs that the analysis could not assess."""
    if np.any(findings.lung_labels):
        raise EncodingError("the findings have lung voxels: the report needs their SEG")
    if findings.not_assessable is None:
        raise EncodingError("no lung found: the lung label map is empty, and the analysis gives no reason")
    if findings.lesions:
        raise EncodingError(f"{len(findings.lesions)} lesions but no lung: lesions need a SEG")


def _assessed(findings: Findings) -> bool:
    """Whether the classifier or the lesion localization ran (else: the lung report of old)."""
    return findings.classification is not None or findings.not_assessable is not None or bool(findings.lesions)


def _uses_private_codes(findings: Findings) -> bool:
    """Whether the report holds ``99DECOV`` codes (the lesion figures of an assessed scan, or lesions)."""
    return (findings.classification is not None and findings.not_assessable is None) or bool(findings.lesions)


def _describe(findings: Findings) -> str:
    """The assessment for the log line ("" for a lung-only report)."""
    if findings.not_assessable is not None:
        return f": COVID-19 not assessable ({findings.not_assessable})"
    classification = findings.classification
    if classification is None and not findings.lesions:
        return ""
    parts = []
    if classification is not None:
        call = "positive" if classification.positive else "negative"
        probability, threshold = classification.probability, classification.threshold
        parts.append(f"COVID-19 {call} (probability {probability:.3f}, threshold {threshold:.2f})")
    parts.append(f"{len(findings.lesions)} lesion(s), {findings.lesion_volume_ml:.1f} ml")
    return ": " + ", ".join(parts)


def _segments_of(seg: hd.seg.Segmentation, findings: Findings) -> tuple[list[NumberedSegment], list[LesionSegment]]:
    """The lung segments of the SEG, recognised by their property type codes, and its lesion segments.

    Lesion segments are recognised by their category; they must be exactly the lesions of the
    findings, numbered as :func:`lesion_segments` numbers them (the SEG was written from that plan).
    """
    by_code = {segment.code.value: segment for segment in LUNG_SEGMENTS}
    numbered: list[NumberedSegment] = []
    lesion_items = []
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == 0:  # a LABELMAP's background segment: nothing to measure
            continue
        code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
        category = item.SegmentedPropertyCategoryCodeSequence[0].CodeValue
        if category == MORPHOLOGICALLY_ABNORMAL.value:
            lesion_items.append(item)
        elif code in by_code:
            numbered.append(NumberedSegment(int(item.SegmentNumber), by_code[code]))
        else:
            raise EncodingError(f"SEG segment {item.SegmentNumber} has property type {code}, not a lung segment")
    lesions = lesion_segments(findings, after=len(numbered))
    found = [(int(i.SegmentNumber), i.SegmentedPropertyTypeCodeSequence[0].CodeValue) for i in lesion_items]
    expected = [(lesion.number, lesion.code.value) for lesion in lesions]
    if found != expected:
        raise EncodingError(f"the SEG's lesion segments {found} are not the findings' lesions {expected}")
    return numbered, lesions


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
    return _measurement(codes.SCT.Volume, value_ml, MILLILITRE, findings)


def _tracking(key: str, name: str, series: SeriesVolume, findings: Findings, settings: Settings) -> hd.sr.TrackingIdentifier:
    """The tracking identifier of a SEG segment's group: the segment's own tracking UID and name."""
    return hd.sr.TrackingIdentifier(uid=derived_uid(tracking_kind(key), series, findings, settings), identifier=name)


def _reference(seg: hd.seg.Segmentation, number: int, series: SeriesVolume) -> hd.sr.ReferencedSegment:
    """The reference to segment ``number`` of ``seg``."""
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(str(series.datasets[0].SeriesInstanceUID)),
    )


def _segment_group(
    numbered: NumberedSegment,
    series: SeriesVolume,
    seg: hd.seg.Segmentation,
    findings: Findings,
    settings: Settings,
    alone: bool,
    labelmap: bool,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The volume of one SEG segment, in a group that references the segment."""
    segment = numbered.segment
    volume_ml = segment_volume_ml(segment, findings, series.volume.voxel_volume_ml, alone=alone, labelmap=labelmap)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(segment.key, segment.name, series, findings, settings),
        referenced_segment=_reference(seg, numbered.number, series),
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


def _measurement(
    name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept, findings: Findings
) -> hd.sr.Measurement:
    """A measurement by the findings' algorithm (highdicom takes only Python ints and floats)."""
    number = value if isinstance(value, int) else float(value)  # numpy scalars become plain floats
    return hd.sr.Measurement(name=name, value=number, unit=unit, algorithm_id=sr_algorithm_identification(findings))


def _assessment_group(
    series: SeriesVolume, findings: Findings, settings: Settings
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The whole scan assessed for COVID-19: probability, threshold, call, lesion count and extent.

    Not assessable: the call is "indeterminate", the reason follows as a text qualitative
    evaluation, and there is no probability (a number the classifier did not give must not be
    read as one). Lesion figures are given whenever the classifier assessed the scan (0 lesions
    is a finding); they are left out for a scan it could not assess.
    """
    classification = findings.classification
    measurements: list[hd.sr.Measurement] = []
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if findings.not_assessable is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=COVID_19, value=INDETERMINATE))
    elif classification is not None:
        measurements += [
            _measurement(PROBABILITY, classification.probability, NO_UNITS, findings),
            _measurement(THRESHOLD, classification.threshold, NO_UNITS, findings),
        ]
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=COVID_19, value=POSITIVE if classification.positive else NEGATIVE)
        )
    if findings.not_assessable is None:
        measurements += [
            _measurement(NUMBER_OF_LESIONS, len(findings.lesions), NO_UNITS, findings),
            _measurement(LESION_VOLUME, findings.lesion_volume_ml, MILLILITRE, findings),
        ]
        involvement = findings.involvement_percent
        if involvement is not None:
            measurements.append(_measurement(LUNG_INVOLVEMENT, involvement, PERCENT, findings))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(COVID_ASSESSMENT_TRACKING, series, findings, settings),
            identifier=COVID_ASSESSMENT,
        ),
        finding_type=COVID_19,
        finding_sites=[hd.sr.FindingSite(LUNG)],
        algorithm_id=sr_algorithm_identification(findings),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    if findings.not_assessable is not None:
        # The reason as a TEXT item of the group beside the coded call (highdicom's
        # QualitativeEvaluation is coded only).
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=COMMENT,
                value=f"Not assessable: {findings.not_assessable}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _lesion_group(
    lesion: LesionSegment, series: SeriesVolume, seg: hd.seg.Segmentation, findings: Findings, settings: Settings
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One lesion: its volume, mean class activation and mean density, referencing its SEG segment."""
    stated = lesion.lesion
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(lesion.key, lesion.name, series, findings, settings),
        referenced_segment=_reference(seg, lesion.number, series),
        finding_category=MORPHOLOGICALLY_ABNORMAL,
        finding_type=lesion.code,
        finding_sites=[hd.sr.FindingSite(lesion.site)],
        algorithm_id=sr_algorithm_identification(findings),
        measurements=[
            _volume(stated.volume_ml, findings),
            _measurement(MEAN_ACTIVATION, stated.score, NO_UNITS, findings),
            _measurement(MEAN_ATTENUATION, stated.mean_hu, HOUNSFIELD_UNIT, findings),
        ],
    )


def _lesion_outline_group(
    lesion: LesionSegment,
    key_plane: tuple[int, np.ndarray],
    series: SeriesVolume,
    findings: Findings,
    settings: Settings,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One lesion on its key slice (``key_plane``: the slice index and the lesion's mask there):
    its outline there (SCOORD polyline on that source image) and the area it covers on that slice.

    The tracking identifier reads like the lesion's SEG segment, so a viewer's measurement list
    names it the same; the UID is its own (the outline is another region than the segment).
    """
    index, plane = key_plane
    source = series.datasets[index]
    column_mm, row_mm = (float(v) for v in series.volume.spacing[:2])
    area_mm2 = float(np.count_nonzero(plane)) * column_mm * row_mm
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline(plane),
        source_image=hd.sr.SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID)),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(tracking_kind(f"{lesion.key}-outline"), series, findings, settings),
            identifier=lesion.name,
        ),
        referenced_region=region,
        finding_category=MORPHOLOGICALLY_ABNORMAL,
        finding_type=lesion.code,
        finding_sites=[hd.sr.FindingSite(lesion.site)],
        algorithm_id=sr_algorithm_identification(findings),
        measurements=[_measurement(AREA, area_mm2, SQUARE_MILLIMETRE, findings)],
    )

"""Key images: a few axial slices with the findings burned in, as Secondary Capture images.

For PACS and viewers that cannot show a SEG or an SR: any DICOM viewer shows a Secondary
Capture. Each key image is one source slice (through the largest lesions, or through the lungs
of a scan without lesions) in the lung window, with the lung outline, the class activation map
and the lesion outlines drawn in (:func:`inference.overview.render_key_image`), and a caption
below: the probability and the call, the lesions, the legend and the configured disclaimer.

The images form a series of their own in the source study (patient and study attributes copied
from the source slice by highdicom), with deterministic UIDs like the SEG and the SR, and each
references the CT slice it shows (Source Image Sequence).
"""

from __future__ import annotations

import logging

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.encode.identity import KEY_IMAGE_SERIES, derived_uid, device_identity, key_image_kind
from dicomnode.encode.segments import EncodingError, lesion_segments
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.overview import key_image_planes, render_key_image
from inference.types import Findings

logger = logging.getLogger(__name__)

#: Rows run to the patient's left, columns to the back: the radiological view the images are drawn in.
PATIENT_ORIENTATION = ("L", "P")
LEGEND = "Blue: lung outline. Green: lesion outlines. Red to yellow: class activation map (COVID-19 evidence)."


def encode_key_images(series: SeriesVolume, findings: Findings, settings: Settings) -> list[hd.sc.SCImage]:
    """The key images of ``findings`` on ``series`` (``encoding.key_image_count`` at most)."""
    encoding = settings.encoding
    device = device_identity(settings)
    planes = key_image_planes(series.volume, findings, encoding.key_image_count)
    series_uid = derived_uid(KEY_IMAGE_SERIES, series, findings, settings)
    images = []
    for number, index in enumerate(planes, start=1):
        source = series.datasets[index]
        lines = caption_lines(findings, index, len(series.datasets), encoding.key_image_disclaimer)
        try:
            image = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=source,
                pixel_array=render_key_image(series.volume, findings, index, lines),
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                patient_orientation=PATIENT_ORIENTATION,
                series_instance_uid=series_uid,
                series_number=encoding.key_image_series_number,
                sop_instance_uid=derived_uid(key_image_kind(number), series, findings, settings),
                instance_number=number,
                manufacturer=device.manufacturer,
                transfer_syntax_uid=ExplicitVRLittleEndian,
            )
        except (ValueError, TypeError) as error:
            raise EncodingError(f"key image {number} cannot be encoded: {error}") from error
        _describe(image, source, lines, settings)
        images.append(image)
    logger.info("Encoded %d key image(s) on slices %s", len(images), ", ".join(str(i + 1) for i in planes))
    return images


def caption_lines(findings: Findings, index: int, slices: int, disclaimer: str) -> list[str]:
    """The text under a key image: the assessment, the lesions on this slice, legend, disclaimer."""
    lines = [_assessment(findings)]
    if findings.lesions:
        shown = [
            lesion.name
            for lesion in lesion_segments(findings, after=0)
            if findings.lesion_labels is not None and (findings.lesion_labels[index] == lesion.lesion.label).any()
        ]
        lines.append(f"On this slice: {', '.join(shown)}." if shown else "No reported lesion on this slice.")
    lines.append(f"Slice {index + 1} of {slices}. {LEGEND}")
    lines.append(f"{findings.algorithm_name} {findings.algorithm_version}. {disclaimer}".strip())
    return lines


def _assessment(findings: Findings) -> str:
    if findings.not_assessable is not None:
        return f"COVID-19: not assessable ({findings.not_assessable})."
    classification = findings.classification
    volumes = f"Lungs {findings.lungs.total_ml:.0f} ml."
    if classification is None:
        return volumes
    call = "POSITIVE" if classification.positive else "negative"
    text = f"COVID-19 {call}: probability {classification.probability:.2f} (threshold {classification.threshold:.2f})."
    lesions = len(findings.lesions)
    involvement = findings.involvement_percent
    extent = f", {involvement:.1f}% of the lungs" if involvement is not None and lesions else ""
    return f"{text} {lesions} lesion{'' if lesions == 1 else 's'}, {findings.lesion_volume_ml:.1f} ml{extent}. {volumes}"


def _describe(image: Dataset, source: Dataset, lines: list[str], settings: Settings) -> None:
    """What highdicom leaves to the caller: the series description, that the text is burned in,
    the caption as image comments, and the slice the image shows."""
    image.SeriesDescription = settings.encoding.key_image_series_description
    image.ConversionType = "WSD"  # drawn by a workstation (the node), not digitised from elsewhere
    image.BurnedInAnnotation = "YES"
    image.Laterality = ""  # Type 2C: both lungs are shown; no single side applies
    image.ImageComments = " ".join(lines)[:10240]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = DicomSequence([reference])

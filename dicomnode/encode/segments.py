"""The segments the node reports, shared by the SEG (masks) and the SR (measurements).

Lung segments come first. One table says how each :class:`LungLabel` is written: its label,
its SNOMED CT code and its display colour. A lung segment exists only where its label has
voxels; numbers are given in table order (right, left, unseparated lung).

Lesion segments follow, one per :attr:`Findings.lesions` entry in the analysis' order, numbered
on from the last lung segment; each is called ground glass or consolidation by its mean density.
So the same findings always give the same numbers, and the SR can recompute the plan the SEG
was written from.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from inference.types import Findings, Lesion, LungLabel

#: Segmented property category of every lung segment.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
#: Segmented property category of every lesion segment (and finding category of its SR group).
MORPHOLOGICALLY_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
#: Lesion types. Ground glass: DICOM's own code (CID 6102/6104, "Ground glass opacity"); SNOMED CT
#: has no plain "ground glass opacity" concept in pydicom's dictionaries. Consolidation: SNOMED CT
#: "Lung consolidation" (the lesions lie in the lung).
GROUND_GLASS = CodedConcept("112120", "DCM", "Ground glass opacity")
CONSOLIDATION = CodedConcept("95436008", "SCT", "Lung consolidation")
#: Unit of the volumes (UCUM).
MILLILITRE = CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")


class EncodingError(ValueError):
    """The findings cannot be written as DICOM results (for example: no lung was found)."""


@dataclass(frozen=True)
class LungSegment:
    """How one lung label is written."""

    label: LungLabel
    name: str  # segment label, tracking identifier and SR text
    key: str  # short name in derived UIDs
    code: CodedConcept
    rgb: tuple[int, int, int]  # recommended display colour (converted to CIELab in the SEG)


RIGHT_LUNG = CodedConcept("3341006", "SCT", "Right lung")
LEFT_LUNG = CodedConcept("44029006", "SCT", "Left lung")
LUNG = CodedConcept("39607008", "SCT", "Lung")

LUNG_SEGMENTS: tuple[LungSegment, ...] = (
    LungSegment(LungLabel.RIGHT, "Right lung", "right-lung", RIGHT_LUNG, (80, 150, 220)),
    LungSegment(LungLabel.LEFT, "Left lung", "left-lung", LEFT_LUNG, (230, 170, 60)),
    LungSegment(LungLabel.UNSEPARATED, "Lung", "lung", LUNG, (200, 120, 160)),
)


@dataclass(frozen=True)
class NumberedSegment:
    """A segment present in the findings, with its SEG segment number (from 1)."""

    number: int
    segment: LungSegment


def check_labels(labels: np.ndarray, shape: Sequence[int]) -> None:
    """The label map must cover the volume voxel for voxel with :class:`LungLabel` values."""
    if tuple(labels.shape) != tuple(shape):
        raise EncodingError(f"lung labels have shape {labels.shape}, the volume {tuple(shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EncodingError(f"lung labels must be integers (LungLabel values), got {labels.dtype}")
    if labels.size and (labels.min() < min(LungLabel) or labels.max() > max(LungLabel)):
        raise EncodingError(
            f"lung labels must be LungLabel values {min(LungLabel)}..{max(LungLabel)}, "
            f"got {labels.min()}..{labels.max()}"
        )


def present_segments(labels: np.ndarray) -> list[NumberedSegment]:
    """The segments that have voxels, numbered in table order; raise if there is no lung at all.

    ``labels`` must have passed :func:`check_labels`. Empty segments are left out (a segment
    without voxels describes nothing). A SEG needs at least one segment, and a lung SEG without
    lungs would be a wrong result, not an empty one: "no lung found" is an
    :class:`EncodingError`. (A scan without lungs that the analysis found not assessable gets
    no SEG at all: :func:`dicomnode.encode.encode_results` writes its report alone.)
    """
    present = [segment for segment in LUNG_SEGMENTS if np.any(labels == segment.label)]
    if not present:
        raise EncodingError("no lung found: the lung label map is empty")
    return [NumberedSegment(number, segment) for number, segment in enumerate(present, start=1)]


def shown_lung_labels(findings: Findings) -> np.ndarray:
    """The lung labels as a LABELMAP SEG shows them: lesion voxels belong to their lesion, not the lung."""
    if findings.lesion_labels is None or not findings.lesions:
        return findings.lung_labels
    return np.where(findings.lesion_labels > 0, 0, findings.lung_labels).astype(findings.lung_labels.dtype)


def segment_volume_ml(
    segment: LungSegment, findings: Findings, voxel_volume_ml: float, alone: bool, labelmap: bool = False
) -> float:
    """The volume reported for a segment.

    The analysis states the right, left and total volumes; those are reported as they are. A
    "Lung" segment alone is the whole lung (the total). A "Lung" segment beside right/left
    segments, or a side whose volume the analysis left out, is measured on the label map: the
    voxels the SEG shows times the voxel volume. In a LABELMAP SEG with lesions, a lung segment
    shows the lung without its lesions, and that is what its volume measures.
    """
    if labelmap and findings.lesions:
        return float(np.count_nonzero(shown_lung_labels(findings) == segment.label)) * voxel_volume_ml
    lungs = findings.lungs
    stated = {LungLabel.RIGHT: lungs.right_ml, LungLabel.LEFT: lungs.left_ml}.get(segment.label)
    if stated is not None:
        return float(stated)
    if segment.label == LungLabel.UNSEPARATED and alone:
        return float(lungs.total_ml)
    return float(np.count_nonzero(findings.lung_labels == segment.label)) * voxel_volume_ml


@dataclass(frozen=True)
class LesionSegment:
    """How one lesion of the findings is written, with its SEG segment number."""

    number: int
    lesion: Lesion
    name: str  # segment label, tracking identifier and SR text: "Lesion 1 (ground glass, primary)"
    key: str  # short name in derived UIDs
    code: CodedConcept  # ground glass or consolidation
    site: CodedConcept  # the lung it lies in (right, left, or "Lung" when not one side)
    rgb: tuple[int, int, int]


def check_lesions(findings: Findings, shape: Sequence[int]) -> np.ndarray:
    """Check the lesion label map against the lesions; return voxel counts per lesion and lung label.

    The contract: ``lesion_labels`` covers the volume voxel for voxel, value ``i`` marks
    ``lesions[i-1]`` (whose ``label`` is ``i``), and every lesion has voxels: a lesion that the
    SEG could not show, or voxels that no lesion describes, would make the two objects disagree.
    Row ``i`` of the result counts lesion ``i``'s voxels by :class:`LungLabel` (row 0 is unused).
    """
    lesions, labels = findings.lesions, findings.lesion_labels
    if labels is None:
        if lesions:
            raise EncodingError(f"{len(lesions)} lesions but no lesion label map")
        return np.zeros((1, len(LungLabel)), dtype=np.int64)
    if tuple(labels.shape) != tuple(shape):
        raise EncodingError(f"lesion labels have shape {labels.shape}, the volume {tuple(shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EncodingError(f"lesion labels must be integers, got {labels.dtype}")
    for index, lesion in enumerate(lesions, start=1):
        if lesion.label != index:
            raise EncodingError(f"lesion {index} has label {lesion.label}: lesions[i-1] must have label i")
    if labels.size and (labels.min() < 0 or labels.max() > len(lesions)):
        raise EncodingError(
            f"lesion labels must be 0..{len(lesions)} (one value per lesion), got {labels.min()}..{labels.max()}"
        )
    inside = labels > 0
    pairs = labels[inside].astype(np.int64) * len(LungLabel) + findings.lung_labels[inside].astype(np.int64)
    counts = np.bincount(pairs, minlength=(len(lesions) + 1) * len(LungLabel)).reshape(-1, len(LungLabel))
    empty = [index for index in range(1, len(lesions) + 1) if counts[index].sum() == 0]
    if empty:
        raise EncodingError(f"lesion {empty[0]} has no voxels in the lesion label map")
    return counts


def lesion_segments(findings: Findings, after: int) -> list[LesionSegment]:
    """The lesion segments of ``findings``, numbered from ``after + 1`` in the order of the lesions.

    ``findings.lung_labels`` must have passed :func:`check_labels`.
    """
    counts = check_lesions(findings, findings.lung_labels.shape)
    return [
        _lesion_segment(after + index, lesion, counts[index], index)
        for index, lesion in enumerate(findings.lesions, start=1)
    ]


def _lesion_segment(number: int, lesion: Lesion, lung_counts: np.ndarray, index: int) -> LesionSegment:
    marks = f"{lesion.kind}, primary" if lesion.primary else lesion.kind
    return LesionSegment(
        number=number,
        lesion=lesion,
        name=f"Lesion {lesion.label} ({marks})",
        key=f"lesion-{lesion.label}",
        code=GROUND_GLASS if lesion.ground_glass else CONSOLIDATION,
        site=_site(lung_counts),
        rgb=lesion_colour(index),
    )


def _site(lung_counts: np.ndarray) -> CodedConcept:
    """The right or left lung when all of the lesion's lung voxels lie in that one, else "Lung".

    Voxels outside the lung mask (dense consolidation is often left out of it) do not count.
    """
    right, left, unseparated = (lung_counts[side] for side in (LungLabel.RIGHT, LungLabel.LEFT, LungLabel.UNSEPARATED))
    if right and not left and not unseparated:
        return RIGHT_LUNG
    if left and not right and not unseparated:
        return LEFT_LUNG
    return LUNG


def lesion_colour(index: int) -> tuple[int, int, int]:
    """A display colour for the ``index``-th lesion (from 1): hues a golden angle apart.

    Neighbouring lesions get clearly different hues however many there are, and the same lesion
    number always gets the same colour. The first is red, away from the lungs' blue and orange.
    """
    hue = ((index - 1) * 0.381966) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))

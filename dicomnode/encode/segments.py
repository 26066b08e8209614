"""The lung segments the node reports, shared by the SEG (masks) and the SR (volumes).

One table says how each :class:`LungLabel` is written: its label, its SNOMED CT code and its
display colour. A segment exists only where its label has voxels; numbers are given in table
order (right, left, unseparated lung), so the same findings always give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from inference.types import Findings, LungLabel

#: Segmented property category of every segment.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
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


LUNG_SEGMENTS: tuple[LungSegment, ...] = (
    LungSegment(LungLabel.RIGHT, "Right lung", "right-lung", CodedConcept("3341006", "SCT", "Right lung"), (80, 150, 220)),
    LungSegment(LungLabel.LEFT, "Left lung", "left-lung", CodedConcept("44029006", "SCT", "Left lung"), (230, 170, 60)),
    LungSegment(LungLabel.UNSEPARATED, "Lung", "lung", CodedConcept("39607008", "SCT", "Lung"), (200, 120, 160)),
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
    without voxels describes nothing). A SEG needs at least one segment, and a result without
    lungs would be a wrong result, not an empty one: "no lung found" is an
    :class:`EncodingError` for the worker to record.
    """
    present = [segment for segment in LUNG_SEGMENTS if np.any(labels == segment.label)]
    if not present:
        raise EncodingError("no lung found: the lung label map is empty")
    return [NumberedSegment(number, segment) for number, segment in enumerate(present, start=1)]


def segment_volume_ml(segment: LungSegment, findings: Findings, voxel_volume_ml: float, alone: bool) -> float:
    """The volume reported for a segment.

    The analysis states the right, left and total volumes; those are reported as they are. A
    "Lung" segment alone is the whole lung (the total). A "Lung" segment beside right/left
    segments, or a side whose volume the analysis left out, is measured on the label map: the
    voxels the SEG shows times the voxel volume.
    """
    lungs = findings.lungs
    stated = {LungLabel.RIGHT: lungs.right_ml, LungLabel.LEFT: lungs.left_ml}.get(segment.label)
    if stated is not None:
        return float(stated)
    if segment.label == LungLabel.UNSEPARATED and alone:
        return float(lungs.total_ml)
    return float(np.count_nonzero(findings.lung_labels == segment.label)) * voxel_volume_ml

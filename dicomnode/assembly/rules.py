"""Declarative series eligibility rules.

Each rule is a name and a check that returns ``None`` when the series passes or a reason an
operator can act on. They run in order and the first failure decides: later rules rely on what
earlier ones established (the orientation rule needs the geometry to be present).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dicomnode.geometry import find_gaps, positions_along_normal, slice_normal
from dicomnode.settings import CT_IMAGE_STORAGE, AssemblySettings
from dicomnode.spool.header import InstanceHeader

Headers = Sequence[InstanceHeader]


@dataclass(frozen=True)
class Rule:
    """A named eligibility check."""

    name: str
    check: Callable[[Headers, AssemblySettings], str | None]


def _modality(headers: Headers, settings: AssemblySettings) -> str | None:
    modalities = sorted({h.modality for h in headers} - set(settings.modalities))
    return f"modality {', '.join(modalities)} is not analysed (allowed: {', '.join(settings.modalities)})" if modalities else None


def _within_limits(headers: Headers, settings: AssemblySettings) -> str | None:
    """Checked before anything reads pixels, so an oversized series costs no memory."""
    if len(headers) > settings.max_slices:
        return f"{len(headers)} instances, at most {settings.max_slices} are analysed (assembly.max_slices)"
    largest = max(max(h.rows or 0, h.columns or 0) for h in headers)
    if largest > settings.max_matrix:
        return f"images of {largest} rows or columns, at most {settings.max_matrix} are analysed (assembly.max_matrix)"
    return None


def _single_frame_ct(headers: Headers, settings: AssemblySettings) -> str | None:
    if any(h.sop_class_uid != CT_IMAGE_STORAGE for h in headers):
        return "only single-frame CT Image Storage is analysed (Enhanced CT is kept in the spool, not analysed)"
    return None


def _original(headers: Headers, settings: AssemblySettings) -> str | None:
    if settings.require_original and any(not h.image_type or h.image_type[0] != "ORIGINAL" for h in headers):
        return "image type is not ORIGINAL (derived or secondary images are not analysed)"
    return None


def _geometry_present(headers: Headers, settings: AssemblySettings) -> str | None:
    for h in headers:
        if None in (h.orientation, h.position, h.pixel_spacing, h.rows, h.columns):
            return f"instance {h.sop_instance_uid} lacks image geometry (orientation, position, spacing or size)"
        if not all(math.isfinite(v) for v in (*h.orientation, *h.position, *h.pixel_spacing)):
            return f"instance {h.sop_instance_uid} has a non-finite orientation, position or spacing (NaN or infinity)"
    return None


def _consistent(headers: Headers, settings: AssemblySettings) -> str | None:
    first = headers[0]
    for h in headers[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            return f"slices differ in size ({first.rows}x{first.columns} and {h.rows}x{h.columns})"
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, atol=1e-3):
            return f"slices differ in pixel spacing ({first.pixel_spacing} and {h.pixel_spacing})"
        if not np.allclose(h.orientation, first.orientation, atol=1e-3):
            return "slices differ in orientation"
    return None


def _axial(headers: Headers, settings: AssemblySettings) -> str | None:
    try:
        normal = slice_normal(headers[0].orientation)  # type: ignore[arg-type]
    except ValueError as error:  # parallel or zero direction cosines
        return str(error)
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if angle > settings.max_obliquity_degrees:
        return f"not axial: the slices are tilted {angle:.0f} degrees from axial (limit {settings.max_obliquity_degrees:g})"
    return None


def _thickness(headers: Headers, settings: AssemblySettings) -> str | None:
    thickness = max((h.slice_thickness or 0.0) for h in headers)
    if thickness > settings.max_slice_thickness_mm:
        return f"slices are {thickness:g} mm thick (limit {settings.max_slice_thickness_mm:g} mm)"
    return None


def _sorted_positions(headers: Headers) -> np.ndarray:
    return np.unique(np.round(positions_along_normal(headers[0].orientation, [h.position for h in headers]), 3))  # type: ignore[arg-type,misc]


def _enough_slices(headers: Headers, settings: AssemblySettings) -> str | None:
    count = len(_sorted_positions(headers))
    return f"{count} slices, at least {settings.min_slices} needed" if count < settings.min_slices else None


def _no_missing_slices(headers: Headers, settings: AssemblySettings) -> str | None:
    gaps = find_gaps(_sorted_positions(headers), settings.max_gap_factor)
    if gaps:
        before, after, median = gaps[0]
        return (
            f"{len(gaps)} gap(s) in the slice positions: {after - before:.2f} mm between {before:.2f} and {after:.2f}"
            f" where slices are {median:.2f} mm apart (a slice is missing)"
        )
    return None


RULES: tuple[Rule, ...] = (
    Rule("modality", _modality),
    Rule("size limits", _within_limits),
    Rule("single-frame CT", _single_frame_ct),
    Rule("original image", _original),
    Rule("geometry present", _geometry_present),
    Rule("consistent geometry", _consistent),
    Rule("axial", _axial),
    Rule("slice thickness", _thickness),
    Rule("minimum slices", _enough_slices),
    Rule("no missing slices", _no_missing_slices),
)


def first_failure(headers: Headers, settings: AssemblySettings, rules: Sequence[Rule] = RULES) -> str | None:
    """The reason the series is not analysed, or None when every rule passes."""
    if not headers:
        return "the series has no instances left in the spool"
    for rule in rules:
        reason = rule.check(headers, settings)
        if reason is not None:
            return f"{rule.name}: {reason}"
    return None

"""The few attributes of an instance that routing and the series rules need.

Extracted once, when the instance arrives, and kept in the index: the assembler decides on a
series from the index alone, without opening hundreds of files again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.multival import MultiValue


class Attributes(Protocol):
    """Attribute values by keyword, as pydicom gives them: a ``Dataset``, or the receiver's
    few it reads (:class:`dicomnode.net.attributes.FiledAttributes`)."""

    def get(self, keyword: str, default: Any = None) -> Any: ...


class HeaderError(ValueError):
    """The dataset lacks what the node needs to file it (a UID) or is inconsistent."""


@dataclass(frozen=True)
class InstanceHeader:
    """Identity and geometry of one received instance (no patient data)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None
    rows: int | None
    columns: int | None
    frames: int

    def to_json(self) -> str:
        return json.dumps(vars(self))  # the fields (asdict deep-copies them first: a quarter of indexing an instance)

    @classmethod
    def from_json(cls, text: str) -> "InstanceHeader":
        values = json.loads(text)
        for key in ("image_type", "orientation", "position", "pixel_spacing"):
            if values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def _uid(ds: Attributes, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise HeaderError(f"{keyword} is missing or empty")
    return value


def _floats(ds: Attributes, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value]))
    except (TypeError, ValueError):
        raise HeaderError(f"{keyword} is not numeric: {value!r}") from None
    if len(numbers) != count:
        raise HeaderError(f"{keyword} has {len(numbers)} values, expected {count}")
    return numbers


def _optional_number(ds: Attributes, keyword: str, kind: type) -> float | int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf) of a DS "inf" where an IS belongs
        raise HeaderError(f"{keyword} is not numeric: {value!r}") from None


#: Every attribute :func:`read_header` reads: the receiver parses only these of a data set.
HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


def read_header(ds: Attributes) -> InstanceHeader:
    """Extract the header of a data set's attributes; raise :class:`HeaderError` when a UID is missing."""
    image_type = ds.get("ImageType") or ()
    if not isinstance(image_type, (MultiValue, list, tuple)):  # one value, or a number sent with another VR
        image_type = str(image_type).split("\\")
    return InstanceHeader(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        modality=str(ds.get("Modality", "") or ""),
        image_type=tuple(str(v).upper() for v in image_type),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=_floats(ds, "ImagePositionPatient", 3),
        pixel_spacing=_floats(ds, "PixelSpacing", 2),
        slice_thickness=_optional_number(ds, "SliceThickness", float),
        rows=_optional_number(ds, "Rows", int),
        columns=_optional_number(ds, "Columns", int),
        frames=int(_optional_number(ds, "NumberOfFrames", int) or 1),
    )

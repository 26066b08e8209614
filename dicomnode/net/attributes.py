"""The attributes the receiver files an instance by, converted as pydicom converts them.

The receiver reads about twenty attributes of every instance it is sent
(:data:`FILED_KEYWORDS`). Converting them through pydicom (``convert_raw_data_element``, then a
``Dataset`` to look them up in) cost 0.23 ms of the examination's 0.38 ms for a CT slice (0.16
ms with this module), all of it holding the interpreter lock that the connection's thread needs
to answer. The values of a well-formed slice are simple: UIDs, code strings, decimal and
integer strings, unsigned shorts. Those are converted here by the rules of pydicom's own
converters (``pydicom.values``: the same splitting at backslashes, the same trailing padding
removed, the same number parsing); any value outside those simple forms (another VR than the
dictionary's, an empty value, a number written any other way, several values where one belongs)
is handed to pydicom itself. So the values, and every refusal's reason, are what pydicom's
reading of the whole file gives (``tests/dicomnode/test_elements.py`` compares them: real
series, and fuzzed values and VRs).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomnode.spool.header import HEADER_KEYWORDS

#: What :func:`dicomnode.net.receiver.pixel_data_problem` reads besides Pixel Data.
PIXEL_DESCRIPTION_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated")

#: Every attribute the receiver reads of an instance (its header and its pixel description).
#: Only these are read: a full parse of a scanner's slice (100-300 attributes) cost more than
#: its durable write. The rest is kept as it was sent, for the volume builder to read.
FILED_KEYWORDS = (*HEADER_KEYWORDS, *PIXEL_DESCRIPTION_KEYWORDS)

SPECIFIC_CHARACTER_SET = tag_for_keyword("SpecificCharacterSet")

#: The tags the walk must hand over: the filed ones, and the character set their text is in.
WANTED_TAGS = frozenset({SPECIFIC_CHARACTER_SET, *(tag_for_keyword(keyword) for keyword in FILED_KEYWORDS)})

#: Filed attributes whose readers take several values (the others are read as one value,
#: and several are left to pydicom, whose way of printing them a refusal's reason shows).
_MULTI_VALUED = frozenset(
    tag_for_keyword(keyword) for keyword in ("ImageType", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
)

#: A decimal or integer string as any writer prints one; a value not of this form (``nan``,
#: ``1_0``, an empty value between backslashes) goes to pydicom. Twelve integer digits at most:
#: beyond 2**53 pydicom's IS checks the value against its float.
_DECIMAL = re.compile(r" *[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})? *")
_INTEGER = re.compile(r" *[-+]?[0-9]{1,12} *")

_US_LITTLE, _US_BIG = struct.Struct("<H").unpack, struct.Struct(">H").unpack

#: Convert one raw value (its bytes, its byte order, whether several values may be read) to
#: what pydicom gives for it, or None when pydicom must convert it.
Converter = Callable[[bytes, bool, bool], Any]


def _items(value: bytes) -> list[str]:
    """The backslash-separated values of a string value, as pydicom's ``multi_string`` splits
    them (trailing spaces and NULs removed)."""
    return value.decode(default_encoding).rstrip(" \x00").split("\\")


def _ui(value: bytes, little_endian: bool, multi: bool) -> Any:
    items = _items(value)
    return items[0] if len(items) == 1 else None  # pydicom strips "\0 " first: the same here


def _cs(value: bytes, little_endian: bool, multi: bool) -> Any:
    items = _items(value)
    if len(items) == 1:
        return items[0]
    return items if multi else None


def _numbers(pattern: re.Pattern[str], kind: type) -> Converter:
    def convert(value: bytes, little_endian: bool, multi: bool) -> Any:
        items = _items(value)
        if (len(items) > 1 and not multi) or not all(pattern.fullmatch(item) for item in items):
            return None
        return kind(items[0]) if len(items) == 1 else [kind(item) for item in items]

    return convert


def _us(value: bytes, little_endian: bool, multi: bool) -> Any:
    if len(value) != 2:
        return None
    return (_US_LITTLE if little_endian else _US_BIG)(value)[0]


_CONVERTERS: dict[str, Converter] = {
    "UI": _ui,
    "CS": _cs,
    "DS": _numbers(_DECIMAL, float),
    "IS": _numbers(_INTEGER, int),
    "US": _us,
}

#: Each filed keyword's tag, dictionary VR and converter.
_FILED: dict[str, tuple[int, str, Converter]] = {
    keyword: (tag_for_keyword(keyword), dictionary_VR(keyword), _CONVERTERS[dictionary_VR(keyword)])
    for keyword in FILED_KEYWORDS
}


class FiledAttributes:
    """The filed attributes of one data set, by keyword, each converted when first read.

    Converted on reading, as a pydicom ``Dataset`` converts its raw elements: a damaged value
    raises pydicom's error when it is read, so the first problem a reader meets (a missing
    UID, say, before a damaged number) is the one pydicom's reading would meet first."""

    def __init__(self, elements: dict[int, RawDataElement]) -> None:
        #: The walk's raw elements (the filed ones and the character set).
        self.elements = elements
        self._values: dict[str, Any] = {}
        self._encoding: str | list[str] | None = None

    def get(self, keyword: str, default: Any = None) -> Any:
        """``keyword``'s value as pydicom gives it, or ``default`` where the data set lacks it."""
        if keyword in self._values:
            return self._values[keyword]
        tag, vr, convert = _FILED[keyword]
        raw = self.elements.get(tag)
        if raw is None:
            return default
        value = None
        if raw.length and raw.VR in (None, vr):  # implicit VR, or the dictionary's
            value = convert(raw.value, raw.is_little_endian, tag in _MULTI_VALUED)
        if value is None:
            value = convert_raw_data_element(raw, encoding=self._text_encoding()).value
        self._values[keyword] = value
        return value

    def _text_encoding(self) -> str | list[str]:
        """The Python encodings of the Specific Character Set (pydicom's default without one)."""
        if self._encoding is None:
            charset = self.elements.get(SPECIFIC_CHARACTER_SET)
            value = None if charset is None else convert_raw_data_element(charset, encoding=default_encoding).value
            self._encoding = convert_encodings(value) if value else default_encoding
        return self._encoding

"""A result object with what it is, so that each destination gets what it asked for.

The worker writes every object any destination wants (a BINARY and a LABELMAP SEG when two
destinations differ, key images when one asks for them); the outbox then queues each object
only for the destinations whose :class:`~dicomnode.settings.Delivery` wants it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomnode.settings import RESULT_OBJECTS, SEG_TYPES


@dataclass(frozen=True)
class ResultObject:
    """One object to send: ``kind`` is one of RESULT_OBJECTS; ``seg_type`` is the encoding of a
    SEG, or of the SEG an SR references (None for key images, which every destination that
    wants key images takes)."""

    dataset: Dataset
    kind: str
    seg_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RESULT_OBJECTS:
            raise ValueError(f"result kind must be one of {', '.join(RESULT_OBJECTS)}, got {self.kind!r}")
        if self.seg_type is not None and self.seg_type not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {', '.join(SEG_TYPES)} or None, got {self.seg_type!r}")

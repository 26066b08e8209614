"""Findings -> DICOM results: a Segmentation of the lungs and a TID 1500 report of their volumes.

Both objects are built only through highdicom's typed classes and carry deterministic UIDs
(:mod:`dicomnode.encode.identity`): the same series analysed by the same algorithm version
gives the same objects again, so a resend replaces rather than duplicates.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicomnode.encode.seg import encode_seg
from dicomnode.encode.segments import EncodingError
from dicomnode.encode.sr import encode_sr
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

__all__ = ["EncodingError", "encode_results", "encode_seg", "encode_sr"]


def encode_results(series: SeriesVolume, findings: Findings, settings: Settings) -> list[Dataset]:
    """The SEG and the SR (in that order: the SR references the SEG) for one analysed series.

    Raises :class:`EncodingError` when the findings cannot be written (no lung found, a label
    map that does not fit the volume, source headers without the attributes a result copies).
    """
    seg = encode_seg(series, findings, settings)
    return [seg, encode_sr(series, seg, findings, settings)]

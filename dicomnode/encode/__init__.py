"""Findings -> DICOM results: a Segmentation of the lungs (and lesions) and a TID 1500 report.

The report holds the lung volumes and, when the classifier ran, the COVID-19 assessment of the
scan and one measurement group per lesion (:mod:`dicomnode.encode.sr`). A scan without lungs
(not assessable) gives the report alone: there is nothing to segment.

Both objects are built only through highdicom's typed classes and carry deterministic UIDs
(:mod:`dicomnode.encode.identity`): the same series analysed by the same algorithm version
gives the same objects again, so a resend replaces rather than duplicates.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.encode.seg import encode_seg
from dicomnode.encode.segments import EncodingError, check_labels
from dicomnode.encode.sr import encode_sr
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

__all__ = ["EncodingError", "encode_results", "encode_seg", "encode_sr"]


def encode_results(series: SeriesVolume, findings: Findings, settings: Settings) -> list[Dataset]:
    """The SEG and the SR (in that order: the SR references the SEG) for one analysed series.

    A scan without any lung voxel that the analysis found not assessable ("no lungs found")
    gives the SR alone: the call "indeterminate" with the reason, its evidence the source images.

    Raises :class:`EncodingError` when the findings cannot be written (no lung found and no
    reason given, a label map that does not fit the volume, lesions that do not match their
    label map, source headers without the attributes a result copies).
    """
    check_labels(findings.lung_labels, series.volume.hu.shape)
    if findings.not_assessable is not None and not np.any(findings.lung_labels):
        return [encode_sr(series, None, findings, settings)]
    seg = encode_seg(series, findings, settings)
    return [seg, encode_sr(series, seg, findings, settings)]

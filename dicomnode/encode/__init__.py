"""Findings -> DICOM results: a Segmentation of the lungs (and lesions), a TID 1500 report, key images.

The report holds the lung volumes and, when the classifier ran, the COVID-19 assessment of the
scan and one measurement group per lesion (:mod:`dicomnode.encode.sr`). A scan without lungs
(not assessable) gives the report alone: there is nothing to segment. Key images
(:mod:`dicomnode.encode.key_images`) show the same findings burned into a few slices.

:func:`encode_for_destinations` writes what the configured destinations ask for: a SEG and its
report per SEG encoding some destination wants, and the key images when one wants them.

Every object is built only through highdicom's typed classes and carries deterministic UIDs
(:mod:`dicomnode.encode.identity`): the same series analysed by the same algorithm version
gives the same objects again, so a resend replaces rather than duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.encode.key_images import encode_key_images
from dicomnode.encode.seg import encode_seg
from dicomnode.encode.segments import EncodingError, check_labels
from dicomnode.encode.sr import encode_sr
from dicomnode.results import ResultObject
from dicomnode.settings import SEG_TYPES, Delivery, Settings
from dicomnode.volume import SeriesVolume
from inference.types import Findings

__all__ = [
    "EncodingError",
    "ResultPlan",
    "encode_for_destinations",
    "encode_key_images",
    "encode_results",
    "encode_seg",
    "encode_sr",
]


def encode_results(series: SeriesVolume, findings: Findings, settings: Settings, seg_type: str = "binary") -> list[Dataset]:
    """The SEG (encoded as ``seg_type``) and the SR that references it, in that order, for one
    analysed series.

    A scan without any lung voxel that the analysis found not assessable ("no lungs found")
    gives the SR alone: the call "indeterminate" with the reason, its evidence the source images.

    Raises :class:`EncodingError` when the findings cannot be written (no lung found and no
    reason given, a label map that does not fit the volume, lesions that do not match their
    label map, source headers without the attributes a result copies).
    """
    check_labels(findings.lung_labels, series.volume.hu.shape)
    if findings.not_assessable is not None and not np.any(findings.lung_labels):
        return [encode_sr(series, None, findings, settings)]
    seg = encode_seg(series, findings, settings, seg_type)
    return [seg, encode_sr(series, seg, findings, settings)]


@dataclass(frozen=True)
class ResultPlan:
    """Which objects to write for a set of destinations: a SEG and its SR per SEG encoding in
    ``seg_types``, and key images if ``key_images``."""

    seg_types: tuple[str, ...]
    key_images: bool

    @classmethod
    def for_deliveries(cls, deliveries: Sequence[Delivery]) -> ResultPlan:
        """What ``deliveries`` ask for; with none (no destination configured), what the default
        delivery asks for, so the outbox holds the usual results."""
        chosen = list(deliveries) or [Delivery()]
        wanted = {d.seg_type for d in chosen if "seg" in d.objects or "sr" in d.objects}
        return cls(
            seg_types=tuple(t for t in SEG_TYPES if t in wanted),
            key_images=any("key-images" in d.objects for d in chosen),
        )


def encode_for_destinations(series: SeriesVolume, findings: Findings, settings: Settings) -> list[ResultObject]:
    """Every object that some configured destination wants, each labelled with what it is."""
    plan = ResultPlan.for_deliveries([destination.delivery for destination in settings.destinations])
    results: list[ResultObject] = []
    for seg_type in plan.seg_types:
        datasets = encode_results(series, findings, settings, seg_type)
        if len(datasets) == 1:  # a report without a SEG is the same for every SEG encoding
            results.append(ResultObject(datasets[0], "sr", None))
            break
        seg, sr = datasets
        results += [ResultObject(seg, "seg", seg_type), ResultObject(sr, "sr", seg_type)]
    if plan.key_images:  # a scan without lungs gets them too: its "not assessable" shows in any viewer
        results += [ResultObject(image, "key-images") for image in encode_key_images(series, findings, settings)]
    return results

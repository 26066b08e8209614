"""Chest CT analysis: lungs, COVID-19 probability and lesions (DeCoVNet, METHOD steps 1-9).

This package knows nothing of DICOM networking or pydicom: it takes a :class:`CTVolume`
and returns :class:`Findings`. The DICOM node builds one :class:`inference.api.Analyzer` and
calls its ``analyze``; :func:`analyze` is the same with the shipped weights. Both are imported
on first use, so that the node's receiver and command-line help do not load torch just to name
the types.
"""

from typing import Any

from inference.types import (
    AlgorithmFamily,
    Classification,
    CTVolume,
    Findings,
    Lesion,
    LungLabel,
    LungVolumes,
)

__all__ = [
    "AlgorithmFamily",
    "Classification",
    "CTVolume",
    "Findings",
    "Lesion",
    "LungLabel",
    "LungVolumes",
    "Analyzer",
    "analyze",
]


def __getattr__(name: str) -> Any:
    if name in ("Analyzer", "analyze"):
        from inference import api

        return getattr(api, name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")

"""Chest CT analysis: lung segmentation and lung measurements (COVID-19 classification arrives later).

This package knows nothing of DICOM networking or pydicom: it takes a :class:`CTVolume`
and returns :class:`Findings`. The DICOM node calls :func:`analyze` and nothing else.
``analyze`` is imported on first use, so that the node's receiver and command-line help do not
load the analysis (and, later, torch) just to name the types.
"""

from typing import Any

from inference.types import AlgorithmFamily, CTVolume, Findings, LungLabel, LungVolumes

__all__ = ["AlgorithmFamily", "CTVolume", "Findings", "LungLabel", "LungVolumes", "analyze"]


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from inference.api import analyze

        return analyze
    raise AttributeError(f"module 'inference' has no attribute {name!r}")

"""Chest CT analysis: lung segmentation and lung measurements (COVID-19 classification arrives later).

This package knows nothing of DICOM networking or pydicom: it takes a :class:`CTVolume`
and returns :class:`Findings`. The DICOM node calls :func:`analyze` and nothing else.
"""

from inference.api import analyze
from inference.types import CTVolume, Findings, LungLabel, LungVolumes

__all__ = ["CTVolume", "Findings", "LungLabel", "LungVolumes", "analyze"]

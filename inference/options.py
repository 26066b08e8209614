"""What a site may configure about the analysis (the node maps its ``[analysis]`` settings here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""Weights produced by this project's training commands and shipped in the package."""

CLASSIFIER_NAMES = ("decovnet", "2dclfnet")
"""The classifiers of :mod:`inference.classifiers`, named here without importing torch."""


@dataclass(frozen=True)
class AnalysisOptions:
    """Options of :class:`inference.api.Analyzer`.

    - ``threshold``: probability at or above which a scan is called COVID-19 positive.
    - ``min_lesion_score``: lesion candidates with a lower mean activation are not reported.
    - ``threads``: CPU threads for torch (None: torch's default, one per core).
    - ``device``: "auto" (CUDA when present, else CPU), "cpu" or "cuda".
    - ``weights_dir``: folder with ``lung_unet.pt``, ``decovnet.pt`` and ``manifest.json``
      (SHA-256 of each), as written by ``python -m inference train-lungs`` /
      ``train-classifier``; a site points it at its own retrained weights.
    - ``classifier``: "decovnet" (the default), or "2dclfnet", the paper's 2-D comparison
      network, whose weights (``clfnet2d.pt``, ``train-classifier --model 2dclfnet``) must be in
      ``weights_dir``. 2DClfNet gives the probability and the call only: lesion localization uses
      DeCoVNet's class activation map, so with it ``Findings.lesions`` is empty and ``cam`` None.
    - ``keep_cam``: map the class activation map onto the original slices as ``Findings.cam``
      (for ``predict``'s overviews and NIfTI maps). The node writes no CAM and turns it off: a
      volume-sized map it would only throw away (157 MB and about a second for 600 slices).
    """

    threshold: float = 0.5
    min_lesion_score: float = 0.3
    threads: int | None = None
    device: str = "auto"
    weights_dir: Path = SHIPPED_WEIGHTS
    classifier: str = "decovnet"
    keep_cam: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.min_lesion_score <= 1.0:
            raise ValueError(f"min_lesion_score must lie in [0, 1], got {self.min_lesion_score}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.classifier not in CLASSIFIER_NAMES:
            raise ValueError(f"classifier must be one of {', '.join(CLASSIFIER_NAMES)}, got {self.classifier!r}")

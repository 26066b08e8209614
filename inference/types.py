"""Typed hand-off objects between the DICOM node and the analysis.

Conventions (the same as SimpleITK's, so a volume converts without reordering):
- ``hu`` is indexed ``[z, y, x]``: slice, row, column.
- ``spacing`` and ``origin`` are ``(x, y, z)`` in millimetres, patient (LPS) coordinates.
- ``direction`` is a 3x3 matrix whose *columns* are the patient-space unit vectors of the
  array's x (column), y (row) and z (slice) axes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CTVolume:
    """A CT volume in Hounsfield units with its patient-space geometry."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"CTVolume.spacing must be three positive numbers, got {self.spacing}")
        if np.asarray(self.direction).shape != (3, 3):
            raise ValueError("CTVolume.direction must be a 3x3 matrix")

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        return float(np.prod(self.spacing)) / 1000.0


class LungLabel(enum.IntEnum):
    """Values of :attr:`Findings.lung_labels`.

    ``UNSEPARATED`` marks lung tissue where the right and left lung could not be told apart
    (they touch along the whole mediastinum on some scans); it is reported as one "Lung".
    """

    BACKGROUND = 0
    RIGHT = 1
    LEFT = 2
    UNSEPARATED = 3


@dataclass(frozen=True)
class LungVolumes:
    """Lung volumes in millilitres. ``right_ml``/``left_ml`` are None when not separated."""

    right_ml: float | None
    left_ml: float | None
    total_ml: float

    @property
    def separated(self) -> bool:
        return self.right_ml is not None and self.left_ml is not None


class AlgorithmFamily(enum.Enum):
    """What kind of method produced the findings; the node writes it as a DICOM CID 7162 code."""

    MORPHOLOGICAL_OPERATIONS = "morphological operations"
    ARTIFICIAL_INTELLIGENCE = "artificial intelligence"


@dataclass(frozen=True)
class Classification:
    """DeCoVNet's answer: the probability of COVID-19 pneumonia and the call at ``threshold``."""

    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


GROUND_GLASS_MAX_HU = -300.0
"""Ground glass lets the vessels show through (about -700 to -300 HU); consolidation is denser."""


@dataclass(frozen=True)
class Lesion:
    """One localized lesion candidate (METHOD step 9).

    ``label`` is its value in :attr:`Findings.lesion_labels`. ``score`` is the mean class
    activation (0..1) over its voxels. ``primary`` marks the candidate with the greatest overlap
    with the unsupervised 3-D component R3dcc (the paper's single localized lesion).
    ``centre_mm`` is the centroid in patient LPS coordinates. ``mean_hu`` tells ground glass
    (about -700 to -300 HU) from consolidation (denser).
    """

    label: int
    score: float
    volume_ml: float
    centre_mm: tuple[float, float, float]
    mean_hu: float
    primary: bool = False

    @property
    def ground_glass(self) -> bool:
        return self.mean_hu < GROUND_GLASS_MAX_HU

    @property
    def kind(self) -> str:
        """"ground glass" or "consolidation", by mean density."""
        return "ground glass" if self.ground_glass else "consolidation"


@dataclass(frozen=True)
class Findings:
    """What the analysis found in one volume.

    ``lung_labels`` has the shape of the input volume's ``hu`` and holds :class:`LungLabel`
    values. The optional fields are empty when the classifier did not run:
    - ``classification``: None when no classifier is installed or the scan is not assessable;
    - ``not_assessable``: the reason no probability is given (no plausible pair of lungs,
      lungs cut off, too few slices), else None;
    - ``lesion_labels``: uint8 map like ``lung_labels``, value ``i`` for ``lesions[i-1]``;
    - ``cam``: the class activation map on the input grid, uint8 (0..255 for 0..1); None also
      when the analysis was asked not to keep it (``AnalysisOptions.keep_cam``).
    """

    lung_labels: np.ndarray
    lungs: LungVolumes
    algorithm_name: str
    algorithm_version: str
    algorithm_family: AlgorithmFamily
    classification: Classification | None = None
    not_assessable: str | None = None
    lesions: tuple[Lesion, ...] = ()
    lesion_labels: np.ndarray | None = None
    cam: np.ndarray | None = None

    @property
    def lesion_volume_ml(self) -> float:
        return float(sum(lesion.volume_ml for lesion in self.lesions))

    @property
    def involvement_percent(self) -> float | None:
        """Total lesion volume as a percentage of the total lung volume (None without lungs)."""
        if self.lungs.total_ml <= 0:
            return None
        return 100.0 * self.lesion_volume_ml / self.lungs.total_ml

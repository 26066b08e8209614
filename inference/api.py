"""The entry point of the analysis: :class:`Analyzer` turns a CT volume into findings.

The DICOM node builds one Analyzer at start-up (models loaded once, reused for every series) and
calls :meth:`Analyzer.analyze` and nothing else. The steps (METHOD 1-9):

1. lungs: the U-Net on a coarse grid, mapped back to the original slices (:mod:`inference.lung_unet`);
2. assessability: a plausible, complete pair of lungs, else "not assessable" and no probability;
3. DeCoVNet on the lung box (224x336 per slice, CT + lung mask) gives the probability and the CAM;
4. lesions (positive scans only): CAM candidates and R3dcc on the classifier grid
   (:mod:`inference.localize`), mapped back to the original slices and measured there.

With ``AnalysisOptions(classifier="2dclfnet")`` the paper's 2-D comparison network replaces
DeCoVNet in step 3 (:mod:`inference.classifiers`). It gives the probability and the call only:
step 4 needs DeCoVNet's CAM, so its findings have no lesions and no ``cam``.

:func:`analyze` is the same with the default options (the shipped weights).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from inference.assess import not_assessable_reason
from inference.classifier_input import ClassifierInput, cam_slices, classifier_input, pad_slices
from inference.classifiers import classifier_spec
from inference.device import choose_device
from inference.grid import VoxelGrid
from inference.localize import Localization, localize, upsample_cam
from inference.lung_unet import segment_lungs_unet
from inference.models.decovnet import COVID, DeCoVNet
from inference.models.unet import UNet
from inference.multilevel_cam import level_cams_on_original
from inference.options import AnalysisOptions
from inference.resampling import original_box, resampled_in_box, to_original_uint8
from inference.types import (
    AlgorithmFamily,
    Classification,
    CTVolume,
    Findings,
    Lesion,
    LungLabel,
    LungVolumes,
)
from inference.version import package_version
from inference.weights import LUNG_UNET, load_weights, read_manifest

logger = logging.getLogger(__name__)


class Analyzer:
    """The models, loaded once; :meth:`analyze` runs them on one volume at a time."""

    def __init__(self, options: AnalysisOptions | None = None) -> None:
        self.options = options or AnalysisOptions()
        self.device = choose_device(self.options.device, self.options.threads)
        folder = self.options.weights_dir
        # channels_last: the 2-D convolutions run about a third faster on the CPU (outputs differ
        # by about 1e-6, no mask voxel changed on the shared scans).
        self.unet = load_weights(UNet(), folder, LUNG_UNET).to(self.device, memory_format=torch.channels_last)
        spec = classifier_spec(self.options.classifier)
        self.classifier = load_weights(spec.build(), folder, spec.weights).to(self.device)
        self.decovnet = self.classifier if isinstance(self.classifier, DeCoVNet) else None
        """The classifier when it is DeCoVNet, the only one with a CAM; None with 2DClfNet."""
        if self.decovnet is not None:
            # channels_last_3d: oneDNN convolves in that layout natively, so no convolution
            # output is reordered through a second buffer of its size (146 MB less at the peak
            # for a 600-slice scan), as fast (RICORD: 1.3 s either way); outputs differ in float rounding.
            self.decovnet.to(memory_format=torch.channels_last_3d)
        self.algorithm_name = spec.algorithm_name
        self.version = _algorithm_version(read_manifest(folder), self.options, spec.weights)
        self.timings: dict[str, float] = {}
        """Seconds per stage of the last :meth:`analyze` (for the benchmark)."""

    def analyze(self, volume: CTVolume) -> Findings:
        """Lungs, assessability, COVID-19 probability and lesions of ``volume``."""
        self.timings = {}
        with self._stage("lungs"):
            labels = segment_lungs_unet(volume, self.unet, self.device)
            lungs = lung_volumes(labels, volume.voxel_volume_ml)
        findings = Findings(
            lung_labels=labels,
            lungs=lungs,
            algorithm_name=self.algorithm_name,
            algorithm_version=self.version,
            algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
        )
        reason = not_assessable_reason(volume, labels, lungs)
        with self._stage("resample"):
            prepared = None if reason else classifier_input(volume, labels)
        if reason or prepared is None:
            reason = reason or "no lungs found"
            logger.warning("scan not assessable: %s", reason)
            return replace(findings, not_assessable=reason)
        with self._stage("classifier"):
            probability, raw_cam = self._classify(prepared)
        classification = Classification(probability, self.options.threshold)
        if raw_cam is None:  # 2DClfNet: no CAM, so no lesion localization
            logger.info("COVID-19 probability %.3f (%s), no lesion localization", probability, self.algorithm_name)
            return replace(findings, classification=classification)
        with self._stage("localization"):
            cam = upsample_cam(raw_cam, prepared.hu.shape, prepared.lungs)
            lesion_labels, lesions = None, ()
            if classification.positive:  # lesions are reported for positive calls only
                found = localize(cam, prepared.hu, prepared.lungs, self.options.min_lesion_score, prepared.grid.voxel_ml)
                lesion_labels, lesions = _lesions_on_original(volume, labels, prepared, found)
            cam_original = to_original_uint8(volume, prepared.grid, cam) if self.options.keep_cam else None
        logger.info(
            "COVID-19 probability %.3f (%s at %.2f), %d lesions, lungs %.0f ml",
            probability,
            "positive" if classification.positive else "negative",
            classification.threshold,
            len(lesions),
            lungs.total_ml,
        )
        return replace(
            findings,
            classification=classification,
            lesions=lesions,
            lesion_labels=lesion_labels,
            cam=cam_original,
        )

    def multilevel_cams(self, volume: CTVolume, lung_labels: np.ndarray) -> dict[str, np.ndarray] | None:
        """DeCoVNet's COVID-19 maps at three feature levels (:mod:`inference.multilevel_cam`),
        uint8 on the original slices; None without lungs or without DeCoVNet. A backward pass:
        for ``predict``, never part of :meth:`analyze`."""
        if self.decovnet is None:
            return None
        return level_cams_on_original(self.decovnet, volume, lung_labels, self.device)

    def _classify(self, prepared: ClassifierInput) -> tuple[float, torch.Tensor | None]:
        """The COVID-19 probability and DeCoVNet's raw CAM (None with another classifier)."""
        x = pad_slices(prepared.tensor()).to(self.device)
        with torch.inference_mode():
            if self.decovnet is None:
                logits, cam = self.classifier(x), None
            else:
                logits, cam = self.decovnet.forward_with_cam(x.contiguous(memory_format=torch.channels_last_3d))
                cam = cam[:, : cam_slices(prepared.hu.shape[0])]
            probability = torch.softmax(logits, dim=1)[0, COVID].item()
        return probability, cam

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - started


def _lesions_on_original(
    volume: CTVolume, lung_labels: np.ndarray, prepared: ClassifierInput, found: Localization
) -> tuple[np.ndarray | None, tuple[Lesion, ...]]:
    """Candidates mapped onto the original slices and measured there, inside the lungs only.

    The candidates lie in the lungs of the coarse classifier grid; mapped back, a candidate at
    the pleura or the hilum spills over the finer lung outline, and a lung lesion's outline,
    volume and centre must not include chest wall or mediastinum. Candidates that vanish are
    dropped. The work is done in the box the candidates can reach, each candidate measured in
    its own box within it: comparing the whole volume once per candidate cost seconds on a
    512x512x255 scan.
    """
    box = original_box(volume, prepared.grid, found.labels) if found.candidates else None
    if box is None:
        return None, ()
    mapped = resampled_in_box(volume, prepared.grid, found.labels, box, labels=True)
    mapped[lung_labels[box] == 0] = 0
    grid = VoxelGrid.of(volume)
    labels = np.zeros(volume.hu.shape, dtype=np.uint8)  # at most MAX_LESIONS (10) lesions
    labels_in_box, hu_in_box = labels[box], volume.hu[box]
    offset = np.array([s.start for s in box], dtype=float)
    boxes = ndi.find_objects(mapped, max_label=len(found.candidates))
    lesions = []
    for candidate in found.candidates:
        own = boxes[candidate.label - 1]
        if own is None:  # vanished outside the finer lung outline
            continue
        new = len(lesions) + 1
        voxels = mapped[own] == candidate.label
        labels_in_box[own][voxels] = new
        corner = offset + np.array([s.start for s in own], dtype=float)
        centre_index = np.array(np.nonzero(voxels), dtype=float).mean(axis=1) + corner
        centre = grid.origin + centre_index @ grid.steps
        lesions.append(
            Lesion(
                label=new,
                score=round(candidate.score, 4),
                volume_ml=float(np.count_nonzero(voxels)) * volume.voxel_volume_ml,
                centre_mm=tuple(float(c) for c in centre),  # type: ignore[arg-type]
                mean_hu=float(hu_in_box[own][voxels].mean()),
                primary=candidate.primary,
            )
        )
    return (labels if lesions else None), tuple(lesions)


def _algorithm_version(manifest: dict[str, Any], options: AnalysisOptions, classifier_weights: str) -> str:
    """Package version plus a digest of the weights used (the lung U-Net's and the classifier's,
    ``classifier_weights``) and of the options that change the results.

    The node derives its result UIDs from the algorithm version: retrained weights or another
    threshold must give new UIDs, or a PACS would keep the old objects and ignore the new ones.
    """
    identity = [manifest.get(name, {}).get("sha256", "") for name in (LUNG_UNET, classifier_weights)]
    identity += [repr(options.threshold), repr(options.min_lesion_score)]
    digest = hashlib.sha256("|".join(identity).encode()).hexdigest()[:8]
    return f"{package_version()}+{digest}"


@lru_cache(maxsize=1)
def default_analyzer() -> Analyzer:
    return Analyzer()


def analyze(volume: CTVolume) -> Findings:
    """:meth:`Analyzer.analyze` with the default options and the shipped weights."""
    return default_analyzer().analyze(volume)


def lung_volumes(labels: np.ndarray, voxel_ml: float) -> LungVolumes:
    """Volumes in ml from voxel counts; right/left are None unless the lungs were separated."""
    # One count per label: bincount would first copy the labels to 64-bit integers (8 bytes a voxel).
    counts = {label: np.count_nonzero(labels == label) for label in (LungLabel.RIGHT, LungLabel.LEFT, LungLabel.UNSEPARATED)}
    right = float(counts[LungLabel.RIGHT]) * voxel_ml
    left = float(counts[LungLabel.LEFT]) * voxel_ml
    total = right + left + float(counts[LungLabel.UNSEPARATED]) * voxel_ml
    separated = counts[LungLabel.UNSEPARATED] == 0 and right > 0 and left > 0
    return LungVolumes(
        right_ml=right if separated else None,
        left_ml=left if separated else None,
        total_ml=total,
    )

"""``train-classifier``: DeCoVNet (METHOD steps 7-8) on real and lesion-inserted scans.

Data: COVID-19-negative scans, COVID-19-positive scans, and, when a lesion library is given,
every negative scan again with freshly inserted lesions (:mod:`inference.synth`) as a positive,
new lesions at every epoch. Curriculum (``real_only_epochs``): measured here, the network stays at
chance for 30+ epochs when a negative and its lesion-inserted twin (identical but for the
lesions) are there from the start, and learns within about 15 epochs from the real scans alone;
so it first learns from the real scans, then the lesion-inserted positives are added. Each epoch shows every sample once, the minority class oversampled
to balance (reference). Adam at a constant 1e-5, batch 1, cross-entropy, the augmentations of
:mod:`inference.training.augment`.

Validation: the training scans themselves without augmentation, and the negatives with lesions
drawn from a separate random stream; there are too few real scans to hold out more than the
evaluation scan, which the caller simply does not pass here. So the validation AUC shows that
training converged, not how well the model generalises (that is the evaluation's job).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from inference.classifier_input import SLICE_MM, ClassifierInput, classifier_input, pad_slices
from inference.device import choose_device
from inference.metrics import roc_auc
from inference.models.decovnet import COVID, DeCoVNet
from inference.synth import LesionLibrary, insert_lesions
from inference.training.augment import augment
from inference.training.checkpoint import resume, save_checkpoint
from inference.training.scans import load_scans
from inference.weights import DECOVNET, save_weights

logger = logging.getLogger(__name__)

VALIDATION_STREAM = 2**31
"""Random stream of the validation lesions (epochs use streams 0, 1, 2...)."""


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    negatives: tuple[Path, ...]
    positives: tuple[Path, ...]
    lesions: Path | None
    out: Path
    seed: int = 0
    epochs: int = 100
    lr: float = 1e-5
    validate_every: int = 5
    lesion_count: tuple[int, int] = (1, 5)
    """Lesions per synthetic positive: a random count in this range (inclusive)."""
    min_lesion_ml: float = 0.5
    """Smallest lesion shape drawn from the library."""
    real_only_epochs: int = 0
    """Curriculum: the first epochs show the real scans only, before the lesion-inserted ones."""
    device: str = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class Sample:
    """One training item: a prepared scan, its label, and whether lesions are inserted."""

    name: str
    prepared: ClassifierInput
    label: int
    insert: bool


def prepare(paths: tuple[Path, ...]) -> list[tuple[str, ClassifierInput]]:
    prepared = []
    for scan in load_scans(list(paths)):
        item = classifier_input(scan.volume, scan.lungs.astype(np.uint8))
        if item is not None:
            prepared.append((scan.name, item))
    return prepared


def epoch_samples(negatives: list[tuple[str, ClassifierInput]], positives: list[tuple[str, ClassifierInput]], synthetic: bool) -> list[Sample]:
    """Every sample once, the minority class repeated until both classes are equally many."""
    neg = [Sample(name, item, 0, False) for name, item in negatives]
    pos = [Sample(name, item, 1, False) for name, item in positives]
    if synthetic:
        pos += [Sample(f"{name}+lesions", item, 1, True) for name, item in negatives]
    if not neg or not pos:
        raise ValueError("training needs negatives and positives (real, or negatives with --lesions)")
    small, large = (neg, pos) if len(neg) < len(pos) else (pos, neg)
    small = [small[i % len(small)] for i in range(len(large))]
    return small + large


def model_input(
    sample: Sample, library: LesionLibrary | None, rng: np.random.Generator, lesion_count: tuple[int, int]
) -> torch.Tensor:
    item = sample.prepared
    if not sample.insert or library is None:
        return pad_slices(item.tensor())
    grid = item.grid
    spacing_zyx = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    superior_is_up = grid.voxel_grid.superior_is_up
    count = int(rng.integers(lesion_count[0], lesion_count[1] + 1))
    inserted = insert_lesions(
        item.hu, item.lungs, spacing_zyx, library, rng, count=count, superior_is_up=superior_is_up
    )
    return pad_slices(item.tensor(inserted.hu))


def validate(
    model: DeCoVNet, samples: list[Sample], library: LesionLibrary | None, config: ClassifierTrainingConfig, device: torch.device
) -> tuple[float | None, list[float]]:
    model.eval()
    labels, scores = [], []
    with torch.inference_mode():
        for index, sample in enumerate(samples):
            rng = np.random.default_rng([config.seed, VALIDATION_STREAM, index])
            x = model_input(sample, library, rng, config.lesion_count)
            probability = torch.softmax(model(x.to(device)), dim=1)[0, COVID].item()
            labels.append(sample.label)
            scores.append(probability)
    model.train()
    return roc_auc(labels, scores), scores


def train_classifier(config: ClassifierTrainingConfig) -> Path:
    """Train DeCoVNet; returns the path of the weights written into ``config.out``."""
    started = time.monotonic()
    device = choose_device(config.device, config.threads)
    torch.manual_seed(config.seed)
    negatives, positives = prepare(config.negatives), prepare(config.positives)
    library = LesionLibrary.load(config.lesions, config.min_lesion_ml) if config.lesions else None
    samples = epoch_samples(negatives, positives, synthetic=library is not None)
    real = epoch_samples(negatives, positives, synthetic=False) if config.real_only_epochs else samples
    unique = list({s.name: s for s in samples}.values())
    model = DeCoVNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    checkpoint = config.out / "checkpoints" / "decovnet.pt"
    progress = resume(checkpoint, model, optimizer) or {"epoch": 0, "auc": None, "loss": None}
    model.train()
    for epoch in range(progress["epoch"], config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        shown = real if epoch < config.real_only_epochs else samples
        losses = []
        for index in rng.permutation(len(shown)):
            sample = shown[index]
            x = augment(model_input(sample, library, rng, config.lesion_count), rng).to(device)
            target = torch.tensor([sample.label], device=device)
            loss = F.cross_entropy(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        done = epoch + 1
        progress = {"epoch": done, "auc": progress["auc"], "loss": float(np.mean(losses))}
        message = f"epoch {done}/{config.epochs} loss {progress['loss']:.4f}"
        if done % config.validate_every == 0 or done == config.epochs:
            auc, scores = validate(model, unique, library, config, device)
            progress["auc"] = auc
            detail = ", ".join(f"{s.name} {p:.2f}" for s, p in zip(unique, scores))
            message += f" validation AUC {auc if auc is None else round(auc, 3)} ({detail})"
        save_checkpoint(checkpoint, model, optimizer, progress)
        logger.info(message)
    record = {
        "command": "train-classifier",
        "seed": config.seed,
        "epochs": config.epochs,
        "lr": config.lr,
        "slice_mm": SLICE_MM,
        "negatives": [name for name, _ in negatives],
        "positives": [name for name, _ in positives],
        "inserted_lesion_positives": library is not None,
        "lesion_count": list(config.lesion_count),
        "min_lesion_ml": config.min_lesion_ml,
        "real_only_epochs": config.real_only_epochs,
        "final_loss": progress["loss"],
        "validation_auc": progress["auc"],
        "minutes": round((time.monotonic() - started) / 60.0, 1),
    }
    return save_weights(model, config.out, DECOVNET, record)

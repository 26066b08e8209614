"""``train-classifier``: DeCoVNet (METHOD steps 7-8), or 2DClfNet, on real and lesion-inserted scans.

``--model`` picks the network from :mod:`inference.classifiers` (DeCoVNet by default, 2DClfNet
for the paper's comparison); everything below, data, lesions, augmentation, optimiser,
checkpoints, validation and record, is the same for both, and the weights go to the model's
own file (``decovnet.pt``, ``clfnet2d.pt``) with its checkpoint under the same name.

Data: COVID-19-negative scans, COVID-19-positive scans, and, when a lesion library is given,
every negative scan again with freshly inserted lesions (:mod:`inference.synth`) as a positive,
new lesions at every epoch. Each epoch shows (negative, positive) pairs in a random order, both
classes equally often (the reference oversampled the minority class); Adam, batch 1,
cross-entropy, the augmentations of :mod:`inference.training.augment`.

Why pairs, gradient clipping and 1e-3 (measured here, on this CPU's budget of a few hundred
steps against the paper's ~50 000; the paper's lr is 1e-5):

- a negative and its lesion-inserted twin are shown one after the other with the same random
  transform, so the only difference between the two steps is the lesions. Shown apart, with
  independent transforms, the network stayed at chance for 30+ epochs at every rate tried;
- at 1e-3 without clipping the head's ReLUs died within ~80 steps (every output the same,
  for good); at 1e-4 nothing moved in 300 pair steps. Clipping the gradient norm at 1.0 keeps
  1e-3 stable: on one crop, fresh lesions every step, the net told new lesions from the clean
  scan within ~120 pair steps;
- curriculum (``lesion_only_epochs``): with the real positive there from the start, the network
  separated the RICORD scan from the negatives within 30 epochs and gave every twin exactly its
  original's probability: the one real positive differs from the negatives in scanner and
  patient, which is the easy thing to learn, and the max-pooling head then passes no gradient
  through the lesions. So it first learns the lesions from the twins alone, then the real
  positives join;
- the scans' HU are rounded to integers once, because the lesion inserter returns integer HU:
  otherwise a twin would differ from its original in every voxel's rounding, a shortcut.

Validation: the training scans themselves without augmentation, and the negatives with lesions
drawn from a separate random stream; there are too few real scans to hold out more than the
evaluation scan, which the caller simply does not pass here. So the validation AUC shows that
training converged, not how well the model generalises (that is the evaluation's job).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from inference.classifier_input import SLICE_MM, ClassifierInput, classifier_input, pad_slices
from inference.classifiers import classifier_spec
from inference.device import choose_device
from inference.metrics import roc_auc
from inference.models.decovnet import COVID
from inference.synth import LesionLibrary, insert_lesions
from inference.training.augment import augment
from inference.training.checkpoint import resume, save_checkpoint
from inference.training.scans import load_scans
from inference.weights import save_weights

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
    crop_slices: int | None = None
    """Train on this many consecutive slices of each scan (a pair shares its window); None: all."""
    lesion_only_epochs: int = 0
    """Curriculum: the first epochs show only the negatives and their lesion-inserted twins."""
    clip_grad_norm: float | None = 1.0
    """Largest gradient norm of a step (None: no clipping); see the module docstring."""
    device: str = "auto"
    threads: int | None = None
    model: str = "decovnet"
    """The network, by its name in :data:`inference.classifiers.CLASSIFIERS`."""


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
            prepared.append((scan.name, replace(item, hu=np.rint(item.hu).astype(np.int16))))
    return prepared


def epoch_pairs(
    negatives: list[tuple[str, ClassifierInput]], positives: list[tuple[str, ClassifierInput]], synthetic: bool
) -> list[tuple[Sample, Sample]]:
    """The epoch's (negative, positive) pairs; both classes equally often.

    With ``synthetic``, every negative is paired with its lesion-inserted twin; every real
    positive is paired with a negative (taken in turn), and without ``synthetic`` the minority
    class is repeated until both are equally many (the reference oversampled it too).
    """
    neg = [Sample(name, item, 0, False) for name, item in negatives]
    pos = [Sample(name, item, 1, False) for name, item in positives]
    if not neg or not (pos or synthetic):
        raise ValueError("training needs negatives and positives (real, or negatives with --lesions)")
    if synthetic:
        twins = [(n, Sample(f"{n.name}+lesions", n.prepared, 1, True)) for n in neg]
        return twins + [(neg[i % len(neg)], p) for i, p in enumerate(pos)]
    return [(neg[i % len(neg)], pos[i % len(pos)]) for i in range(max(len(neg), len(pos)))]


def model_input(
    sample: Sample,
    library: LesionLibrary | None,
    rng: np.random.Generator,
    lesion_count: tuple[int, int],
    window: slice = slice(None),
) -> torch.Tensor:
    """The network input of ``sample``: the slices in ``window``, with new lesions if it is a twin."""
    item = replace(sample.prepared, hu=sample.prepared.hu[window], lungs=sample.prepared.lungs[window])
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


def slice_window(depth: int, slices: int | None, position: float) -> slice:
    """``slices`` consecutive slices of ``depth``, starting at ``position`` (0..1) of the free room."""
    if slices is None or slices >= depth:
        return slice(None)
    start = int(position * (depth - slices + 1))
    return slice(start, start + slices)


def validate(
    model: nn.Module, samples: list[Sample], library: LesionLibrary | None, config: ClassifierTrainingConfig, device: torch.device
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


def _pair_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, pair: list[tuple[torch.Tensor, int]], clip: float | None
) -> float:
    """One Adam step on a (negative, positive) pair; returns the mean loss.

    Each scan goes through the network alone (batch 1: T varies, and BatchNorm sees one scan);
    their gradients add up before the step, so whatever the twins share cancels and the step
    follows the lesions.
    """
    optimizer.zero_grad()
    total = 0.0
    for x, label in pair:
        loss = F.cross_entropy(model(x), torch.tensor([label], device=x.device)) / len(pair)
        loss.backward()
        total += loss.item()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return total


def train_classifier(config: ClassifierTrainingConfig) -> Path:
    """Train ``config.model``; returns the path of the weights written into ``config.out``."""
    spec = classifier_spec(config.model)
    started = time.monotonic()
    device = choose_device(config.device, config.threads)
    torch.manual_seed(config.seed)
    negatives, positives = prepare(config.negatives), prepare(config.positives)
    library = LesionLibrary.load(config.lesions, config.min_lesion_ml) if config.lesions else None
    pairs = epoch_pairs(negatives, positives, synthetic=library is not None)
    twins = [pair for pair in pairs if pair[1].insert]
    if config.lesion_only_epochs and not twins:
        raise ValueError("--lesion-only-epochs needs --lesions (negatives with inserted lesions)")
    unique = list({s.name: s for pair in pairs for s in pair}.values())
    model = spec.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    checkpoint = config.out / "checkpoints" / spec.weights
    progress = resume(checkpoint, model, optimizer) or {"epoch": 0, "auc": None, "loss": None}
    model.train()
    for epoch in range(progress["epoch"], config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        shown = twins if epoch < config.lesion_only_epochs else pairs
        losses = []
        for index in rng.permutation(len(shown)):
            transform_seed, position = int(rng.integers(2**32)), float(rng.random())
            pair = []
            for sample in shown[index]:
                window = slice_window(sample.prepared.hu.shape[0], config.crop_slices, position)
                x = model_input(sample, library, rng, config.lesion_count, window)
                pair.append((augment(x, np.random.default_rng(transform_seed)).to(device), sample.label))
            losses.append(_pair_step(model, optimizer, pair, config.clip_grad_norm))
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
        "model": config.model,
        "seed": config.seed,
        "epochs": config.epochs,
        "lr": config.lr,
        "slice_mm": SLICE_MM,
        "negatives": [name for name, _ in negatives],
        "positives": [name for name, _ in positives],
        "inserted_lesion_positives": library is not None,
        "lesion_count": list(config.lesion_count),
        "min_lesion_ml": config.min_lesion_ml,
        "lesion_only_epochs": config.lesion_only_epochs,
        "crop_slices": config.crop_slices,
        "clip_grad_norm": config.clip_grad_norm,
        "pairs": "each negative with its lesion-inserted twin (same augmentation), each real positive with a negative",
        "final_loss": progress["loss"],
        "validation_auc": progress["auc"],
        "minutes": round((time.monotonic() - started) / 60.0, 1),
    }
    return save_weights(model, config.out, spec.weights, record)

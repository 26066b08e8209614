"""``train-classifier``: DeCoVNet (METHOD steps 7-8), or 2DClfNet, on real and lesion-inserted scans.

``--model`` picks the network from :mod:`inference.classifiers` (DeCoVNet by default, 2DClfNet
for the paper's comparison); everything below, data, lesions, augmentation, optimiser,
checkpoints, validation and record, is the same for both, and the weights go to the model's
own file (``decovnet.pt``, ``clfnet2d.pt``) with its checkpoint under the same name.

Data: COVID-19-negative scans, COVID-19-positive scans, and, when a lesion library is given,
every negative scan again with freshly inserted lesions (:mod:`inference.synth`) as a positive,
new lesions at every step: its *twin*. Each epoch shows (negative, positive) pairs in a random
order, both classes equally often (the reference oversampled the minority class); Adam,
cross-entropy, the augmentations of :mod:`inference.training.augment`.

What it takes to learn inserted lesions in this CPU's budget (a few hundred steps against the
paper's ~50 000; measured, see the model card):

- **Each scan normalised alone, in training and at inference** (DeCoVNet's BatchNorm keeps no
  running statistics: :mod:`inference.models.decovnet`). Every scan goes through the network
  alone (batch 1, as the reference); with running statistics at inference, what the network had
  learnt to tell a twin from its original did not survive into eval mode (measured: everything
  called the same), and an 8 mm scan's baseline moved far from the others'.
- **A twin and its original make one step**, with the same slices and the same random
  transform, so that whatever they share cancels and the step follows the lesions.
- **A ranking term for twins**: ``softplus(z(negative) - z(twin))``, z the COVID-19 logit
  margin. Cross-entropy alone can be lowered, while nothing separates the classes yet, by
  making the output the same for every scan; the head's ReLUs then die (every output the same,
  for good: measured after ~100 pair steps at 1e-3, with and without the ranking term beside
  it). The ranking term alone cannot be lowered that way, and it pushes exactly on what the
  lesions add. It is used for twins only: between two different patients it would reward
  whatever tells the two scans apart.
- **An easy stage first** (``easy_epochs``): twins only, on ``easy_slices``-slice windows,
  consolidations only, no augmentation, the ranking term alone: learn to see conspicuous
  lesions in a small input (~50 pair steps). Then whole scans (the network's adaptive
  poolings must see the depth they see at inference), the literature's mix of ground glass and
  consolidation, step-8 augmentation, the real positives, and cross-entropy beside the ranking
  term: learn to call a scan.
- **lr 1e-3 with the gradient norm clipped at 1.0** (the paper: 1e-5 for ~50 000 steps; at
  1e-5 and 1e-4 nothing moved in this budget).
- the scans' HU are rounded to integers once, because the lesion inserter returns integer HU:
  otherwise a twin would differ from its original in every voxel's rounding, a shortcut.

Validation: the training scans themselves without augmentation, and the negatives with lesions
drawn from a separate random stream (the realistic mix); there are too few real scans to hold
out more than the evaluation scan, which the caller simply does not pass here. So the
validation AUC shows that training converged, not how well the model generalises (that is the
evaluation's job).
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
from inference.synth import GGO_PROBABILITY, LesionLibrary
from inference.training.augment import augment
from inference.training.cam_orientation import orient_cam
from inference.training.checkpoint import resume, save_checkpoint
from inference.training.lesion_twins import insert_into
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
    easy_epochs: int = 0
    """Curriculum: the first epochs show only twins, on `easy_slices`-slice windows, with
    consolidations only, without augmentation, ranked only (see the module docstring)."""
    easy_slices: int = 32
    rank_weight: float = 1.0
    """Weight of the twins' ranking term beside cross-entropy after the easy stage (0: none)."""
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
    ggo_probability: float = GGO_PROBABILITY,
) -> tuple[torch.Tensor, int]:
    """The network input of ``sample``: the slices in ``window``, with new lesions if it is a twin
    (ground glass with ``ggo_probability``, else consolidation); and the number of lesions
    inserted (0 for a scan without insertion, or when none fitted in the window)."""
    item = replace(sample.prepared, hu=sample.prepared.hu[window], lungs=sample.prepared.lungs[window])
    if not sample.insert or library is None:
        return pad_slices(item.tensor()), 0
    inserted = insert_into(item, library, rng, lesion_count, ggo_probability)
    return pad_slices(item.tensor(inserted.hu)), inserted.count


def slice_window(depth: int, slices: int | None, position: float) -> slice:
    """``slices`` consecutive slices of ``depth``, starting at ``position`` (0..1) of the free room."""
    if slices is None or slices >= depth:
        return slice(None)
    start = int(position * (depth - slices + 1))
    return slice(start, start + slices)


WINDOW_ATTEMPTS = 5
"""Windows tried for a twin before its whole scan is used: a window at the lung apex or base may
hold too little lung for any lesion, and a "positive" without lesions would teach the opposite."""


def pair_input(
    pair: tuple[Sample, Sample],
    library: LesionLibrary | None,
    rng: np.random.Generator,
    config: ClassifierTrainingConfig,
    easy: bool,
) -> torch.Tensor:
    """The pair (2, 2, T, H, W): the same slice window of both scans and, after the easy stage,
    the same random transform.

    A twin shares its original's slices, and its window holds at least one inserted lesion. In the
    easy stage both are `easy_slices` slices at a random height and the twin's lesions are
    consolidations; otherwise the pair is cut to the depth of the shorter scan (all of a twin
    pair) at a random height.
    """
    slices = config.easy_slices if easy else min(s.prepared.hu.shape[0] for s in pair)
    ggo_probability = 0.0 if easy else GGO_PROBABILITY
    for attempt in range(WINDOW_ATTEMPTS + 1):
        position = float(rng.random())
        length = slices if attempt < WINDOW_ATTEMPTS else None  # the last resort: whole scans
        windows = [slice_window(sample.prepared.hu.shape[0], length, position) for sample in pair]
        inputs = [model_input(s, library, rng, config.lesion_count, w, ggo_probability) for s, w in zip(pair, windows)]
        if not pair[1].insert or inputs[1][1] > 0:
            break
    x = torch.cat([tensor for tensor, _ in inputs])
    return x if easy else augment(x, rng)


def validate(
    model: nn.Module, samples: list[Sample], library: LesionLibrary | None, config: ClassifierTrainingConfig, device: torch.device
) -> tuple[float | None, list[float]]:
    model.eval()
    labels, scores = [], []
    with torch.inference_mode():
        for index, sample in enumerate(samples):
            rng = np.random.default_rng([config.seed, VALIDATION_STREAM, index])
            x, _ = model_input(sample, library, rng, config.lesion_count)
            probability = torch.softmax(model(x.to(device)), dim=1)[0, COVID].item()
            labels.append(sample.label)
            scores.append(probability)
    model.train()
    return roc_auc(labels, scores), scores


MARGIN_PENALTY = 0.01
"""Weight of the margins' square when the ranking term stands alone (the easy stage)."""


def pair_loss(logits: torch.Tensor, rank_weight: float, cross_entropy: bool = True) -> torch.Tensor:
    """The loss of a (negative, positive) pair's logits: cross-entropy, plus ``rank_weight`` times
    the ranking term ``softplus(z_negative - z_positive)`` on the COVID-19 logit margins z (see
    the module docstring).

    Without cross-entropy (the easy stage), a small penalty on the margins' square takes the part
    of anchoring them: the ranking term alone leaves their level free and rewards ever larger
    differences (measured: margins in the thousands after 70 epochs), and cross-entropy then
    brought them down by killing the head's ReLUs, every output the same for good.
    """
    margin = logits[:, COVID] - logits[:, 1 - COVID]
    loss = F.softplus(margin[0] - margin[1]) * rank_weight
    if cross_entropy:
        return loss + F.cross_entropy(logits, torch.tensor([0, COVID], device=logits.device))
    return loss + MARGIN_PENALTY * (margin**2).mean()


def _pair_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    rank_weight: float,
    cross_entropy: bool,
    clip: float | None,
) -> float:
    """One Adam step on a (negative, positive) pair ``x``; returns its loss. Each scan goes through
    the network alone (batch 1, as the reference: BatchNorm sees one scan; see
    :mod:`inference.models.decovnet`); their losses, ranking term included, make one step."""
    optimizer.zero_grad()
    loss = pair_loss(torch.cat([model(x[:1]), model(x[1:])]), rank_weight, cross_entropy)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item()


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
    if config.easy_epochs and not twins:
        raise ValueError("--easy-epochs needs --lesions (negatives with inserted lesions)")
    unique = list({s.name: s for pair in pairs for s in pair}.values())
    model = spec.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    checkpoint = config.out / "checkpoints" / spec.weights
    progress = resume(checkpoint, model, optimizer) or {"epoch": 0, "auc": None, "loss": None}
    earlier_minutes = progress.get("minutes", 0.0)  # before a resume: the record counts the whole run

    def minutes_so_far() -> float:
        return earlier_minutes + (time.monotonic() - started) / 60.0

    model.train()
    for epoch in range(progress["epoch"], config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        easy = epoch < config.easy_epochs
        shown = twins if easy else pairs
        losses = []
        for index in rng.permutation(len(shown)):
            pair = shown[index]
            x = pair_input(pair, library, rng, config, easy).to(device)
            rank_weight = (1.0 if easy else config.rank_weight) if pair[1].insert else 0.0
            losses.append(_pair_step(model, optimizer, x, rank_weight, not easy, config.clip_grad_norm))
        done = epoch + 1
        progress = {"epoch": done, "auc": progress["auc"], "loss": float(np.mean(losses)), "minutes": minutes_so_far()}
        stage = " (easy stage)" if easy else ""
        message = f"epoch {done}/{config.epochs}{stage} loss {progress['loss']:.4f}"
        if done % config.validate_every == 0 or done == config.epochs:
            auc, scores = validate(model, unique, library, config, device)
            progress["auc"] = auc
            detail = ", ".join(f"{s.name} {p:.2f}" for s, p in zip(unique, scores))
            message += f" validation AUC {auc if auc is None else round(auc, 3)} ({detail})"
        save_checkpoint(checkpoint, model, optimizer, progress)
        logger.info(message)
    cam_auc = (
        orient_cam(model, [item for _, item in negatives], library, config.seed, config.lesion_count, device)
        if library
        else None
    )
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
        "easy_epochs": config.easy_epochs,
        "easy_slices": config.easy_slices,
        "rank_weight": config.rank_weight,
        "clip_grad_norm": config.clip_grad_norm,
        "pairs": "one batch per (negative, positive) pair: each negative with its lesion-inserted twin, "
        "each real positive with a negative (cut to the same depth)",
        "final_loss": progress["loss"],
        "validation_auc": progress["auc"],
        "cam_lesion_auc": cam_auc,
        "minutes": round(minutes_so_far(), 1),
    }
    return save_weights(model, config.out, spec.weights, record)

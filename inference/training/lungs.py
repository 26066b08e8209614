"""``train-lungs``: the 2-D lung U-Net on pseudo-labels (METHOD step 5).

What it learns from: slices of real scans with their classical lung masks, and the same scans
with lesions inserted (:mod:`inference.synth`) while the target stays the original lung mask,
so that ground glass and consolidation inside the lung are segmented as lung (the classical
method leaves broad pleural consolidation out). Slices are drawn from the 20-85 % z-range of
the lungs (reference), as random 128x128 crops at pixel sizes from 0.7 to 2.5 mm, rotated up to
10 degrees, flipped, with brightness/contrast jitter: the scale range makes one network work
both at the node's coarse grid (2 mm) and on full-resolution slices (the Dice yardstick).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from inference.device import choose_device
from inference.models.unet import UNet
from inference.resampling import window
from inference.synth import LesionLibrary, insert_lesions
from inference.training.augment import affine
from inference.training.checkpoint import resume, save_checkpoint
from inference.training.scans import TrainingScan, load_scans, spacing_zyx
from inference.weights import LUNG_UNET, save_weights

logger = logging.getLogger(__name__)

CROP = 128
PIXEL_MM = (0.7, 2.5)
Z_RANGE = (0.20, 0.85)
MAX_ROTATION_DEG = 10.0
LESIONS_PER_VARIANT = (3, 9)
"""Lesions inserted into each training variant (random, upper bound exclusive): more than the
1-5 of a typical positive, so that the U-Net sees plenty of consolidation against the pleura."""
LESION_CROP_FRACTION = 0.5
VALIDATION_STREAM = 2**31
"""Random stream of the fixed validation crops (training steps use streams 0, 1, 2...)."""


@dataclass(frozen=True)
class LungTrainingConfig:
    scans: tuple[Path, ...]
    lesions: Path | None
    out: Path
    seed: int = 0
    steps: int = 800
    batch: int = 16
    lr: float = 1e-3
    lesion_variants: int = 6
    validate_every: int = 100
    device: str = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class SlicePool:
    """Windowed slices and lung targets from the lung z-range of every scan variant.

    Images are stored as the 8-bit window (``window`` gives multiples of 1/255 exactly), a
    quarter of the memory of float32. ``lesion_pixels`` lists, per variant, the (slice, row,
    column) of inserted lesion voxels, so half of each batch can be centred on a lesion.
    """

    images: list[np.ndarray]  # per variant: (n, H, W) uint8
    targets: list[np.ndarray]  # per variant: (n, H, W) bool
    pixel_mm: list[float]
    lesion_pixels: list[np.ndarray]  # per variant: (k, 3) indices into images/targets


def build_pool(scans: list[TrainingScan], library: LesionLibrary | None, variants: int, seed: int) -> SlicePool:
    """Clean slices from the lungs' 20-85 % z-range (reference); lesion variants add every slice
    with a lesion, wherever it lies (lower-lobe lesions sit below the 20 % mark)."""
    pool = SlicePool([], [], [], [])
    for index, scan in enumerate(scans):
        z = np.flatnonzero(scan.lungs.any(axis=(1, 2)))
        lo, hi = z[0] + int(Z_RANGE[0] * len(z)), z[0] + int(math.ceil(Z_RANGE[1] * len(z)))
        middle = np.arange(lo, max(hi, lo + 1))
        _add(pool, scan.volume.hu, scan.lungs, middle, None, float(scan.volume.spacing[0]))
        for variant in range(variants if library is not None else 0):
            rng = np.random.default_rng([seed, index, variant])
            inserted = insert_lesions(
                scan.volume.hu, scan.lungs, spacing_zyx(scan.volume), library, rng,  # type: ignore[arg-type]
                count=int(rng.integers(*LESIONS_PER_VARIANT)), superior_is_up=scan.superior_is_up,
            )
            chosen = np.union1d(middle, np.flatnonzero(inserted.mask.any(axis=(1, 2))))
            _add(pool, inserted.hu, scan.lungs, chosen, inserted.mask, float(scan.volume.spacing[0]))
    return pool


def _add(pool: SlicePool, hu: np.ndarray, lungs: np.ndarray, chosen: np.ndarray, lesions: np.ndarray | None, pixel_mm: float) -> None:
    pool.images.append(np.round(window(hu[chosen]) * 255.0).astype(np.uint8))
    pool.targets.append(lungs[chosen])
    pool.pixel_mm.append(pixel_mm)
    pool.lesion_pixels.append(np.zeros((0, 3), dtype=np.int64) if lesions is None else np.argwhere(lesions[chosen]))


def random_batch(pool: SlicePool, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` augmented crops (N, 1, CROP, CROP) and their targets (N, CROP, CROP); half of
    them centred on an inserted lesion when the pool has any."""
    with_lesions = [v for v, pixels in enumerate(pool.lesion_pixels) if len(pixels)]
    xs, ys = [], []
    for _ in range(batch):
        if with_lesions and rng.random() < LESION_CROP_FRACTION:
            v = with_lesions[int(rng.integers(len(with_lesions)))]
            k, row, column = pool.lesion_pixels[v][int(rng.integers(len(pool.lesion_pixels[v])))]
            height, width = pool.images[v].shape[1:]
            centre = (2.0 * column / width - 1.0, 2.0 * row / height - 1.0)
        else:
            v = int(rng.integers(len(pool.images)))
            k = int(rng.integers(len(pool.images[v])))
            centre = tuple(rng.uniform(-0.6, 0.6, size=2))
        image = torch.from_numpy(pool.images[v][k].astype(np.float32) / 255.0)[None, None]
        target = torch.from_numpy(pool.targets[v][k].astype(np.float32))[None, None]
        pixel = math.exp(rng.uniform(math.log(PIXEL_MM[0]), math.log(PIXEL_MM[1])))
        theta = _crop_transform(image.shape[-2:], pool.pixel_mm[v], pixel, centre, rng)
        grid = F.affine_grid(theta, [1, 1, CROP, CROP], align_corners=False)
        x = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = F.grid_sample(target, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
        xs.append(((x - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)[:, 0].long()


def _crop_transform(
    shape: torch.Size, source_mm: float, pixel_mm: float, centre: tuple[float, float], rng: np.random.Generator
) -> torch.Tensor:
    """Affine (1, 2, 3) from the crop's normalised coordinates to the slice's, around ``centre``."""
    height, width = int(shape[0]), int(shape[1])
    scale_x = CROP * pixel_mm / (width * source_mm)
    scale_y = CROP * pixel_mm / (height * source_mm)
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    return affine(scale_x, scale_y, angle, rng.random() < 0.5, centre)


def mean_iou(model: UNet, images: torch.Tensor, targets: torch.Tensor, device: torch.device) -> float:
    model.eval()
    with torch.inference_mode():
        predicted = model(images.to(device)).argmax(1).cpu()
    model.train()
    ious = []
    for cls in (0, 1):
        p, t = predicted == cls, targets == cls
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return float(np.mean(ious))


def train_lungs(config: LungTrainingConfig) -> Path:
    """Train the U-Net; returns the path of the weights written into ``config.out``."""
    started = time.monotonic()
    device = choose_device(config.device, config.threads)
    torch.manual_seed(config.seed)
    scans = load_scans(list(config.scans))
    library = LesionLibrary.load(config.lesions) if config.lesions else None
    pool = build_pool(scans, library, config.lesion_variants, config.seed)
    validation = random_batch(pool, 64, np.random.default_rng([config.seed, VALIDATION_STREAM]))
    model = UNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    checkpoint = config.out / "checkpoints" / "lungs.pt"
    progress = resume(checkpoint, model, optimizer) or {"step": 0, "miou": None}
    model.train()
    for step in range(progress["step"], config.steps):
        images, targets = random_batch(pool, config.batch, np.random.default_rng([config.seed, step]))
        loss = F.cross_entropy(model(images.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % config.validate_every == 0 or done == config.steps:
            progress = {"step": done, "miou": mean_iou(model, *validation, device)}
            save_checkpoint(checkpoint, model, optimizer, progress)
            logger.info("step %d/%d loss %.4f validation mIoU %.4f", done, config.steps, loss.item(), progress["miou"])
        elif done % 10 == 0:
            logger.info("step %d/%d loss %.4f", done, config.steps, loss.item())
    record = {
        "command": "train-lungs",
        "seed": config.seed,
        "steps": config.steps,
        "batch": config.batch,
        "lr": config.lr,
        "scans": [scan.name for scan in scans],
        "lesion_variants": config.lesion_variants if library else 0,
        "validation_miou": progress["miou"],
        "minutes": round((time.monotonic() - started) / 60.0, 1),
    }
    return save_weights(model, config.out, LUNG_UNET, record)

"""Model weights on disk: a folder of state dicts with a ``manifest.json`` of their SHA-256.

Why a manifest: the node must never run weights other than the ones a training run wrote (a
truncated copy, a file swapped by hand), so every load checks the file's SHA-256 against the
manifest and refuses a mismatch. Loading uses ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only, never arbitrary objects. The manifest also records how each
file was made (command, seed, data, metrics), which the model card quotes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
LUNG_UNET = "lung_unet.pt"
DECOVNET = "decovnet.pt"
CLFNET2D = "clfnet2d.pt"


class WeightsError(RuntimeError):
    """Weights are missing, do not match their manifest, or do not fit the model."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def save_weights(module: torch.nn.Module, folder: Path, name: str, record: dict[str, Any]) -> Path:
    """Write ``module``'s state dict as ``folder/name`` and its SHA-256 and ``record`` into the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    temporary = path.with_suffix(".tmp")
    torch.save({key: value.detach().cpu() for key, value in module.state_dict().items()}, temporary)
    temporary.replace(path)
    manifest = read_manifest(folder)
    manifest[name] = {"sha256": sha256_of(path), **record}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_weights(module: torch.nn.Module, folder: Path, name: str) -> torch.nn.Module:
    """Load ``folder/name`` into ``module`` after checking its SHA-256 against the manifest."""
    path = Path(folder) / name
    if not path.is_file():
        raise WeightsError(f"{path}: weights not found (train them with python -m inference train-...)")
    expected = read_manifest(Path(folder)).get(name, {}).get("sha256")
    if expected is None:
        raise WeightsError(f"{path}: no SHA-256 for it in {Path(folder) / MANIFEST}")
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(f"{path}: SHA-256 {actual} does not match the manifest's {expected}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"{path}: does not fit {type(module).__name__}: {error}") from error
    return module.eval()

"""Weights on disk: SHA-256 checked on every load, tensors only, a manifest that says how they were made."""

from __future__ import annotations

import json

import pytest
import torch

from inference.models.unet import UNet
from inference.options import SHIPPED_WEIGHTS
from inference.weights import DECOVNET, LUNG_UNET, MANIFEST, WeightsError, load_weights, save_weights, sha256_of


def test_saved_weights_load_back_identically(tmp_path) -> None:
    torch.manual_seed(0)
    model = UNet()
    save_weights(model, tmp_path, LUNG_UNET, {"command": "test"})
    loaded = load_weights(UNet(), tmp_path, LUNG_UNET)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest[LUNG_UNET]["sha256"] == sha256_of(tmp_path / LUNG_UNET)
    assert manifest[LUNG_UNET]["command"] == "test"


def test_a_changed_file_is_refused(tmp_path) -> None:
    save_weights(UNet(), tmp_path, LUNG_UNET, {})
    with open(tmp_path / LUNG_UNET, "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(UNet(), tmp_path, LUNG_UNET)


def test_weights_without_a_manifest_entry_are_refused(tmp_path) -> None:
    torch.save(UNet().state_dict(), tmp_path / LUNG_UNET)
    with pytest.raises(WeightsError, match="no SHA-256"):
        load_weights(UNet(), tmp_path, LUNG_UNET)


def test_missing_weights_name_the_training_command(tmp_path) -> None:
    with pytest.raises(WeightsError, match="train"):
        load_weights(UNet(), tmp_path, LUNG_UNET)


def test_a_pickled_object_is_never_executed(tmp_path) -> None:
    """weights_only loading refuses arbitrary objects even when the hash matches."""

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / LUNG_UNET)
    (tmp_path / MANIFEST).write_text(json.dumps({LUNG_UNET: {"sha256": sha256_of(tmp_path / LUNG_UNET)}}))
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported"):
        load_weights(UNet(), tmp_path, LUNG_UNET)


def test_the_shipped_weights_match_their_manifest() -> None:
    manifest = json.loads((SHIPPED_WEIGHTS / MANIFEST).read_text())
    for name in (LUNG_UNET, DECOVNET):
        assert manifest[name]["sha256"] == sha256_of(SHIPPED_WEIGHTS / name)
        assert manifest[name]["seed"] == 0

"""The training commands, run for a few steps on the synthetic phantom: they learn from the
given data, resume from their checkpoint exactly, and are reproducible from the seed."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, require_path
from inference.cli import main
from inference.io import write_nifti
from inference.training.augment import augment
from inference.training.classifier import ClassifierTrainingConfig, train_classifier
from inference.training.lungs import LungTrainingConfig, train_lungs
from inference.weights import DECOVNET, LUNG_UNET, read_manifest, sha256_of


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory, phantom) -> Path:
    path = tmp_path_factory.mktemp("scans") / "phantom.nii.gz"
    write_nifti(phantom.volume, phantom.volume.hu, path)
    return path


@pytest.fixture(scope="module")
def mosmed() -> Path:
    return require_path(SHARED_DATA / "lesion-masks" / "mosmed")


def _lung_config(scan: Path, lesions: Path, out: Path, steps: int) -> LungTrainingConfig:
    return LungTrainingConfig(
        scans=(scan,), lesions=lesions, out=out, seed=3, steps=steps, batch=2, lesion_variants=1, validate_every=1, threads=1
    )


def test_lung_training_resumes_exactly_and_is_reproducible(phantom_nifti, mosmed, tmp_path) -> None:
    interrupted = tmp_path / "interrupted"
    train_lungs(_lung_config(phantom_nifti, mosmed, interrupted, steps=1))
    resumed = train_lungs(_lung_config(phantom_nifti, mosmed, interrupted, steps=2))
    straight = train_lungs(_lung_config(phantom_nifti, mosmed, tmp_path / "straight", steps=2))
    assert sha256_of(resumed) == sha256_of(straight)
    record = read_manifest(interrupted)[LUNG_UNET]
    assert record["seed"] == 3 and record["steps"] == 2 and record["scans"] == ["phantom.nii.gz"]
    assert 0.0 <= record["validation_miou"] <= 1.0


def test_classifier_training_shows_progress_and_resumes(phantom_nifti, mosmed, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    config = ClassifierTrainingConfig(
        negatives=(phantom_nifti,), positives=(), lesions=mosmed, out=tmp_path, epochs=1, validate_every=1, threads=1
    )
    train_classifier(config)
    assert "epoch 1/1 loss" in caplog.text and "validation AUC" in caplog.text
    caplog.clear()
    train_classifier(replace(config, epochs=2))
    assert "resumed" in caplog.text and "epoch 2/2" in caplog.text and "epoch 1/2" not in caplog.text
    record = read_manifest(tmp_path)[DECOVNET]
    assert record["epochs"] == 2 and record["negatives"] == ["phantom.nii.gz"]
    assert record["inserted_lesion_positives"] is True


def test_classifier_training_needs_both_classes(phantom_nifti, tmp_path) -> None:
    config = ClassifierTrainingConfig(negatives=(phantom_nifti,), positives=(), lesions=None, out=tmp_path, epochs=1)
    with pytest.raises(ValueError, match="negatives and positives"):
        train_classifier(config)


def test_the_cli_reports_a_failed_training_instead_of_raising(tmp_path) -> None:
    assert main(["train-lungs", "--scans", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path)]) == 1


def test_augmentation_keeps_shape_range_and_binary_mask() -> None:
    x = torch.zeros(1, 2, 6, 224, 336)
    x[0, 0, :, 60:160, 80:250] = 0.6
    x[0, 1, :, 60:160, 80:250] = 1.0
    outputs = [augment(x, np.random.default_rng(seed)) for seed in range(4)]
    for out in outputs:
        assert out.shape == x.shape
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert set(np.unique(out[0, 1].numpy())) <= {0.0, 1.0}
        # The same in-plane transform for every slice.
        assert torch.equal(out[0, 1, 0], out[0, 1, -1])
    assert not torch.equal(outputs[0], outputs[1])
    assert torch.equal(augment(x, np.random.default_rng(0)), outputs[0])

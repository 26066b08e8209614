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
from inference.training.classifier import ClassifierTrainingConfig, epoch_pairs, slice_window, train_classifier
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


def test_classifier_trains_on_slice_windows_with_a_lesion_curriculum(phantom_nifti, mosmed, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    config = ClassifierTrainingConfig(
        negatives=(phantom_nifti,), positives=(phantom_nifti,), lesions=mosmed, out=tmp_path, epochs=2,
        validate_every=2, threads=1, crop_slices=12, lesion_only_epochs=1,
    )
    train_classifier(config)
    record = read_manifest(tmp_path)[DECOVNET]
    assert record["crop_slices"] == 12 and record["lesion_only_epochs"] == 1
    assert "epoch 2/2 loss" in caplog.text and "validation AUC" in caplog.text


def test_a_lesion_curriculum_needs_lesions(phantom_nifti, tmp_path) -> None:
    config = ClassifierTrainingConfig(
        negatives=(phantom_nifti,), positives=(phantom_nifti,), lesions=None, out=tmp_path, epochs=1, lesion_only_epochs=1
    )
    with pytest.raises(ValueError, match="--lesions"):
        train_classifier(config)


def test_classifier_training_needs_both_classes(phantom_nifti, tmp_path) -> None:
    config = ClassifierTrainingConfig(negatives=(phantom_nifti,), positives=(), lesions=None, out=tmp_path, epochs=1)
    with pytest.raises(ValueError, match="negatives and positives"):
        train_classifier(config)


def test_each_negative_is_paired_with_its_lesion_twin_and_classes_balance() -> None:
    scans = {name: object() for name in ("neg-a", "neg-b", "neg-c", "pos")}
    negatives = [(n, scans[n]) for n in ("neg-a", "neg-b", "neg-c")]
    positives = [("pos", scans["pos"])]
    pairs = epoch_pairs(negatives, positives, synthetic=True)
    assert [(n.name, p.name) for n, p in pairs] == [
        ("neg-a", "neg-a+lesions"), ("neg-b", "neg-b+lesions"), ("neg-c", "neg-c+lesions"), ("neg-a", "pos")
    ]
    assert all(n.label == 0 and p.label == 1 for n, p in pairs)
    assert all(p.insert and p.prepared is n.prepared for n, p in pairs[:3]) and not pairs[3][1].insert
    real = epoch_pairs(negatives, positives, synthetic=False)
    assert [(n.name, p.name) for n, p in real] == [("neg-a", "pos"), ("neg-b", "pos"), ("neg-c", "pos")]


def test_slice_window_stays_inside_the_scan() -> None:
    assert slice_window(100, None, 0.7) == slice(None)
    assert slice_window(20, 32, 0.7) == slice(None)  # a short scan is taken whole
    assert slice_window(100, 32, 0.0) == slice(0, 32)
    assert slice_window(100, 32, 0.999) == slice(68, 100)
    starts = {slice_window(100, 32, p).start for p in np.linspace(0, 0.999, 500)}
    assert starts == set(range(69))


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

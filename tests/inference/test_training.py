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
from inference.training.classifier import (
    ClassifierTrainingConfig,
    Sample,
    epoch_pairs,
    pair_input,
    pair_loss,
    prepare,
    slice_window,
    train_classifier,
)
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


def test_classifier_trains_with_an_easy_stage_first(phantom_nifti, mosmed, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    config = ClassifierTrainingConfig(
        negatives=(phantom_nifti,), positives=(phantom_nifti,), lesions=mosmed, out=tmp_path, epochs=2,
        validate_every=2, threads=1, easy_epochs=1, easy_slices=12,
    )
    train_classifier(config)
    record = read_manifest(tmp_path)[DECOVNET]
    assert record["easy_epochs"] == 1 and record["easy_slices"] == 12 and record["rank_weight"] == 1.0
    assert "epoch 1/2 (easy stage) loss" in caplog.text and "epoch 2/2 loss" in caplog.text
    assert "validation AUC" in caplog.text


def test_an_easy_stage_needs_lesions(phantom_nifti, tmp_path) -> None:
    config = ClassifierTrainingConfig(
        negatives=(phantom_nifti,), positives=(phantom_nifti,), lesions=None, out=tmp_path, epochs=1, easy_epochs=1
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


def test_a_pair_is_one_batch_with_one_window_and_one_transform(phantom_nifti, mosmed, tmp_path) -> None:
    """Twins share slices and transform, so the two inputs differ by the lesions alone (inside the
    lungs; after the transform's interpolation, at most one pixel outside); a real pair of unequal
    depths is cut to the shorter one."""
    from scipy import ndimage

    from inference.synth import LesionLibrary

    ((name, item),) = prepare((phantom_nifti,))
    negative, twin = Sample(name, item, 0, False), Sample(f"{name}+lesions", item, 1, True)
    config = ClassifierTrainingConfig(
        negatives=(phantom_nifti,), positives=(), lesions=mosmed, out=tmp_path, easy_slices=12, lesion_count=(3, 3)
    )
    library = LesionLibrary.load(mosmed, min_ml=5.0)
    for easy in (True, False):
        x = pair_input((negative, twin), library, np.random.default_rng(1), config, easy)
        depth = 12 if easy else item.hu.shape[0]
        assert x.shape == (2, 2, depth, 224, 336)
        assert torch.equal(x[0, 1], x[1, 1])  # one lung mask: one window, one transform
        changed = (x[0, 0] != x[1, 0]).numpy()
        lungs = x[0, 1].numpy() > 0
        near_lungs = lungs if easy else ndimage.binary_dilation(lungs, np.ones((1, 3, 3), dtype=bool))
        assert changed.any() and not np.any(changed & ~near_lungs)
    short = Sample("short", replace(item, hu=item.hu[:20], lungs=item.lungs[:20]), 1, False)
    x = pair_input((negative, short), library, np.random.default_rng(2), config, easy=False)
    assert x.shape[2] == 20


def test_the_ranking_term_rewards_a_twin_above_its_original() -> None:
    equal = torch.zeros(2, 2)
    assert float(pair_loss(equal, 1.0)) == pytest.approx(2 * np.log(2.0))  # cross-entropy + ranking, both at chance
    assert float(pair_loss(equal, 0.0)) == pytest.approx(np.log(2.0))
    assert float(pair_loss(equal, 1.0, cross_entropy=False)) == pytest.approx(np.log(2.0))  # the easy stage's loss
    shifted = equal + torch.tensor([[0.0, 7.0]])  # the same answer for both: ranked at chance, and far from 0
    assert float(pair_loss(shifted, 1.0, cross_entropy=False)) == pytest.approx(np.log(2.0) + 0.01 * 49)
    ranked = torch.tensor([[3.0, -3.0], [-3.0, 3.0]])  # negative called negative, twin called positive
    assert float(pair_loss(ranked, 1.0)) < 0.01
    flat = torch.tensor([[0.0, 5.0], [0.0, 5.0]])  # the same answer for both: the ranking term stays at log 2
    assert float(pair_loss(flat, 1.0) - pair_loss(flat, 0.0)) == pytest.approx(np.log(2.0))


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


def test_the_cam_is_oriented_towards_inserted_lesions(phantom_nifti, mosmed) -> None:
    """A head whose chained weights point the other way gets the other orientation and the same
    lesion ranking; the orientation travels with the weights."""
    from inference.models.decovnet import DeCoVNet
    from inference.synth import LesionLibrary
    from inference.training.cam_orientation import orient_cam

    ((_, item),) = prepare((phantom_nifti,))
    library = LesionLibrary.load(mosmed, min_ml=5.0)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = DeCoVNet()
    auc = orient_cam(model, [item], library, seed=0, lesion_count=(3, 3), device=cpu)
    assert auc is not None and auc >= 0.5
    chosen = float(model.cam_orientation)
    with torch.no_grad():
        model.head.fc2.weight.neg_()  # the same map with the opposite sign
    assert orient_cam(model, [item], library, seed=0, lesion_count=(3, 3), device=cpu) == pytest.approx(auc, abs=1e-6)
    assert float(model.cam_orientation) == -chosen
    restored = DeCoVNet()
    restored.load_state_dict(model.state_dict())
    assert float(restored.cam_orientation) == -chosen

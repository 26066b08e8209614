"""2DClfNet, the paper's 2-D comparison network: shapes, size, the max over slices, and training
and analysis with it through the same command line and options as DeCoVNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.api import Analyzer
from inference.classifier_input import pad_slices
from inference.classifiers import CLASSIFIERS, classifier_spec
from inference.cli import main
from inference.io import write_nifti
from inference.models.clfnet2d import ClfNet2d
from inference.models.decovnet import DeCoVNet
from inference.models.unet import UNet
from inference.options import CLASSIFIER_NAMES, SHIPPED_WEIGHTS, AnalysisOptions
from inference.weights import CLFNET2D, DECOVNET, LUNG_UNET, WeightsError, load_weights, read_manifest, save_weights

PARAMETERS = 360_450
"""Measured (DeCoVNet: 346,978); a change of the architecture shows here."""


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory, phantom) -> Path:
    """The phantom (tests/inference/conftest.py) as a training scan, as test_training.py writes it
    (with pytest's importlib mode a test module's fixtures cannot be imported from another)."""
    path = tmp_path_factory.mktemp("scans") / "phantom.nii.gz"
    write_nifti(phantom.volume, phantom.volume.hu, path)
    return path


def _model(seed: int = 0) -> ClfNet2d:
    torch.manual_seed(seed)
    return ClfNet2d().eval()


def test_shapes_at_t150() -> None:
    model = _model()
    x = torch.rand(1, 2, 150, 224, 336)
    with torch.inference_mode():
        stem = model.stem(x[0].transpose(0, 1))
        block1 = model.pool1(model.block1(stem))
        maps = model.convs(model.block2(block1))
        logits = model.fc(torch.amax(maps, dim=(0, 2, 3))[None])
    assert stem.shape == (150, 64, 56, 84)
    assert block1.shape == (150, 128, 28, 42)
    assert maps.shape == (150, 128, 28, 42)
    assert logits.shape == (1, 2)


@pytest.mark.parametrize("slices", [1, 3, 8])
def test_few_slices_work_and_padding_does_not_change_the_output(slices: int) -> None:
    """No convolution crosses slices, so even one slice works; the classifier input's padding
    (the last slice repeated) leaves the maximum over slices as it was."""
    model = _model()
    x = torch.rand(1, 2, slices, 224, 336)
    with torch.inference_mode():
        logits = model(x)
        padded = model(pad_slices(x))
    assert logits.shape == (1, 2)
    assert torch.allclose(logits, padded, atol=1e-5)


def test_parameter_count() -> None:
    count = sum(p.numel() for p in ClfNet2d().parameters())
    print(f"2DClfNet parameters: {count}")
    assert count == PARAMETERS


def test_the_scan_is_called_by_its_strongest_slice() -> None:
    """Max over slices: a strong feature in one slice changes the output, wherever that slice
    is; the order of the slices does not matter. Smaller slices keep this test fast (a 2-D
    network takes any size)."""
    model = _model(1)
    torch.manual_seed(2)
    x = torch.rand(1, 2, 6, 64, 96) * 0.1
    strong = x.clone()
    strong[0, 0, 2, 20:40, 30:60] = 1.0
    moved = x.clone()
    moved[:, :, [2, 5]] = strong[:, :, [5, 2]]  # the strong slice now at 5, slice 5 at 2
    with torch.inference_mode():
        base = model(x)
        with_feature = model(strong)
        at_another_slice = model(moved)
        permuted = model(strong[:, :, torch.randperm(6)])
        features = model.slice_features(strong)
        plain = model.slice_features(x)
    assert not torch.allclose(base, with_feature, atol=1e-4)
    assert torch.allclose(with_feature, at_another_slice, atol=1e-5)
    assert torch.allclose(with_feature, permuted, atol=1e-5)
    # Evaluation mode: each slice on its own; only the changed slice's features change.
    assert torch.allclose(features[[0, 1, 3, 4, 5]], plain[[0, 1, 3, 4, 5]], atol=1e-5)
    assert torch.allclose(with_feature, model.fc(features.amax(dim=0, keepdim=True)), atol=1e-5)


def test_one_scan_at_a_time() -> None:
    with pytest.raises(ValueError, match="batch 1"):
        _model()(torch.rand(2, 2, 3, 64, 96))


def test_the_registry_names_what_the_options_accept() -> None:
    assert tuple(CLASSIFIERS) == CLASSIFIER_NAMES
    assert classifier_spec("2dclfnet").weights == CLFNET2D
    with pytest.raises(ValueError, match="2dclfnet"):
        classifier_spec("resnet")
    with pytest.raises(ValueError, match="classifier"):
        AnalysisOptions(classifier="resnet")


def test_missing_2dclfnet_weights_name_the_training_command(tmp_path) -> None:
    save_weights(UNet(), tmp_path, LUNG_UNET, {})
    save_weights(DeCoVNet(), tmp_path, DECOVNET, {})
    Analyzer(AnalysisOptions(weights_dir=tmp_path, threads=1))
    with pytest.raises(WeightsError, match=f"{CLFNET2D}.*train"):
        Analyzer(AnalysisOptions(classifier="2dclfnet", weights_dir=tmp_path, threads=1))


def test_train_classifier_2dclfnet_writes_weights_the_analysis_loads(phantom_nifti, phantom, tmp_path) -> None:
    """One epoch through the command line (the phantom as both classes: the data path, not
    learning, is tested here), then an analysis with those weights and the shipped lung U-Net."""
    scan = str(phantom_nifti)
    argv = ["train-classifier", "--model", "2dclfnet", "--negatives", scan, "--positives", scan]
    argv += ["--out", str(tmp_path), "--epochs", "1", "--validate-every", "1", "--threads", "1"]
    assert main(argv) == 0
    record = read_manifest(tmp_path)[CLFNET2D]
    assert record["model"] == "2dclfnet" and record["command"] == "train-classifier" and record["epochs"] == 1
    assert (tmp_path / "checkpoints" / CLFNET2D).is_file()
    assert not (tmp_path / "decovnet.pt").exists()

    save_weights(load_weights(UNet(), SHIPPED_WEIGHTS, LUNG_UNET), tmp_path, LUNG_UNET, {"copied": "shipped"})
    analyzer = Analyzer(AnalysisOptions(classifier="2dclfnet", weights_dir=tmp_path, threads=1))
    findings = analyzer.analyze(phantom.volume)
    assert findings.not_assessable is None and findings.classification is not None
    assert 0.0 <= findings.classification.probability <= 1.0
    # Lesion localization is DeCoVNet's CAM: none with 2DClfNet.
    assert findings.lesions == () and findings.lesion_labels is None and findings.cam is None
    assert findings.algorithm_name == "2DClfNet"
    # The version covers the classifier used: DeCoVNet's weights beside them give another one.
    save_weights(DeCoVNet(), tmp_path, DECOVNET, {})
    assert findings.algorithm_version != Analyzer(AnalysisOptions(weights_dir=tmp_path, threads=1)).version

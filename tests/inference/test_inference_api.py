"""inference.analyze: findings, volumes, algorithm identity, and the package's import boundary."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
import inference.version
from inference import api
from inference.options import AnalysisOptions
from inference.types import LungLabel
from inference.version import package_version

# Fixtures (tests/inference/conftest.py): ``phantom`` and ``make_phantom``.


@pytest.fixture(scope="module")
def findings(phantom) -> inference.Findings:
    return inference.analyze(phantom.volume)


def test_findings_carry_the_labels_and_the_volumes(phantom, findings: inference.Findings) -> None:
    assert findings.lung_labels.shape == phantom.volume.hu.shape
    assert findings.lungs.separated
    assert findings.lungs.right_ml == pytest.approx(phantom.right_ml, rel=0.1)
    assert findings.lungs.left_ml == pytest.approx(phantom.left_ml, rel=0.1)
    lungs = findings.lungs
    assert lungs.total_ml == pytest.approx(lungs.right_ml + lungs.left_ml)


def test_the_right_lung_is_on_the_patients_right(phantom, findings: inference.Findings) -> None:
    right = findings.lung_labels == LungLabel.RIGHT
    assert (right & phantom.right).sum() > 0.9 * right.sum()


def test_volumes_are_voxel_counts_times_voxel_volume(phantom, findings: inference.Findings) -> None:
    right_voxels = int(np.sum(findings.lung_labels == LungLabel.RIGHT))
    assert findings.lungs.right_ml == right_voxels * phantom.volume.voxel_volume_ml


def test_a_probability_and_a_cam_come_with_the_findings(phantom, findings: inference.Findings) -> None:
    assert findings.not_assessable is None
    assert findings.classification is not None
    assert 0.0 <= findings.classification.probability <= 1.0
    assert findings.classification.threshold == 0.5
    assert findings.cam is not None and findings.cam.shape == phantom.volume.hu.shape
    assert findings.cam.dtype == np.uint8  # all zero when nothing speaks for COVID-19 (ReLU)
    # The CAM lies on the lung box only: nothing far outside the body.
    assert not findings.cam[:, :5, :].any()



def test_without_keep_cam_the_findings_are_the_same_less_the_cam(phantom, findings: inference.Findings) -> None:
    """The node's setting: no CAM on the original slices, everything else unchanged."""
    lean = api.Analyzer(AnalysisOptions(keep_cam=False)).analyze(phantom.volume)
    assert lean.cam is None and findings.cam is not None
    assert lean.classification == findings.classification and lean.lesions == findings.lesions
    np.testing.assert_array_equal(lean.lung_labels, findings.lung_labels)

def test_algorithm_identity(findings: inference.Findings) -> None:
    assert findings.algorithm_name == "DeCoVNet"
    assert findings.algorithm_version.startswith(package_version() + "+")
    assert findings.algorithm_family is inference.AlgorithmFamily.ARTIFICIAL_INTELLIGENCE


def test_another_threshold_is_another_algorithm_version() -> None:
    """The node's result UIDs come from the version: other results must get other UIDs."""
    default = api.default_analyzer()
    other = api.Analyzer(AnalysisOptions(threshold=0.7))
    assert other.version != default.version
    assert api.Analyzer(AnalysisOptions()).version == default.version


def test_models_are_loaded_once() -> None:
    assert api.default_analyzer() is api.default_analyzer()


def test_threads_are_configurable() -> None:
    before = torch.get_num_threads()
    try:
        api.Analyzer(AnalysisOptions(threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cuda_asked_for_without_a_gpu_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        api.Analyzer(AnalysisOptions(device="cuda"))


def test_version_comes_from_the_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_version(name: str) -> str:
        seen.append(name)
        return "1.2.3"

    monkeypatch.setattr(inference.version, "version", fake_version)
    assert package_version() == "1.2.3"
    assert seen == ["decov-node"]


def test_version_falls_back_only_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(inference.version, "version", not_installed)
    assert package_version() == "0+unknown"


def test_unseparated_lungs_have_no_side_volumes() -> None:
    labels = np.zeros((2, 4, 4), dtype=np.uint8)
    labels[0, :2] = LungLabel.UNSEPARATED
    volumes = api.lung_volumes(labels, voxel_ml=0.5)
    assert volumes.right_ml is None and volumes.left_ml is None
    assert not volumes.separated
    assert volumes.total_ml == pytest.approx(4.0)


def test_no_lungs_is_not_assessable(make_phantom) -> None:
    result = inference.analyze(make_phantom(lungs=()).volume)
    assert not np.any(result.lung_labels)
    assert result.lungs.total_ml == 0.0
    assert result.classification is None and result.lesions == ()
    assert result.not_assessable is not None and "no lungs" in result.not_assessable


def test_inference_imports_neither_pydicom_nor_the_node() -> None:
    """The only bridge is the worker calling analyze(); inference must stay DICOM-free."""
    code = (
        "import sys, inference; "
        "banned = ('pydicom', 'pynetdicom', 'highdicom', 'dicomnode'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(inference.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""inference.analyze: findings, volumes, algorithm identity, and the package's import boundary."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest

import inference
import inference.version
from inference import api
from inference.version import package_version
from inference.types import LungLabel

# Fixtures (tests/inference/conftest.py): ``phantom`` and ``make_phantom``.


@pytest.fixture(scope="module")
def findings(phantom) -> inference.Findings:
    return inference.analyze(phantom.volume)


def test_findings_carry_the_labels_and_the_volumes(phantom, findings: inference.Findings) -> None:
    assert findings.lung_labels.shape == phantom.volume.hu.shape
    assert findings.lungs.separated
    assert findings.lungs.right_ml == pytest.approx(phantom.right_ml, rel=0.03)
    assert findings.lungs.left_ml == pytest.approx(phantom.left_ml, rel=0.03)
    lungs = findings.lungs
    assert lungs.total_ml == pytest.approx(lungs.right_ml + lungs.left_ml)


def test_volumes_are_voxel_counts_times_voxel_volume(phantom, findings: inference.Findings) -> None:
    right_voxels = int(np.sum(findings.lung_labels == LungLabel.RIGHT))
    assert findings.lungs.right_ml == right_voxels * phantom.volume.voxel_volume_ml


def test_algorithm_identity(findings: inference.Findings) -> None:
    assert findings.algorithm_name == "Unsupervised lung segmentation"
    assert findings.algorithm_version == package_version()
    assert findings.algorithm_family is inference.AlgorithmFamily.MORPHOLOGICAL_OPERATIONS


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


def test_no_lungs_gives_zero_volume(make_phantom) -> None:
    result = inference.analyze(make_phantom(lungs=()).volume)
    assert not np.any(result.lung_labels)
    assert result.lungs.total_ml == 0.0
    assert not result.lungs.separated


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

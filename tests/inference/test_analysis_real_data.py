"""The trained models on the real scans of ../shared/data (skipped without it, failing in CI).

- RICORD 000082 (COVID-19 positive, trained on) scores above the threshold with a lesion in
  the lungs; LIDC-IDRI-0001 and Lung-PET-CT-Dx A0002 (negatives, trained on) score below;
- the U-Net on the coarse grid stays within Dice 0.97 of running on every full-resolution slice;
- on the held-out PET/CT scan with inserted lesions, the lung mask holds >= 95 % of the lesion
  voxels (the evaluation command reports it, with the lesion hit rate);
- scans that only partly cover the chest are not assessable, with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA, require_path
from inference import api
from inference.evaluation import evaluate_inserted
from inference.lung_unet import segment_lungs_unet
from inference.metrics import dice
from inference.synth import LesionLibrary
from inference.types import CTVolume

CT = SHARED_DATA / "ct"


@pytest.fixture(scope="module")
def analyzer() -> api.Analyzer:
    return api.default_analyzer()


def test_the_covid_scan_is_positive_with_a_lesion_in_the_lungs(real_series, analyzer) -> None:
    volume = real_series("ricord1a-000082-covid")
    findings = analyzer.analyze(volume)
    assert findings.classification is not None
    assert findings.classification.positive, findings.classification
    assert findings.lesions, "a positive scan reports its lesions"
    assert findings.lesion_labels is not None
    lesion_voxels = findings.lesion_labels > 0
    assert not (lesion_voxels & (findings.lung_labels == 0)).any(), "every lesion voxel lies in the lungs"
    assert sum(lesion.primary for lesion in findings.lesions) == 1


@pytest.mark.parametrize("name", ["lidc-idri-0001", "lung-pet-ct-dx-a0002"])
def test_the_negative_scans_are_negative(real_series, analyzer, name: str) -> None:
    findings = analyzer.analyze(real_series(name))
    assert findings.classification is not None
    assert not findings.classification.positive, findings.classification
    assert findings.lesions == ()


def test_the_coarse_unet_matches_full_resolution(real_series, analyzer) -> None:
    volume = real_series("lung-pet-ct-dx-a0002")  # 30 slices: full resolution stays affordable
    fast = segment_lungs_unet(volume, analyzer.unet, analyzer.device)
    full = segment_lungs_unet(volume, analyzer.unet, analyzer.device, full_resolution=True)
    assert full.any()
    assert dice(fast > 0, full > 0) >= 0.97


def test_inserted_lesions_lie_inside_the_lung_mask_of_the_held_out_scan(analyzer) -> None:
    library = LesionLibrary.load(require_path(SHARED_DATA / "lesion-masks" / "mosmed"))
    report = evaluate_inserted(analyzer, require_path(CT / "petct-wholebody"), library, cases=2, seed=1000)
    assert report["lesion_voxels_in_lungs_min"] >= 0.95, report
    clean = report["cases"][0]
    assert clean["case"] == "clean" and clean["label"] == 0 and clean["probability"] is not None
    for key in ("roc_auc", "primary_hit_rate", "any_hit_rate", "sensitivity"):
        assert key in report


def test_the_abdomen_with_lung_bases_is_not_assessable(real_series, analyzer) -> None:
    findings = analyzer.analyze(real_series("totalseg-example/dicom"))
    assert findings.classification is None
    assert findings.not_assessable is not None


def test_lungs_cut_off_by_the_scan_are_not_assessable(real_series, analyzer) -> None:
    """The upper half of LIDC-IDRI-0001 (slices run feet to head): lungs cut at the bottom."""
    volume = real_series("lidc-idri-0001")
    half = volume.hu.shape[0] // 2
    step = np.asarray(volume.direction)[:, 2] * volume.spacing[2]
    origin = tuple(np.asarray(volume.origin) + half * step)
    upper = CTVolume(volume.hu[half:], volume.spacing, origin, volume.direction)
    findings = analyzer.analyze(upper)
    assert findings.classification is None
    assert findings.not_assessable is not None and "cut off" in findings.not_assessable

"""The analysis seen from the node: summaries for the operator, and one analyzer built from settings."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from scipy import ndimage

from dicomnode.cli import main
from dicomnode.node import Node
from dicomnode.offline import process_folder
from dicomnode.pipeline import AnalysisUnavailable, build_analyze, describe_summary, summarize
from dicomnode.settings import AnalysisSettings, Settings
from factories import PhantomSeries
from inference.options import AnalysisOptions
from inference.types import AlgorithmFamily, Classification, CTVolume, Findings, Lesion, LungLabel, LungVolumes

LUNGS = LungVolumes(right_ml=2400.04, left_ml=2199.96, total_ml=4600.0)


def findings(**fields: object) -> Findings:
    base = Findings(
        lung_labels=np.zeros((1, 1, 1), dtype=np.uint8),
        lungs=LUNGS,
        algorithm_name="DeCoVNet",
        algorithm_version="2.0",
        algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def lesion(label: int, volume_ml: float) -> Lesion:
    return Lesion(label=label, score=0.6, volume_ml=volume_ml, centre_mm=(0.0, 0.0, 0.0), mean_hu=-600.0)


# --- summaries -----------------------------------------------------------------------------


def test_summary_of_the_lung_segmentation_alone() -> None:
    summary = summarize(findings(algorithm_name="Unsupervised lung segmentation", algorithm_version="1.0"))
    assert summary == {
        "right_lung_ml": 2400.0,
        "left_lung_ml": 2200.0,
        "total_lung_ml": 4600.0,
        "algorithm": "Unsupervised lung segmentation 1.0",
        "probability": None,
        "positive": None,
        "threshold": None,
        "lesion_count": None,
        "lesion_ml": None,
        "not_assessable": None,
    }
    assert describe_summary(summary) == (
        "lungs: right 2400 ml, left 2200 ml, total 4600 ml (Unsupervised lung segmentation 1.0)"
    )


def test_summary_of_a_positive_scan() -> None:
    summary = summarize(
        findings(
            classification=Classification(probability=0.87654, threshold=0.5),
            lesions=(lesion(1, 30.04), lesion(2, 5.0)),
        )
    )
    json.dumps(summary)  # stored as JSON in the run record
    assert (summary["probability"], summary["positive"], summary["threshold"]) == (0.877, True, 0.5)
    assert (summary["lesion_count"], summary["lesion_ml"], summary["not_assessable"]) == (2, 35.0, None)
    assert describe_summary(summary) == (
        "lungs: right 2400 ml, left 2200 ml, total 4600 ml (DeCoVNet 2.0); "
        "COVID-19 positive (p 0.88, threshold 0.50); 2 lesions 35 ml"
    )


def test_summary_of_a_negative_scan_without_lesions() -> None:
    summary = summarize(findings(classification=Classification(probability=0.1, threshold=0.5)))
    assert (summary["positive"], summary["lesion_count"], summary["lesion_ml"]) == (False, 0, 0.0)
    assert describe_summary(summary).endswith("; COVID-19 negative (p 0.10, threshold 0.50); 0 lesions 0 ml")


def test_summary_of_a_scan_that_is_not_assessable() -> None:
    summary = summarize(findings(not_assessable="lungs cut off at the apex"))
    assert summary["not_assessable"] == "lungs cut off at the apex"
    assert summary["probability"] is None and summary["lesion_count"] is None
    assert describe_summary(summary).endswith("(DeCoVNet 2.0); COVID-19 not assessable: lungs cut off at the apex")


def test_records_written_before_the_classifier_still_describe() -> None:
    old = {"right_lung_ml": 2000.4, "left_lung_ml": 1800.0, "total_lung_ml": 3800.4, "algorithm": "test 1"}
    assert describe_summary(old) == "lungs: right 2000 ml, left 1800 ml, total 3800 ml (test 1)"
    assert describe_summary(None) == ""


# --- one analyzer, built from the settings -------------------------------------------------


def phantom_findings(volume: CTVolume) -> Findings:
    """Stand-in for the analysis: the phantom's lungs (air inside the body), split at the midline."""
    components, _ = ndimage.label(volume.hu < -500)
    border = np.unique(np.concatenate([components[:, [0, -1], :].ravel(), components[:, :, [0, -1]].ravel()]))
    lungs = (components > 0) & ~np.isin(components, border)
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    right = np.arange(lungs.shape[2]) < lungs.shape[2] // 2
    labels[lungs & right] = LungLabel.RIGHT
    labels[lungs & ~right] = LungLabel.LEFT
    ml = volume.voxel_volume_ml
    right_ml, left_ml = (float(np.count_nonzero(labels == side)) * ml for side in (LungLabel.RIGHT, LungLabel.LEFT))
    return Findings(
        lung_labels=labels,
        lungs=LungVolumes(right_ml, left_ml, right_ml + left_ml),
        algorithm_name="Fake DeCoVNet",
        algorithm_version="0",
        algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
        classification=Classification(probability=0.9, threshold=0.5),
    )


class FakeAnalyzer:
    """Records how it was built and how often it analysed."""

    built: ClassVar[list[AnalysisOptions]] = []

    def __init__(self, options: AnalysisOptions) -> None:
        FakeAnalyzer.built.append(options)
        self.calls = 0

    def analyze(self, volume: CTVolume) -> Findings:
        self.calls += 1
        return phantom_findings(volume)


@pytest.fixture
def fake_analyzer(monkeypatch: pytest.MonkeyPatch) -> type[FakeAnalyzer]:
    """``inference.api`` replaced for the test: the node must import ``Analyzer`` from there."""
    module = types.ModuleType("inference.api")
    module.Analyzer = FakeAnalyzer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "inference.api", module)
    monkeypatch.setattr(FakeAnalyzer, "built", [])
    return FakeAnalyzer


def test_build_analyze_passes_the_analysis_settings(fake_analyzer: type[FakeAnalyzer]) -> None:
    settings = dataclasses.replace(Settings(), analysis=AnalysisSettings(threshold=0.6, threads=2, device="cpu"))
    analyze = build_analyze(settings)
    assert fake_analyzer.built == [settings.analysis.options()]
    assert fake_analyzer.built[0].threads == 2
    assert isinstance(analyze.__self__, FakeAnalyzer)  # type: ignore[attr-defined]


def test_process_builds_one_analyzer_for_all_series(fake_analyzer: type[FakeAnalyzer], tmp_path: Path) -> None:
    PhantomSeries(slices=24).write(tmp_path / "in" / "a")
    PhantomSeries(slices=24, seed=3).write(tmp_path / "in" / "b")
    records = process_folder(tmp_path / "in", tmp_path / "out", Settings())
    assert [r["state"] for r in records] == ["done", "done"]
    assert len(fake_analyzer.built) == 1
    assert all(r["summary"]["positive"] is True and r["summary"]["lesion_count"] == 0 for r in records)


def test_process_of_nothing_to_analyse_loads_no_models(fake_analyzer: type[FakeAnalyzer], tmp_path: Path) -> None:
    PhantomSeries(slices=3).write(tmp_path / "in" / "too-short")
    assert [r["state"] for r in process_folder(tmp_path / "in", tmp_path / "out", Settings())] == ["rejected"]
    assert fake_analyzer.built == []


def test_process_takes_an_injected_analysis(fake_analyzer: type[FakeAnalyzer], tmp_path: Path) -> None:
    PhantomSeries(slices=24).write(tmp_path / "in")
    calls = []

    def analyze(volume: CTVolume) -> Findings:
        calls.append(volume.hu.shape)
        return phantom_findings(volume)

    (record,) = process_folder(tmp_path / "in", tmp_path / "out", Settings(), analyze)
    assert record["state"] == "done" and len(calls) == 1 and fake_analyzer.built == []


def test_node_builds_its_analyzer_once_from_settings(fake_analyzer: type[FakeAnalyzer], tmp_path: Path) -> None:
    defaults = Settings()
    settings = dataclasses.replace(
        defaults,
        storage=dataclasses.replace(defaults.storage, state_dir=tmp_path / "state"),
        analysis=AnalysisSettings(threshold=0.4),
    )
    node = Node(settings)
    try:
        assert [options.threshold for options in fake_analyzer.built] == [0.4]
        assert isinstance(node.analyze.__self__, FakeAnalyzer)  # type: ignore[attr-defined]
    finally:
        node.state.db.close()
    injected = Node(settings, analyze=phantom_findings)
    try:
        assert injected.analyze is phantom_findings and len(fake_analyzer.built) == 1
    finally:
        injected.state.db.close()


def test_an_analysis_that_cannot_start_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing weights: the command says so in one line and fails, instead of a traceback."""
    class MissingWeights:
        def __init__(self, options: AnalysisOptions) -> None:
            raise RuntimeError(f"{options.weights_dir}/lung_unet.pt: weights not found")

    module = types.ModuleType("inference.api")
    module.Analyzer = MissingWeights  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "inference.api", module)
    with pytest.raises(AnalysisUnavailable, match="RuntimeError: .*lung_unet.pt: weights not found"):
        build_analyze(Settings())
    PhantomSeries(slices=24).write(tmp_path / "in")
    assert main(["process", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    assert "error: the analysis cannot start: RuntimeError: " in capsys.readouterr().err

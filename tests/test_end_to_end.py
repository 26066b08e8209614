"""The node as operators run it: `dicomnode serve` in its own process, real peers around it.

dcmtk storescu plays the scanner, dcmtk storescp and Orthanc are the destinations, dciodvfy
validates what comes back, and highdicom reads it. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from conftest import free_port, require_path
from factories import PhantomSeries
from peers import NODE_READY_TIMEOUT, OrthancPACS, Process, StoreSCP, dciodvfy_errors, echo_ok, storescu, wait_until

NODE_AET = "DECOVNODE"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class NodeProcess(Process):
    """`python -m dicomnode serve` with command-line overrides, as an operator or a test starts it."""

    def __init__(self, state_dir: Path, port: int, destinations: list[str], quiet: float = 2.0):
        self.port = port
        self.state_dir = state_dir
        command = [sys.executable, "-m", "dicomnode", "serve", "--aet", NODE_AET, "--port", str(port)]
        command += ["--state-dir", str(state_dir), "--quiet-seconds", str(quiet)]
        for destination in destinations:
            command += ["--destination", destination]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        state_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(command, state_dir.parent / f"node-{port}.log", env=env)
        wait_until(lambda: echo_ok(NODE_AET, port) or not self.alive(), NODE_READY_TIMEOUT, what="the node to answer C-ECHO")
        if not self.alive():
            raise AssertionError("the node exited:\n" + self.output())

    def status(self) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "dicomnode", "status", "--state-dir", str(self.state_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def results_by_series(directory: Path) -> dict[str, dict[str, pydicom.Dataset]]:
    """SEG and SR files a destination received, by the source series they describe."""
    found: dict[str, dict[str, pydicom.Dataset]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".log")):
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID == SEG:
            source = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
            found.setdefault(source, {})["seg"] = ds
        elif ds.SOPClassUID == COMPREHENSIVE_3D_SR:
            source = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            series = {item.SeriesInstanceUID for item in source}
            for uid in series:
                found.setdefault(uid, {})["sr"] = ds
            found.setdefault("_paths", {})[path.name] = ds
    return found


def lung_volumes_ml(sr: pydicom.Dataset) -> dict[str, float]:
    """Volume measurements of a TID 1500 report by tracking identifier (read with pydicom alone)."""
    volumes = {}
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in container.ContentSequence:  # Measurement Group (125007)
            items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
            if "112039" in items and "118565006" in items:  # Tracking Identifier, Volume
                value = items["118565006"].MeasuredValueSequence[0]
                assert value.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
                volumes[items["112039"].TextValue] = float(value.NumericValue)
    return volumes


PROBABILITY = "122157"  # DCM "Probability"


def numeric_value(sr: pydicom.Dataset, concept: str) -> float:
    """The first numeric item named ``concept`` anywhere in the report's content tree."""
    pending = list(sr.ContentSequence)
    while pending:
        item = pending.pop(0)
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == concept:
            return float(item.MeasuredValueSequence[0].NumericValue)
        pending.extend(getattr(item, "ContentSequence", []))
    raise AssertionError(f"no numeric item {concept} in the report")


@pytest.fixture
def peers(tmp_path: Path):
    node_port = free_port()
    storescp = StoreSCP(tmp_path / "storescp", aet="RESULTS")
    orthanc = OrthancPACS(tmp_path / "orthanc", node_aet=NODE_AET, node_port=node_port)
    yield node_port, storescp, orthanc
    orthanc.stop()
    storescp.stop()


def destinations(storescp: StoreSCP, orthanc: OrthancPACS) -> list[str]:
    return [f"RESULTS@127.0.0.1:{storescp.port}", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"]


def test_real_chest_ct_series_come_back_as_seg_and_sr(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    """LIDC (explicit LE) and RICORD (JPEG lossless) in, one SEG + one SR per series out, twice:
    RICORD (COVID-19) positive with lesion segments, LIDC negative without."""
    lidc = require_path(Path(__file__).resolve().parents[1].parent / "shared/data/ct/lidc-idri-0001")
    ricord = require_path(lidc.parent / "ricord1a-000082-covid")
    node_port, storescp, orthanc = peers
    node = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc))
    try:
        storescu(lidc, NODE_AET, node_port, calling="SCANNER")
        storescu(ricord, NODE_AET, node_port, calling="SCANNER")
        wait_until(lambda: len(storescp.files()) >= 4, 600, 1.0, "4 results at storescp")
        wait_until(lambda: node.status()["outbox"]["pending"] == 0, 120, 1.0, "the outbox to drain")
        status = node.status()
    finally:
        node.stop()
    assert status["jobs"]["done"] == 2 and status["jobs"]["failed"] == 0, status
    assert status["outbox"] == {"pending": 0, "sent": 8, "failed": 0}

    received = results_by_series(storescp.directory)
    sources = {pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True).SeriesInstanceUID for d in (lidc, ricord)}
    covid_series = pydicom.dcmread(next(ricord.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert sources <= set(received)
    assert len(storescp.files()) == 4  # exactly one SEG and one SR per series
    for path in storescp.files():
        assert dciodvfy_errors(path) == [], path
    for source in sources:
        seg, sr = received[source]["seg"], received[source]["sr"]
        segmentation = hd.seg.Segmentation.from_dataset(seg)
        labels = {segmentation.get_segment_description(n).SegmentLabel for n in segmentation.segment_numbers}
        lesions = {label for label in labels if label.startswith("Lesion")}
        assert labels - lesions == {"Right lung", "Left lung"}
        volumes = lung_volumes_ml(sr)
        for lung in ("Right lung", "Left lung"):
            assert 1000 <= volumes[lung] <= 4000, (source, volumes)
        assert sr.StudyInstanceUID == seg.StudyInstanceUID
        probability = numeric_value(sr, PROBABILITY)
        if source == covid_series:
            assert probability >= 0.5 and lesions, (probability, labels)
        else:
            assert probability < 0.5 and not lesions, (probability, labels)

    # Orthanc filed both objects of each series in the study of the source series.
    pacs_series = [orthanc.get(f"/series/{s}") for s in orthanc.get("/series")]
    by_modality = sorted(s["MainDicomTags"]["Modality"] for s in pacs_series)
    assert by_modality == ["SEG", "SEG", "SR", "SR"]
    for study_id in {s["ParentStudy"] for s in pacs_series}:
        study = orthanc.get(f"/studies/{study_id}")
        modalities = sorted(orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in study["Series"])
        assert modalities == ["SEG", "SR"]


def test_bad_input_in_one_association_loses_nothing_else(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    """Two series interleaved with a 3-slice series, a series with a hole and a non-CT object,
    all in one association: each bad one is logged with its reason, the good ones come back."""
    node_port, storescp, orthanc = peers
    folder = tmp_path / "study"
    good_a = PhantomSeries(seed=1)
    good_b = PhantomSeries(seed=2, study_uid=good_a.study_uid)
    tiny, holed = PhantomSeries(slices=3, seed=3), PhantomSeries(missing=(20,), seed=4)
    files_a, files_b = good_a.write(folder / "a"), good_b.write(folder / "b")
    interleaved = [f for pair in zip(files_a, files_b) for f in pair]
    other = pydicom.dcmread(files_a[0])
    other.SOPClassUID = other.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    other_path = folder / "secondary-capture.dcm"
    other.save_as(other_path)
    sent = interleaved + tiny.write(folder / "tiny") + holed.write(folder / "holed") + [other_path]

    node = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc))
    try:
        result = storescu(sent, NODE_AET, node_port, calling="SCANNER")
        assert result.stderr.count("Received Store Response (Success)") == len(sent)
        wait_until(lambda: len(storescp.files()) >= 4, 300, 1.0, "results of the two good series")
        wait_until(lambda: node.status()["jobs"]["rejected"] == 2, 60, 1.0, "two rejections")
        assert echo_ok(NODE_AET, node_port)  # still serving
        status = node.status()
    finally:
        node.stop()
    log = node.output()
    assert f"series {tiny.series_uid} (3 instances) not analysed: minimum slices: 3 slices, at least 20 needed" in log
    assert f"series {holed.series_uid} (39 instances) not analysed: no missing slices" in log
    assert "acknowledged and dropped Secondary Capture Image Storage" in log
    assert status["jobs"]["done"] == 2
    assert set(results_by_series(storescp.directory)) >= {good_a.series_uid, good_b.series_uid}
    assert "Phantom^Chest" not in log and "PHANTOM-001" not in log  # no patient identifiers in the log


def test_results_arrive_after_the_node_is_killed_and_restarted(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    node_port, storescp, orthanc = peers
    series = PhantomSeries(seed=7)
    files = series.write(tmp_path / "series")
    node = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc), quiet=5.0)
    result = storescu(files, NODE_AET, node_port, calling="SCANNER")
    assert result.stderr.count("Received Store Response (Success)") == len(files)
    node.stop(signal.SIGKILL)  # inside the quiet period: nothing was processed yet
    assert node.popen.returncode == -signal.SIGKILL
    assert not list(storescp.directory.iterdir())

    restarted = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc), quiet=5.0)
    try:
        wait_until(lambda: len(storescp.files()) >= 2, 300, 1.0, "results after the restart")
        wait_until(lambda: restarted.status()["outbox"]["pending"] == 0, 60, 1.0, "the outbox to drain")
    finally:
        restarted.stop()
    assert set(results_by_series(storescp.directory)) >= {series.series_uid}
    assert len(storescp.files()) == 2

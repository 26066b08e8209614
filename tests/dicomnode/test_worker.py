"""The worker on a real spool: success fills the outbox; failures are bounded and recorded."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.assembly import Assembler
from dicomnode.jobs.worker import Worker
from dicomnode.node import State
from dicomnode.settings import Delivery, FolderDestination, Settings
from factories import PhantomSeries
from receivers import store_series
from inference import CTVolume, Findings, analyze
from inference.types import AlgorithmFamily, LungVolumes


def settings_for(tmp_path: Path) -> Settings:
    defaults = Settings()
    return dataclasses.replace(
        defaults,
        storage=dataclasses.replace(defaults.storage, state_dir=tmp_path / "state", min_free_mb=0),
        assembly=dataclasses.replace(defaults.assembly, quiet_seconds=0),
        jobs=dataclasses.replace(defaults.jobs, max_attempts=3, retry_delay_seconds=0),
        destinations=(
            FolderDestination(name="a", path=tmp_path / "a"),
            FolderDestination(name="b", path=tmp_path / "b", delivery=Delivery(objects=("seg", "sr"), seg_type="labelmap")),
        ),
    )


def queued_job(state: State, settings: Settings, series: PhantomSeries) -> None:
    store_series(state.spool, state.index, series)
    assert Assembler(state.index, state.spool, state.queue, settings).run_once(now=1e12) == 1


def jobs(state: State) -> list[dict]:
    return [dict(r) for r in state.db.query("SELECT * FROM jobs ORDER BY id")]


SEGMENTATION, LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"
COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def test_a_job_is_analysed_and_each_destination_gets_what_it_asked_for(tmp_path: Path) -> None:
    """Destination a takes everything (BINARY SEG, its SR, key images); b a LABELMAP SEG and
    the SR that references it."""
    settings = settings_for(tmp_path)
    state = State.open(settings)
    queued_job(state, settings, PhantomSeries())
    worker = Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, analyze)
    assert worker.run_once() is not None
    (job,) = jobs(state)
    assert job["state"] == "done" and job["attempts"] == 1 and job["reason"] is None
    rows = state.db.query("SELECT destination, path FROM outbox ORDER BY destination, path")
    received: dict[str, list[pydicom.Dataset]] = {}
    for row in rows:
        received.setdefault(row["destination"], []).append(pydicom.dcmread(state.layout.outbox / row["path"]))
    classes = {name: sorted(str(ds.SOPClassUID) for ds in datasets) for name, datasets in received.items()}
    assert classes == {
        "a": sorted([SEGMENTATION, COMPREHENSIVE_3D_SR, *[SECONDARY_CAPTURE] * settings.encoding.key_image_count]),
        "b": sorted([LABEL_MAP_SEGMENTATION, COMPREHENSIVE_3D_SR]),
    }
    for datasets in received.values():
        (seg,) = [ds for ds in datasets if ds.Modality == "SEG"]
        (sr,) = [ds for ds in datasets if ds.Modality == "SR"]
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence  # evidence is listed
        referenced = {
            item.ReferencedSOPInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert seg.SOPInstanceUID in referenced  # each report cites the SEG its destination gets
    assert worker.run_once() is None  # nothing else to do


def test_a_job_that_raises_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    state = State.open(settings)
    queued_job(state, settings, PhantomSeries())
    calls = []

    def broken(volume: CTVolume) -> Findings:
        calls.append(volume.hu.shape)
        raise MemoryError("out of memory in the analysis")

    worker = Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, broken)
    for attempt in (1, 2):
        worker.run_once()
        assert jobs(state)[0]["state"] == "pending", attempt
    worker.run_once()
    (job,) = jobs(state)
    assert len(calls) == 3 and job["attempts"] == 3
    assert job["state"] == "failed" and job["reason"] == "MemoryError: out of memory in the analysis"
    assert worker.run_once() is None
    assert state.db.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0


def test_input_that_can_never_be_analysed_fails_at_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    state = State.open(settings)
    queued_job(state, settings, PhantomSeries())
    victim = state.spool.absolute(state.spool.files()[0])
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:100]  # damaged on disk after it was received
    ds.save_as(victim)
    worker = Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, analyze)
    worker.run_once()
    (job,) = jobs(state)
    assert job["state"] == "failed" and job["attempts"] == 1
    assert job["reason"].startswith("VolumeError: ") and "cannot be decoded" in job["reason"]


def texts_of(item: pydicom.Dataset) -> list[str]:
    """Every TEXT value in an SR content tree."""
    own = [item.TextValue] if item.get("ValueType") == "TEXT" else []
    return own + [text for child in item.get("ContentSequence", []) for text in texts_of(child)]


def test_a_volume_without_lungs_is_reported_not_assessable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No lungs: the job is done and sends an SR (no SEG: nothing to segment) with the reason, and
    key images that say it, to the destination that takes them."""
    settings = settings_for(tmp_path)
    state = State.open(settings)

    class SolidPhantom(PhantomSeries):
        def hu(self):  # type: ignore[no-untyped-def]
            volume = super().hu()
            volume[volume < -500] = 40.0  # soft tissue everywhere: no air, no lung
            return volume

    reason = "no lungs found (not a chest CT, or the lungs are outside the field of view)"

    def no_lungs(volume: CTVolume) -> Findings:  # what inference.api.Analyzer returns for such a scan
        return Findings(
            lung_labels=np.zeros(volume.hu.shape, dtype=np.uint8),
            lungs=LungVolumes(right_ml=None, left_ml=None, total_ml=0.0),
            algorithm_name="DeCoVNet",
            algorithm_version="test",
            algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
            not_assessable=reason,
        )

    queued_job(state, settings, SolidPhantom())
    caplog.set_level(logging.INFO)
    Worker(state.db, state.queue, state.index, state.spool, state.outbox, settings, no_lungs).run_once()
    (job,) = jobs(state)
    assert job["state"] == "done" and job["attempts"] == 1 and job["reason"] is None
    assert json.loads(job["summary"])["not_assessable"] == reason
    rows = state.db.query("SELECT destination, path FROM outbox ORDER BY destination, path")
    received = [(r["destination"], pydicom.dcmread(state.layout.outbox / r["path"])) for r in rows]
    reports = [(name, ds) for name, ds in received if ds.Modality == "SR"]
    assert [name for name, _ in reports] == ["a", "b"]  # one report, the same for both SEG encodings
    assert reports[0][1].SOPInstanceUID == reports[1][1].SOPInstanceUID
    assert f"Not assessable: {reason}" in texts_of(reports[0][1])
    key_images = [ds for name, ds in received if ds.Modality != "SR"]
    assert len(key_images) == settings.encoding.key_image_count and {name for name, ds in received if ds.Modality != "SR"} == {"a"}
    assert all(f"not assessable ({reason})" in ds.ImageComments for ds in key_images)
    assert reason in caplog.text

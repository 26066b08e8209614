"""The dicomnode command in-process: process, echo, status."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from conftest import free_port
from dicomnode.cli import main
from dicomnode.settings import Settings
from factories import PhantomSeries
from peers import StoreSCP, dciodvfy_errors

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_process_writes_a_valid_seg_sr_and_key_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = PhantomSeries()
    series.write(tmp_path / "in" / "series")
    PhantomSeries(slices=3).write(tmp_path / "in" / "too-short")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    assert main(["process", str(tmp_path / "in"), "--out", str(out)]) == 1  # one series was rejected
    records = {r["series_uid"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    done = records[series.series_uid]
    assert done["state"] == "done" and done["instances"] == 40
    assert done["summary"]["right_lung_ml"] > 0 and done["summary"]["left_lung_ml"] > 0
    rejected = [r for r in records.values() if r["state"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["reason"].startswith("minimum slices")
    written = [pydicom.dcmread(p) for p in done["files"]]
    key_images = [SECONDARY_CAPTURE] * Settings().encoding.key_image_count
    assert sorted(ds.SOPClassUID for ds in written) == sorted([SEG, COMPREHENSIVE_3D_SR, *key_images])
    for path in done["files"]:
        assert Path(path).is_relative_to(out)
        assert dciodvfy_errors(Path(path)) == [], path


def test_process_of_a_folder_without_series_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["process", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert main(["process", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1


def test_echo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    peer = StoreSCP(tmp_path / "scp", aet="PEER")
    try:
        assert main(["echo", f"PEER@127.0.0.1:{peer.port}"]) == 0
        assert "status 0x0000" in capsys.readouterr().out
    finally:
        peer.stop()
    assert main(["echo", f"PEER@127.0.0.1:{free_port()}"]) == 1
    assert main(["echo", "not-a-peer"]) == 2


def test_status_of_a_missing_state_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(tmp_path / "nothing")]) == 1
    assert "no node state" in capsys.readouterr().err


def test_status_lists_runs_with_their_lung_volumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicomnode.db import Database
    from dicomnode.jobs import JobQueue
    from dicomnode.layout import StateLayout
    from dicomnode.spool import QuietSeries

    layout = StateLayout(tmp_path / "state")
    layout.create()
    db = Database(layout.database)
    with db.transaction() as sql:
        sql.execute("INSERT INTO series (series_uid, study_uid, last_received_at) VALUES ('1.2.3', '1.2', 5)")
    queue = JobQueue(db)
    queue.submit(QuietSeries("1.2.3", "1.2", 5.0), ["1.2.3.1", "1.2.3.2"], None, 10.0, 60.0)
    job = queue.claim(10.0)
    summary = {"right_lung_ml": 2000.4, "left_lung_ml": 1800.0, "total_lung_ml": 3800.4, "algorithm": "test 1"}
    with db.transaction() as sql:
        queue.mark_done(sql, job, summary, 11.0, 60.0)
    db.close()
    assert main(["status", "--state-dir", str(layout.root)]) == 0
    out = capsys.readouterr().out
    assert "series runs: rejected 0, pending 0, running 0, done 1, failed 0" in out
    assert "lungs: right 2000 ml, left 1800 ml, total 3800 ml (test 1)" in out
    assert main(["status", "--state-dir", str(layout.root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recent"][0]["summary"] == summary and report["recent"][0]["instances"] == 2

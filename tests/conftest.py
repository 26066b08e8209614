"""Shared fixtures: the real data folder, free ports, dcmtk tools, synthetic series."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from factories import PhantomSeries

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def require_path(path: Path) -> Path:
    """Skip when real data is absent (a user's fresh clone); fail in CI, where it must run."""
    if not path.exists():
        message = f"{path} is absent (the real test data lives in ../shared/data)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test")
        pytest.skip(message)
    return path


def require_tool(path: str) -> str:
    """Skip when a real peer tool is not installed; fail in CI, where .ci/run installs it."""
    if shutil.which(path) is None:
        message = f"{path} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def shared_data() -> Path:
    return require_path(SHARED_DATA)


@pytest.fixture
def phantom_dir(tmp_path: Path) -> Path:
    """A 40-slice synthetic chest CT series on disk."""
    directory = tmp_path / "phantom"
    PhantomSeries().write(directory)
    return directory


@pytest.fixture(autouse=True)
def _dcmtk_without_nagle(monkeypatch: pytest.MonkeyPatch) -> None:
    """dcmtk stalls ~50 ms per file on loopback unless TCP_NODELAY is set."""
    monkeypatch.setenv("TCP_NODELAY", "1")

"""The systemd unit is hardened as the README promises, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import require_tool
from dicomnode.cli import _parser
from figures import record_figures

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dicomnode.service"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
#: systemd's own scale, 0 (locked down) to 10; it calls anything under 2 "OK".
MAX_EXPOSURE = 2.0


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key].append(value)
    return sections


def test_service_is_hardened() -> None:
    service = read_unit(UNIT)["Service"]
    expected = {
        "User": "dicomnode",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "dicomnode",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service[key] == [value], key
    assert "ReadWritePaths" not in service  # the state directory is the only writable path


def test_service_runs_existing_commands_on_the_state_directory() -> None:
    service = read_unit(UNIT)["Service"]
    (start,) = service["ExecStart"]
    (check,) = service["ExecStartPre"]
    assert service["WorkingDirectory"] == ["/var/lib/dicomnode"]
    for command_line in (start, check):
        program, *arguments = command_line.split()
        assert program.endswith("/bin/dicomnode")
        _parser().parse_args(arguments)  # raises SystemExit if the unit's arguments are wrong


def test_sysusers_creates_the_service_user() -> None:
    line = (UNIT.parent / "dicomnode.sysusers.conf").read_text().splitlines()[-1].split()
    assert line[:2] == ["u", "dicomnode"]


def installed_unit(directory: Path) -> Path:
    """The unit as installed next to this checkout: its commands point at this venv's dicomnode
    (``systemd-analyze verify`` checks that they exist and are executable)."""
    unit = directory / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/decov-node/.venv/bin/", f"{Path(sys.executable).parent}/"))
    return unit


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    require_tool(SYSTEMD_ANALYZE)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(installed_unit(tmp_path))], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr


def test_systemd_rates_the_unit_exposure_ok(tmp_path: Path) -> None:
    """``systemd-analyze security`` scores what a compromised node could do (0 to 10)."""
    require_tool(SYSTEMD_ANALYZE)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(installed_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for dicomnode.service: ([0-9.]+) (\w+)", result.stdout)
    assert match is not None, result.stdout[-2000:] + result.stderr
    exposure = float(match[1])
    record_figures("systemd", exposure=exposure, rating=match[2])
    assert exposure < MAX_EXPOSURE, result.stdout

"""The systemd unit is hardened as the README promises, and its commands exist."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dicomnode.cli import _parser

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dicomnode.service"


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

"""Configuration: the shipped default works as is; bad values fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.settings import (
    AnalysisSettings,
    ConfigError,
    Delivery,
    DicomDestination,
    FolderDestination,
    load_settings,
    settings_from_dict,
    with_overrides,
)
from inference.options import SHIPPED_WEIGHTS, AnalysisOptions


def test_default_configuration_listens_on_11112_and_writes_to_a_folder() -> None:
    settings = load_settings()
    assert settings.node.port == 11112
    assert settings.node.ae_title == "DECOVNODE"
    assert [type(d) for d in settings.destinations] == [FolderDestination]
    assert settings.destinations[0].path == Path.cwd() / "dicomnode-results"


_PEER = {"type": "dicom", "ae_title": "P", "host": "h", "port": 1}


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"node": {"port": "abc"}}, "node.port"),
        ({"node": {"port": 70000}}, "node.port"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title"),
        ({"node": {"ae_title": "BAD\\AET"}}, "node.ae_title"),
        ({"node": {"allowed_calling_ae_titles": ["OK", ""]}}, "node.allowed_calling_ae_titles[1]"),
        ({"node": {"prot": 11112}}, "node.prot"),
        ({"node": {"allowed_peer_addresses": ["10.0.0.0/33"]}}, "node.allowed_peer_addresses[0]"),
        ({"node": {"allowed_peer_addresses": ["::1", "10.1.2.3/8"]}}, "node.allowed_peer_addresses[1]"),
        ({"node": {"allowed_peer_addresses": ["pacs.example.org"]}}, "node.allowed_peer_addresses[0]"),
        ({"node": {"allowed_peer_addresses": "10.0.0.0/8"}}, "node.allowed_peer_addresses"),
        ({"node": {"tls_certificate": "/nonexistent/node.crt"}}, "node.tls_certificate"),
        ({"node": {"tls_ca_certificates": 3}}, "node.tls_ca_certificates"),
        ({"destinations": [{**_PEER, "tls": "yes"}]}, "destinations[0].tls"),
        ({"destinations": [{**_PEER, "tls_certificate": "/a.crt"}]}, "destinations[0].tls_certificate"),  # tls unset
        ({"destinations": [{**_PEER, "tls": True, "tls_ca_certificates": "/nonexistent/ca.crt"}]},
         "destinations[0].tls_ca_certificates"),
        ({"destinations": [{**_PEER, "tls": True, "tls_server_name": 3}]}, "destinations[0].tls_server_name"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "tls": True}]}, "destinations[0].tls"),
        ({"storage": {"min_free_mb": -1}}, "storage.min_free_mb"),
        ({"assembly": {"require_original": "yes"}}, "assembly.require_original"),
        ({"encoding": {"uid_root": "1.2.3"}}, "encoding.uid_root"),
        ({"encoding": {"uid_root": "1." * 20}}, "encoding.uid_root"),
        ({"destinations": [{"type": "dicom", "ae_title": "PACS", "host": "h"}]}, "destinations[0].port"),
        ({"destinations": [{"type": "ftp"}]}, "destinations[0].type"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "objects": ["seg", "pdf"]}]}, "destinations[0].objects[1]"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "objects": []}]}, "destinations[0].objects"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "objects": ["sr", "sr"]}]}, "destinations[0].objects"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "objects": "seg"}]}, "destinations[0].objects"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "seg_type": "bitmap"}]}, "destinations[0].seg_type"),
        ({"destinations": [{"type": "folder", "path": "/tmp/a", "segtype": "binary"}]}, "destinations[0].segtype"),
        ({"encoding": {"omit_empty_frames": "no"}}, "encoding.omit_empty_frames"),
        ({"encoding": {"key_image_count": 0}}, "encoding.key_image_count"),
        ({"encoding": {"key_image_disclaimer": "x" * 201}}, "encoding.key_image_disclaimer"),
        ({"logging": {"level": "LOUD"}}, "logging.level"),
        ({"analysis": {"threshold": 0}}, "analysis.threshold"),
        ({"analysis": {"threshold": 1.0}}, "analysis.threshold"),
        ({"analysis": {"threshold": 1.5}}, "analysis.threshold"),
        ({"analysis": {"threshold": "0.5"}}, "analysis.threshold"),
        ({"analysis": {"min_lesion_score": 1.2}}, "analysis.min_lesion_score"),
        ({"analysis": {"threads": -1}}, "analysis.threads"),
        ({"analysis": {"threads": 2.5}}, "analysis.threads"),
        ({"analysis": {"device": "gpu"}}, "analysis.device"),
        ({"analysis": {"weights_dir": 3}}, "analysis.weights_dir"),
        ({"analysis": {"treshold": 0.5}}, "analysis.treshold"),
        ({"nodes": {}}, "nodes"),
    ],
)
def test_bad_values_name_the_key(document: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(document)
    assert str(caught.value).startswith(key + ":") or str(caught.value).startswith(key + " ")


def test_each_destination_says_what_it_receives() -> None:
    settings = settings_from_dict(
        {
            "destinations": [
                {"type": "folder", "name": "all", "path": "/tmp/a"},
                {"type": "dicom", "name": "viewer", "ae_title": "V", "host": "h", "port": 1, "objects": ["seg", "sr"],
                 "seg_type": "labelmap"},
                {"type": "folder", "name": "pictures", "path": "/tmp/b", "objects": ["key-images"]},
            ]
        }
    )
    everything, viewer, pictures = (d.delivery for d in settings.destinations)
    assert everything == Delivery(objects=("seg", "sr", "key-images"), seg_type="binary")
    assert viewer == Delivery(objects=("seg", "sr"), seg_type="labelmap")
    assert viewer.wants("seg", "labelmap") and viewer.wants("sr", "labelmap") and viewer.wants("sr", None)
    assert not viewer.wants("seg", "binary") and not viewer.wants("key-images", None)
    assert pictures.wants("key-images", None) and not pictures.wants("sr", None)


def test_duplicate_destination_names_are_refused() -> None:
    folder = {"type": "folder", "name": "x", "path": "/tmp/a"}
    with pytest.raises(ConfigError, match="used twice"):
        settings_from_dict({"destinations": [folder, folder]})


def test_command_line_overrides_replace_destinations(tmp_path: Path) -> None:
    settings = with_overrides(
        load_settings(),
        ae_title="NODE2",
        port=4000,
        state_dir=tmp_path / "state",
        quiet_seconds=2,
        destinations=["PACS@127.0.0.1:4242"],
        output_dir=tmp_path / "out",
    )
    assert settings.node.ae_title == "NODE2" and settings.node.port == 4000
    assert settings.storage.state_dir == tmp_path / "state"
    assert settings.assembly.quiet_seconds == 2
    assert settings.destinations == (
        DicomDestination(name="PACS@127.0.0.1:4242", ae_title="PACS", host="127.0.0.1", port=4242),
        FolderDestination(name="output-dir", path=tmp_path / "out"),
    )


def test_malformed_destination_argument() -> None:
    with pytest.raises(ConfigError, match="AET@HOST:PORT"):
        with_overrides(load_settings(), destinations=["PACS-127.0.0.1-4242"])


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 0\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "node.port: must be an integer from 1 to 65535, got 0" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\n")
    assert main(["check-config", "--config", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_analysis_defaults_use_the_shipped_weights() -> None:
    settings = load_settings()
    assert settings.analysis == AnalysisSettings()
    assert settings.analysis.options() == AnalysisOptions(
        threshold=0.5, min_lesion_score=0.3, threads=None, device="auto", weights_dir=SHIPPED_WEIGHTS, keep_cam=False
    )  # the node writes no CAM


def test_analysis_settings_become_analysis_options() -> None:
    settings = settings_from_dict(
        {
            "analysis": {
                "threshold": 0.7,
                "min_lesion_score": 0,
                "threads": 4,
                "device": "cpu",
                "weights_dir": "site-weights",
            }
        }
    )
    assert settings.analysis.options() == AnalysisOptions(
        threshold=0.7, min_lesion_score=0.0, threads=4, device="cpu", weights_dir=Path.cwd() / "site-weights", keep_cam=False
    )


def test_bad_threshold_message_names_the_key_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"^analysis\.threshold: must be a number strictly between 0 and 1, got 1$"):
        settings_from_dict({"analysis": {"threshold": 1}})

"""Access to the node: the peer address allow-list, and DICOM over TLS in both directions.

Real peers only: dcmtk's storescu/echoscu/storescp with their TLS options, and certificates the
test makes with the openssl command line (a CA that signs the node's and the peers' certificates,
and a rogue CA that signs impostors'). The node's receiver runs in process, its sender works
through a real outbox.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import require_tool
from dicomnode.settings import (
    ConfigError,
    DicomDestination,
    NodeSettings,
    TlsClient,
    settings_from_dict,
)
from factories import PhantomSeries
from figures import record_figures
from peers import StoreSCP, echo_ok, storescu, wait_until
from receivers import RunningReceiver, start_in_process
from senders import Node

OPENSSL = "/usr/bin/openssl"
NODE = "TLSNODE"


# --- certificates --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """PEM files in one folder: ``ca``, ``server``, ``client`` (signed by ``ca``) and ``rogue-ca``,
    ``rogue-server``, ``rogue-client`` (signed by ``rogue-ca``). Servers carry 127.0.0.1 and localhost."""

    directory: Path

    def crt(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def dcmtk(self, name: str | None, ca: str = "ca") -> list[str]:
        """dcmtk's TLS options: present ``name``'s certificate (anonymous TLS when None), trust ``ca``."""
        identity = ["+tla"] if name is None else ["+tls", str(self.key(name)), str(self.crt(name))]
        return [*identity, "+cf", str(self.crt(ca))]


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=directory, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.crt", "-days", "2", "-subj", f"/CN=decov-node test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _make_leaf(directory: Path, name: str, ca: str, usage: str) -> None:
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(directory, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", extensions.name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_tool(OPENSSL)
    directory = tmp_path_factory.mktemp("pki")
    for prefix in ("", "rogue-"):
        _make_ca(directory, f"{prefix}ca")
        _make_leaf(directory, f"{prefix}server", f"{prefix}ca", "serverAuth")
        _make_leaf(directory, f"{prefix}client", f"{prefix}ca", "clientAuth")
    return Pki(directory)


# --- the receiver --------------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., RunningReceiver]]:
    """Start the node's receiver with the given NodeSettings fields; every one is shut down at the end."""
    servers = []

    def start(**node: object) -> RunningReceiver:
        running, server = start_in_process(tmp_path, ae_title=NODE, **node)
        servers.append(server)
        return running

    yield start
    for server in servers:
        server.shutdown()


def tls_node(pki: Pki, mutual: bool = False) -> dict[str, object]:
    """NodeSettings fields of a TLS receiver (mutual: clients need a certificate signed by ``ca``)."""
    fields: dict[str, object] = {"tls_certificate": pki.crt("server"), "tls_private_key": pki.key("server")}
    if mutual:
        fields["tls_ca_certificates"] = pki.crt("ca")
    return fields


def echo_from(address: str, port: int) -> bool:
    """C-ECHO the node from a given loopback address (echoscu cannot choose its own)."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title=NODE, bind_address=(address, 0))
    if not association.is_established:
        return False
    try:
        return int(association.send_c_echo().get("Status", -1)) == 0x0000
    finally:
        association.release()


# --- peer address allow-list ---------------------------------------------------------------


def test_a_peer_outside_the_allow_list_is_closed_and_the_node_serves_on(
    receiver: Callable[..., RunningReceiver], phantom_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Loopback is 127.0.0.0/8: the node allows 10.0.0.0/8 and 127.0.0.2 only, so 127.0.0.1 is
    refused and 127.0.0.2 is served by the same running node afterwards."""
    node = receiver(allowed_peer_addresses=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.2")))
    with caplog.at_level(logging.WARNING, logger="dicomnode.net"):
        assert not echo_ok(NODE, node.settings.port)
        refused = storescu(phantom_dir, NODE, node.settings.port, check=False)
    assert refused.returncode != 0
    assert "connection from 127.0.0.1 closed: address not in node.allowed_peer_addresses" in caplog.text
    assert "association from" not in caplog.text  # closed before any association
    assert node.indexed() == 0
    assert echo_from("127.0.0.2", node.settings.port)


def test_an_allowed_peer_is_served(receiver: Callable[..., RunningReceiver], phantom_dir: Path) -> None:
    node = receiver(allowed_peer_addresses=(ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("::1")))
    assert echo_ok(NODE, node.settings.port)
    storescu(phantom_dir, NODE, node.settings.port)
    assert node.indexed() == 40
    assert not echo_from("127.0.0.2", node.settings.port)


def test_a_dual_stack_node_sees_ipv4_peers_as_ipv4(receiver: Callable[..., RunningReceiver]) -> None:
    """Bound to "::", the socket reports 127.0.0.1 as ::ffff:127.0.0.1: still 127.0.0.1/32."""
    dual = receiver(bind_address="::", allowed_peer_addresses=(ipaddress.ip_network("127.0.0.1/32"),))
    assert echo_ok(NODE, dual.settings.port)
    assert not echo_from("127.0.0.2", dual.settings.port)


# --- receiving over TLS --------------------------------------------------------------------


def test_a_series_arrives_over_tls(receiver: Callable[..., RunningReceiver], pki: Pki, phantom_dir: Path) -> None:
    node = receiver(**tls_node(pki))
    storescu(phantom_dir, NODE, node.settings.port, options=pki.dcmtk("client"))
    assert node.indexed() == 40
    assert echo_ok(NODE, node.settings.port, pki.dcmtk(None))  # no client certificate needed without a CA
    assert not echo_ok(NODE, node.settings.port)  # and nothing in the clear


def test_plain_tcp_to_the_tls_port_fails_and_the_node_serves_on(
    receiver: Callable[..., RunningReceiver], pki: Pki, phantom_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Also while a client that connected stays silent: its handshake waits in its own thread,
    not in the one that accepts connections."""
    node = receiver(**tls_node(pki))
    with caplog.at_level(logging.WARNING, logger="dicomnode.net"):
        plain = storescu(phantom_dir, NODE, node.settings.port, check=False)
    assert plain.returncode != 0 and node.indexed() == 0
    assert "TLS handshake with 127.0.0.1" in caplog.text and "wrong version number" in caplog.text
    with socket.create_connection(("127.0.0.1", node.settings.port)):
        assert echo_ok(NODE, node.settings.port, pki.dcmtk("client"))  # times out if the silent client blocks accepting
        storescu(phantom_dir, NODE, node.settings.port, options=pki.dcmtk("client"))
    assert node.indexed() == 40


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    receiver: Callable[..., RunningReceiver], pki: Pki, phantom_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = receiver(**tls_node(pki, mutual=True))

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="dicomnode.net"):
        anonymous = storescu(phantom_dir, NODE, node.settings.port, check=False, options=pki.dcmtk(None))
        impostor = storescu(phantom_dir, NODE, node.settings.port, check=False, options=pki.dcmtk("rogue-client"))
        # The server logs a failed handshake in the connection's thread, which may end after storescu.
        wait_until(lambda: len(failures()) >= 2, 10, what="both failed handshakes logged")
    assert anonymous.returncode != 0 and impostor.returncode != 0
    assert node.indexed() == 0
    assert len(failures()) == 2, failures()
    assert any("peer did not return a certificate" in failure for failure in failures()), failures()  # anonymous
    assert any("certificate verify failed" in failure for failure in failures()), failures()  # the impostor
    storescu(phantom_dir, NODE, node.settings.port, options=pki.dcmtk("client"))
    assert node.indexed() == 40


# --- sending over TLS ----------------------------------------------------------------------


def deliver_once(root: Path, destination: DicomDestination, datasets: list[Dataset]) -> list[dict]:
    """One round of the node's sender over a fresh outbox holding ``datasets``: the outbox rows after it."""
    node = Node(root, destination)
    node.submit(1, datasets)
    node.sender.run_once()
    rows = node.rows()
    node.database.close()
    return rows


@pytest.fixture
def series() -> list[Dataset]:
    return PhantomSeries(slices=4, rows=32, columns=32).datasets()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Start dcmtk storescp over TLS with a certificate of ``server`` (stopped at the end)."""
    started: list[StoreSCP] = []

    def start(pki: Pki, server: str, require_client_certificate: bool = True) -> StoreSCP:
        options = ["+tls", str(pki.key(server)), str(pki.crt(server)), "+cf", str(pki.crt("ca"))]
        options.append("-rc" if require_client_certificate else "-ic")
        trust = "rogue-ca" if server.startswith("rogue") else "ca"
        peer = StoreSCP(tmp_path / f"storescp-{len(started)}", options=options, echo_options=pki.dcmtk("client", trust))
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


def tls_destination(peer: StoreSCP, **tls: object) -> DicomDestination:
    client = TlsClient(**tls)  # type: ignore[arg-type]
    return DicomDestination(name="pacs", ae_title=peer.aet, host="127.0.0.1", port=peer.port, tls=client)


def test_results_are_delivered_over_mutual_tls(
    tmp_path: Path, pki: Pki, storescp: Callable[..., StoreSCP], series: list[Dataset]
) -> None:
    peer = storescp(pki, "server")
    destination = tls_destination(
        peer, ca_certificates=pki.crt("ca"), certificate=pki.crt("client"), private_key=pki.key("client")
    )
    rows = deliver_once(tmp_path / "state", destination, series)
    assert {row["state"] for row in rows} == {"sent"}
    assert len(peer.files()) == len(series)


def test_the_server_name_is_verified(
    tmp_path: Path, pki: Pki, storescp: Callable[..., StoreSCP], series: list[Dataset]
) -> None:
    """The certificate carries 127.0.0.1 and localhost; a destination expecting another name waits."""
    peer = storescp(pki, "server", require_client_certificate=False)
    good = tls_destination(peer, ca_certificates=pki.crt("ca"), server_name="localhost")
    assert {row["state"] for row in deliver_once(tmp_path / "good", good, series[:1])} == {"sent"}
    wrong = tls_destination(peer, ca_certificates=pki.crt("ca"), server_name="pacs.example.org")
    (row,) = deliver_once(tmp_path / "wrong", wrong, series[:1])
    assert row["state"] == "pending" and "TLS handshake failed" in row["last_error"]
    assert "hostname mismatch" in row["last_error"].lower()


@pytest.mark.parametrize(
    ("case", "server", "client", "reason"),
    [
        ("server_of_another_ca", "rogue-server", "client", "TLS handshake failed: certificate verify failed"),
        # TLS 1.3: the server refuses the missing client certificate after the client's handshake.
        ("no_client_certificate", "server", None, "TLS failed after the handshake: tlsv13 alert certificate required"),
    ],
)
def test_a_tls_failure_leaves_the_delivery_pending_with_its_reason(
    tmp_path: Path,
    pki: Pki,
    storescp: Callable[..., StoreSCP],
    series: list[Dataset],
    case: str,
    server: str,
    client: str | None,
    reason: str,
) -> None:
    """Retried like a destination that is down (no refusal counted), with the reason in words."""
    peer = storescp(pki, server)
    identity = {} if client is None else {"certificate": pki.crt(client), "private_key": pki.key(client)}
    rows = deliver_once(tmp_path / "state", tls_destination(peer, ca_certificates=pki.crt("ca"), **identity), series)
    assert {(row["state"], row["attempts"], row["refusals"]) for row in rows} == {("pending", 1, 0)}
    errors = {row["last_error"] for row in rows}
    assert len(errors) == 1 and reason in errors.pop()
    assert peer.files() == []
    record_figures(f"tls_failure_{case}", last_error=rows[0]["last_error"])


# --- configuration -------------------------------------------------------------------------


def _node(**keys: object) -> dict:
    return {"node": {key: str(value) if isinstance(value, Path) else value for key, value in keys.items()}}


def _dicom(**keys: object) -> dict:
    destination = {"type": "dicom", "ae_title": "PACS", "host": "pacs.example.org", "port": 2762}
    destination.update({key: str(value) if isinstance(value, Path) else value for key, value in keys.items()})
    return {"destinations": [destination]}


def test_tls_and_allow_list_settings_load(pki: Pki) -> None:
    settings = settings_from_dict(
        {
            **_node(allowed_peer_addresses=["10.0.0.0/8", "192.168.1.20", "fd00::/8"], **tls_node(pki, mutual=True)),
            **_dicom(tls=True, tls_ca_certificates=pki.crt("ca"), tls_certificate=pki.crt("client"),
                     tls_private_key=pki.key("client"), tls_server_name="pacs"),
        }
    )
    assert [str(n) for n in settings.node.allowed_peer_addresses] == ["10.0.0.0/8", "192.168.1.20/32", "fd00::/8"]
    assert settings.node.tls_ca_certificates == pki.crt("ca")
    (destination,) = settings.destinations
    assert destination.tls == TlsClient(pki.crt("ca"), pki.crt("client"), pki.key("client"), "pacs")
    assert settings_from_dict(_dicom(tls=True)).destinations[0].tls == TlsClient()  # the system's trust store
    assert settings_from_dict(_dicom()).destinations[0].tls is None
    assert NodeSettings().tls_certificate is None and NodeSettings().allowed_peer_addresses == ()


def test_bad_tls_files_name_the_key(pki: Pki, tmp_path: Path) -> None:
    """Values checked without files are in test_settings.py; these need real certificates."""
    not_pem = tmp_path / "not-a-certificate.pem"
    not_pem.write_text("hello\n")
    cases = [
        (_node(tls_certificate=tmp_path / "missing.crt", tls_private_key=pki.key("server")), "node.tls_certificate"),
        (_node(tls_certificate=pki.crt("server")), "node.tls_private_key"),
        (_node(tls_private_key=pki.key("server")), "node.tls_certificate"),
        (_node(tls_ca_certificates=pki.crt("ca")), "node.tls_ca_certificates"),
        (_node(tls_certificate=pki.crt("server"), tls_private_key=pki.key("client")), "node.tls_certificate"),
        (_node(**tls_node(pki), tls_ca_certificates=not_pem), "node.tls_ca_certificates"),
        (_dicom(tls=True, tls_ca_certificates=not_pem), "destinations[0].tls_ca_certificates"),
        (_dicom(tls=True, tls_certificate=pki.crt("client")), "destinations[0].tls_private_key"),
        (_dicom(tls=True, tls_certificate=not_pem, tls_private_key=pki.key("client")),
         "destinations[0].tls_certificate"),
    ]
    for document, key in cases:
        with pytest.raises(ConfigError) as caught:
            settings_from_dict(document)
        assert str(caught.value).startswith(key + ":"), (key, str(caught.value))

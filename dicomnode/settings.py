"""One typed settings object, loaded from TOML and validated once at start-up.

A bad configuration fails at start-up with a :class:`ConfigError` that names the key and says
why (``node.port: must be an integer from 1 to 65535, got 'abc'``). Unknown keys are errors
too: a misspelt key silently ignored is a setting the operator believes in but does not have.
Relative paths are resolved against the working directory when the file is loaded (the systemd
unit runs the node in its state directory).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dicomnode.net.tls import TlsFileError, client_context, server_context

if TYPE_CHECKING:
    from inference.options import AnalysisOptions

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

#: The configuration used when none is given: the file shipped in the repository's config/.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "dicomnode.toml"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash
_UID_ROOT = re.compile(r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass(frozen=True)
class NodeSettings:
    """Network identity and limits of the receiving AE."""

    ae_title: str = "DECOVNODE"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    #: Calling AE titles allowed to associate; empty means any.
    allowed_calling_ae_titles: tuple[str, ...] = ()
    #: Peer addresses (networks) allowed to connect; empty means any. Others are closed unread.
    allowed_peer_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_associations: int = 10
    #: Largest P-DATA PDU the node accepts (bytes; 0 = unlimited). Large PDUs receive faster.
    max_pdu_bytes: int = 1048576
    network_timeout_seconds: float = 60.0
    #: DICOM over TLS: the node's certificate and private key (PEM, both or neither).
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    #: With TLS: clients must present a certificate signed by one of these (mutual TLS).
    tls_ca_certificates: Path | None = None

    def __post_init__(self) -> None:
        """The TLS files are loaded once here, so that a wrong one stops the node at start-up."""
        _check_tls_pair("node", self.tls_certificate, self.tls_private_key)
        if self.tls_ca_certificates is not None and self.tls_certificate is None:
            raise ConfigError("node.tls_ca_certificates: needs node.tls_certificate and node.tls_private_key")
        certificate, private_key, ca_certificates = self.tls_certificate, self.tls_private_key, self.tls_ca_certificates
        if certificate is not None and private_key is not None:
            _check_tls_loads("node", lambda: server_context(certificate, private_key, ca_certificates))


@dataclass(frozen=True)
class StorageSettings:
    """Where the node keeps its whole state, and what it keeps."""

    state_dir: Path = Path("dicomnode-state")
    #: Below this much free space on the spool's file system, C-STORE answers 0xA700.
    min_free_mb: int = 500
    #: SOP classes stored for analysis; everything else is acknowledged and dropped.
    keep_sop_classes: tuple[str, ...] = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
    #: Spool files of processed, rejected or failed series are removed after this long.
    retention_hours: float = 24.0

    @property
    def retention_seconds(self) -> float:
        return self.retention_hours * 3600.0

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * 2**20


@dataclass(frozen=True)
class AssemblySettings:
    """When a series counts as complete, and which series are analysed (declarative rules)."""

    #: A series is complete when no instance of it arrived for this long.
    quiet_seconds: float = 10.0
    modalities: tuple[str, ...] = ("CT",)
    require_original: bool = True
    #: Axial: the slice normal is within this angle of the patient's head-feet axis.
    max_obliquity_degrees: float = 15.0
    min_slices: int = 20
    max_slice_thickness_mm: float = 10.0
    #: A gap between neighbouring slices larger than this times the median spacing is a missing slice.
    max_gap_factor: float = 1.5
    #: Larger series are not analysed (the volume, its resampled copies and the SEG grow with it):
    #: 2000 slices of 1024 x 1024 is about 4 GiB of voxels before resampling.
    max_slices: int = 2000
    #: Images with more rows or columns than this are not analysed.
    max_matrix: int = 1024


@dataclass(frozen=True)
class JobSettings:
    """Bounded retries of analysis jobs."""

    max_attempts: int = 3
    retry_delay_seconds: float = 30.0


@dataclass(frozen=True)
class EncodingSettings:
    """Identity of the objects the node writes (deterministic and meaningful)."""

    #: Root of every UID the node creates; a site should use its own registered root.
    uid_root: str = "1.2.826.0.1.3680043.8.498."
    manufacturer: str = "decov-node project"
    institution_name: str = ""
    #: Serial number of this installation; empty means the node's AE title.
    device_serial_number: str = ""
    seg_series_number: int = 9901
    sr_series_number: int = 9902
    seg_series_description: str = "Lungs and lesions (AI, research use)"
    sr_series_description: str = "COVID-19 assessment (AI, research use)"
    #: Leave SEG frames without any segment voxel out. Off by default: viewers that place frames
    #: by their index (older OHIF/Cornerstone) misplace a SEG whose empty frames are omitted.
    omit_empty_frames: bool = False
    key_image_series_number: int = 9903
    key_image_series_description: str = "Key images (AI, research use)"
    #: Axial key images per series: through the largest lesions, else through the lungs.
    key_image_count: int = 3
    #: Burned into every key image under the findings (the SEG and SR say it in their series descriptions).
    key_image_disclaimer: str = "Research use only. Not for diagnosis."


#: Devices the analysis may run on ("auto": CUDA when present, else the CPU).
ANALYSIS_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class AnalysisSettings:
    """How the COVID-19 classifier and the lesion localization run and decide.

    The node does not interpret these values itself: :meth:`options` hands them to the
    analysis as :class:`inference.options.AnalysisOptions`, whose ``__post_init__`` checks them
    again. They are validated here too so that a bad value stops the node at start-up with the
    key's name, not at the first series.
    """

    #: Probability at or above which a scan is called COVID-19 positive (strictly between 0 and 1).
    threshold: float = 0.5
    #: Lesion candidates with a lower mean class activation are not reported.
    min_lesion_score: float = 0.3
    #: CPU threads for torch; 0 lets torch choose (one per core).
    threads: int = 0
    device: str = "auto"
    #: Folder of a site's own weights; None (empty in the file) means the weights shipped in the package.
    weights_dir: Path | None = None

    def options(self) -> AnalysisOptions:
        """These settings as the analysis takes them (``inference.options`` is imported here:
        loading the configuration must not load the analysis package)."""
        from inference.options import SHIPPED_WEIGHTS, AnalysisOptions

        return AnalysisOptions(
            threshold=self.threshold,
            min_lesion_score=self.min_lesion_score,
            threads=self.threads or None,
            device=self.device,
            weights_dir=self.weights_dir if self.weights_dir is not None else SHIPPED_WEIGHTS,
            keep_cam=False,  # the node's results hold no CAM
        )


@dataclass(frozen=True)
class SenderSettings:
    """Retry policy of the outbox."""

    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    #: A destination that refuses an object (failure status) gets this many attempts, then it is failed.
    max_refusals: int = 3


#: The result objects a destination can receive: the Segmentation, the TID 1500 report, and
#: key images (Secondary Capture with the findings burned in, for PACS and viewers without SEG).
RESULT_OBJECTS = ("seg", "sr", "key-images")
#: SEG encodings: BINARY (one frame per segment and slice; every viewer with SEG support) or
#: LABELMAP (one frame per slice holding segment numbers: small; recent viewers only).
SEG_TYPES = ("binary", "labelmap")


@dataclass(frozen=True)
class Delivery:
    """What one destination receives: which result objects, and which SEG encoding.

    The SR references the SEG of the destination's ``seg_type`` (a destination that takes the SR
    without the SEG gets references to a SEG it does not hold; the measurements stand alone).
    """

    objects: tuple[str, ...] = RESULT_OBJECTS
    seg_type: str = "binary"

    def wants(self, kind: str, seg_type: str | None) -> bool:
        """Whether a result object of ``kind`` (SEG/SR encoded for ``seg_type``) goes here."""
        return kind in self.objects and (seg_type is None or seg_type == self.seg_type)


@dataclass(frozen=True)
class TlsClient:
    """How the node speaks DICOM over TLS to a destination (paths to PEM files)."""

    #: The certificates that sign the peer's; None: the system's trust store.
    ca_certificates: Path | None = None
    #: The node's own certificate and key, for peers that require mutual TLS.
    certificate: Path | None = None
    private_key: Path | None = None
    #: The host name the peer's certificate must carry; None: the destination's host.
    server_name: str | None = None


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM peer that receives results by C-STORE."""

    name: str
    ae_title: str
    host: str
    port: int
    delivery: Delivery = field(default_factory=Delivery)
    #: None: plain TCP.
    tls: TlsClient | None = None


@dataclass(frozen=True)
class FolderDestination:
    """A folder that receives results as files (<study>/<series>/<sop>.dcm)."""

    name: str
    path: Path
    delivery: Delivery = field(default_factory=Delivery)


Destination = DicomDestination | FolderDestination


@dataclass(frozen=True)
class Settings:
    """Everything the node is configured with."""

    node: NodeSettings = field(default_factory=NodeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    assembly: AssemblySettings = field(default_factory=AssemblySettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    encoding: EncodingSettings = field(default_factory=EncodingSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    destinations: tuple[Destination, ...] = ()
    log_level: str = "INFO"

    @property
    def device_serial_number(self) -> str:
        return self.encoding.device_serial_number or self.node.ae_title


# --- validation helpers ------------------------------------------------------------------


def _check_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _check_number(key: str, value: Any, low: float, high: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{key}: must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _check_str(key: str, value: Any, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise ConfigError(f"{key}: must be {what or 'a string'}, got {value!r}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_ae_title(key: str, value: Any) -> str:
    """An AE title: 1-16 printable ASCII characters without backslash, not all spaces."""
    title = _check_str(key, value, _AE_TITLE, "an AE title (1-16 printable ASCII characters, no backslash)")
    if not title.strip():
        raise ConfigError(f"{key}: must not be blank")
    return title.strip()


def _check_list(key: str, value: Any, item: Callable[[str, Any], Any]) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list, got {value!r}")
    return tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))


def _check_path(key: str, value: Any) -> Path:
    return Path(_check_str(key, value, re.compile(r".+"), "a non-empty path")).expanduser().resolve()


def _check_probability(key: str, value: Any) -> float:
    """A number strictly between 0 and 1 (a threshold of 0 or 1 would call every scan the same)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{key}: must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _check_optional_path(key: str, value: Any) -> Path | None:
    """A path, or the empty string for "none" (TOML has no null)."""
    if value == "":
        return None
    return _check_path(key, value)


def _check_uid_root(key: str, value: Any) -> str:
    """A UID root of digits and dots ending with a dot, short enough that generated UIDs fit in 64."""
    root = _check_str(key, value, _UID_ROOT, "a UID root of digits and dots ending with a dot, e.g. '1.2.826.0.1.3680043.8.498.'")
    if len(root) > 32:
        raise ConfigError(f"{key}: must be at most 32 characters so that generated UIDs fit in 64")
    return root


def _check_network(key: str, value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4/IPv6 address or network (``10.0.0.0/8``, ``192.168.1.20``, ``fd00::/8``)."""
    try:
        return ipaddress.ip_network(_check_str(key, value, what="an IP address or network"))
    except ValueError as error:
        raise ConfigError(f"{key}: must be an IP address or network such as 10.0.0.0/8 or fd00::/8 ({error})") from None


def _check_pem_file(key: str, value: Any) -> Path | None:
    """An existing file, or the empty string for "none"."""
    path = _check_optional_path(key, value)
    if path is not None and not path.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    return path


def _check_tls_pair(where: str, certificate: Path | None, private_key: Path | None) -> None:
    """A certificate needs its private key, and the other way round."""
    if (certificate is None) != (private_key is None):
        missing = "tls_private_key" if private_key is None else "tls_certificate"
        raise ConfigError(f"{where}.{missing}: missing (tls_certificate and tls_private_key go together)")


def _check_tls_loads(where: str, build: Callable[[], Any]) -> None:
    """Build the TLS context once, so that a file that does not load fails naming its key."""
    try:
        build()
    except TlsFileError as error:
        raise ConfigError(f"{where}.{error.key}: {error.reason}") from None


# Per section: key -> checker(key, value) returning the typed value.
_Checker = Callable[[str, Any], Any]
_SECTIONS: dict[str, tuple[type, dict[str, _Checker]]] = {
    "node": (
        NodeSettings,
        {
            "ae_title": check_ae_title,
            "bind_address": lambda k, v: _check_str(k, v, re.compile(r".+"), "a host address"),
            "port": lambda k, v: _check_int(k, v, 1, 65535),
            "allowed_calling_ae_titles": lambda k, v: _check_list(k, v, check_ae_title),
            "allowed_peer_addresses": lambda k, v: _check_list(k, v, _check_network),
            "max_associations": lambda k, v: _check_int(k, v, 1, 1000),
            "max_pdu_bytes": lambda k, v: _check_int(k, v, 0, 2**32 - 1),
            "network_timeout_seconds": lambda k, v: _check_number(k, v, 1),
            "tls_certificate": _check_pem_file,
            "tls_private_key": _check_pem_file,
            "tls_ca_certificates": _check_pem_file,
        },
    ),
    "storage": (
        StorageSettings,
        {
            "state_dir": _check_path,
            "min_free_mb": lambda k, v: _check_int(k, v, 0, 2**40),
            "keep_sop_classes": lambda k, v: _check_list(
                k, v, lambda k2, v2: _check_str(k2, v2, re.compile(r"^[0-9]+(\.[0-9]+)*$"), "a UID")
            ),
            "retention_hours": lambda k, v: _check_number(k, v, 0),
        },
    ),
    "assembly": (
        AssemblySettings,
        {
            "quiet_seconds": lambda k, v: _check_number(k, v, 0),
            "modalities": lambda k, v: _check_list(k, v, _check_str),
            "require_original": _check_bool,
            "max_obliquity_degrees": lambda k, v: _check_number(k, v, 0, 90),
            "min_slices": lambda k, v: _check_int(k, v, 1, 100000),
            "max_slice_thickness_mm": lambda k, v: _check_number(k, v, 0),
            "max_gap_factor": lambda k, v: _check_number(k, v, 1),
            "max_slices": lambda k, v: _check_int(k, v, 1, 100000),
            "max_matrix": lambda k, v: _check_int(k, v, 16, 65535),
        },
    ),
    "jobs": (
        JobSettings,
        {
            "max_attempts": lambda k, v: _check_int(k, v, 1, 100),
            "retry_delay_seconds": lambda k, v: _check_number(k, v, 0),
        },
    ),
    "encoding": (
        EncodingSettings,
        {
            "uid_root": _check_uid_root,
            "manufacturer": _check_str,
            "institution_name": _check_str,
            "device_serial_number": _check_str,
            "seg_series_number": lambda k, v: _check_int(k, v, 1, 2**31 - 1),
            "sr_series_number": lambda k, v: _check_int(k, v, 1, 2**31 - 1),
            "seg_series_description": lambda k, v: _check_str(k, v, re.compile(r"^.{1,64}$"), "1-64 characters"),
            "sr_series_description": lambda k, v: _check_str(k, v, re.compile(r"^.{1,64}$"), "1-64 characters"),
            "omit_empty_frames": _check_bool,
            "key_image_series_number": lambda k, v: _check_int(k, v, 1, 2**31 - 1),
            "key_image_series_description": lambda k, v: _check_str(
                k, v, re.compile(r"^.{1,64}$"), "1-64 characters"
            ),
            "key_image_count": lambda k, v: _check_int(k, v, 1, 20),
            "key_image_disclaimer": lambda k, v: _check_str(k, v, re.compile(r"^.{0,200}$"), "at most 200 characters"),
        },
    ),
    "analysis": (
        AnalysisSettings,
        {
            "threshold": _check_probability,
            "min_lesion_score": lambda k, v: _check_number(k, v, 0, 1),
            "threads": lambda k, v: _check_int(k, v, 0, 1024),
            "device": lambda k, v: _check_choice(k, v, ANALYSIS_DEVICES),
            "weights_dir": _check_optional_path,
        },
    ),
    "sender": (
        SenderSettings,
        {
            "retry_initial_seconds": lambda k, v: _check_number(k, v, 0),
            "retry_max_seconds": lambda k, v: _check_number(k, v, 0),
            "max_refusals": lambda k, v: _check_int(k, v, 1, 1000),
        },
    ),
}

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _build_section(name: str, raw: Any) -> Any:
    cls, checkers = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table, got {raw!r}")
    unknown = sorted(set(raw) - set(checkers))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key (known: {', '.join(sorted(checkers))})")
    return cls(**{key: checkers[key](f"{name}.{key}", value) for key, value in raw.items()})


def _build_destination(index: int, raw: Any) -> Destination:
    where = f"destinations[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    kind = raw.get("type")
    name = _check_str(f"{where}.name", raw.get("name", f"destination-{index}"))
    optional = {"name", *_DELIVERY_KEYS}
    if kind == "dicom":
        required = {"type", "ae_title", "host", "port"}
        optional |= set(_TLS_KEYS)
    elif kind == "folder":
        required = {"type", "path"}
    else:
        raise ConfigError(f"{where}.type: must be 'dicom' or 'folder', got {kind!r}")
    unknown = sorted(set(raw) - required - optional)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for a {kind} destination")
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: missing (required for a {kind} destination)")
    delivery = _build_delivery(where, raw)
    if kind == "folder":
        return FolderDestination(name=name, path=_check_path(f"{where}.path", raw["path"]), delivery=delivery)
    return DicomDestination(
        name=name,
        ae_title=check_ae_title(f"{where}.ae_title", raw["ae_title"]),
        host=_check_str(f"{where}.host", raw["host"], re.compile(r".+"), "a host name or address"),
        port=_check_int(f"{where}.port", raw["port"], 1, 65535),
        delivery=delivery,
        tls=_build_tls_client(where, raw),
    )


_DELIVERY_KEYS = ("objects", "seg_type")
_TLS_KEYS = ("tls", "tls_ca_certificates", "tls_certificate", "tls_private_key", "tls_server_name")


def _build_tls_client(where: str, raw: dict[str, Any]) -> TlsClient | None:
    """A DICOM destination's ``tls = true`` and its files; a TLS key without ``tls = true`` is an
    error (the operator would believe in an encryption the node does not do)."""
    if not _check_bool(f"{where}.tls", raw.get("tls", False)):
        stray = next((key for key in _TLS_KEYS[1:] if key in raw), None)
        if stray is not None:
            raise ConfigError(f"{where}.{stray}: needs tls = true")
        return None
    server_name = _check_str(f"{where}.tls_server_name", raw.get("tls_server_name", ""))
    tls = TlsClient(
        ca_certificates=_check_pem_file(f"{where}.tls_ca_certificates", raw.get("tls_ca_certificates", "")),
        certificate=_check_pem_file(f"{where}.tls_certificate", raw.get("tls_certificate", "")),
        private_key=_check_pem_file(f"{where}.tls_private_key", raw.get("tls_private_key", "")),
        server_name=server_name or None,
    )
    _check_tls_pair(where, tls.certificate, tls.private_key)
    _check_tls_loads(where, lambda: client_context(tls.ca_certificates, tls.certificate, tls.private_key))
    return tls


def _build_delivery(where: str, raw: dict[str, Any]) -> Delivery:
    """A destination's ``objects`` (a non-empty list of RESULT_OBJECTS) and ``seg_type``."""
    default = Delivery()
    objects = raw.get("objects", list(default.objects))
    chosen = _check_list(f"{where}.objects", objects, lambda k, v: _check_choice(k, v, RESULT_OBJECTS))
    if not chosen:
        raise ConfigError(f"{where}.objects: must name at least one of {', '.join(RESULT_OBJECTS)}")
    if len(set(chosen)) < len(chosen):
        raise ConfigError(f"{where}.objects: names an object twice, got {objects!r}")
    seg_type = _check_choice(f"{where}.seg_type", raw.get("seg_type", default.seg_type), SEG_TYPES)
    return Delivery(objects=chosen, seg_type=seg_type)


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    """Validate a parsed TOML document and build :class:`Settings`."""
    known = set(_SECTIONS) | {"destinations", "logging"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(sorted(known))})")
    sections = {name: _build_section(name, raw[name]) for name in _SECTIONS if name in raw}
    destinations = raw.get("destinations", [])
    if not isinstance(destinations, list):
        raise ConfigError("destinations: must be an array of tables ([[destinations]])")
    built = tuple(_build_destination(i, d) for i, d in enumerate(destinations))
    names = [d.name for d in built]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"destinations: the name {duplicate!r} is used twice")
    logging_table = raw.get("logging", {})
    if not isinstance(logging_table, dict) or set(logging_table) - {"level"}:
        raise ConfigError("logging: only the key 'level' is known")
    level = logging_table.get("level", "INFO")
    if level not in _LOG_LEVELS:
        raise ConfigError(f"logging.level: must be one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    settings = Settings(**sections, destinations=built, log_level=level)
    if settings.sender.retry_max_seconds < settings.sender.retry_initial_seconds:
        raise ConfigError("sender.retry_max_seconds: must not be smaller than sender.retry_initial_seconds")
    return settings


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate a TOML configuration file (the shipped default when ``path`` is None)."""
    path = DEFAULT_CONFIG if path is None else path
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return settings_from_dict(raw)


def parse_destination(text: str) -> DicomDestination:
    """Parse ``AET@HOST:PORT`` (the ``--destination`` command-line form)."""
    match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>.+):(?P<port>[0-9]+)", text)
    if match is None:
        raise ConfigError(f"--destination: expected AET@HOST:PORT, got {text!r}")
    return DicomDestination(
        name=f"{match['aet']}@{match['host']}:{match['port']}",
        ae_title=check_ae_title("--destination", match["aet"]),
        host=match["host"],
        port=_check_int("--destination", int(match["port"]), 1, 65535),
    )


def with_overrides(
    settings: Settings,
    *,
    ae_title: str | None = None,
    port: int | None = None,
    state_dir: Path | None = None,
    quiet_seconds: float | None = None,
    destinations: list[str] | None = None,
    output_dir: Path | None = None,
) -> Settings:
    """Apply command-line overrides. Destinations given on the command line replace the file's."""
    node, storage, assembly = settings.node, settings.storage, settings.assembly
    if ae_title is not None:
        node = dataclasses.replace(node, ae_title=check_ae_title("--aet", ae_title))
    if port is not None:
        node = dataclasses.replace(node, port=_check_int("--port", port, 1, 65535))
    if state_dir is not None:
        storage = dataclasses.replace(storage, state_dir=_check_path("--state-dir", str(state_dir)))
    if quiet_seconds is not None:
        assembly = dataclasses.replace(assembly, quiet_seconds=_check_number("--quiet-seconds", quiet_seconds, 0))
    chosen = settings.destinations
    if destinations or output_dir is not None:
        chosen = tuple(parse_destination(text) for text in destinations or ())
        if output_dir is not None:
            chosen += (FolderDestination(name="output-dir", path=_check_path("--output-dir", str(output_dir))),)
    return dataclasses.replace(settings, node=node, storage=storage, assembly=assembly, destinations=chosen)

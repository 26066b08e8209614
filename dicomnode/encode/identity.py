"""Deterministic, meaningful identities of the objects the node writes.

UIDs are derived from what a result *is* (the source SOP instances, the algorithm and its
version, the kind of object), not drawn at random: sending the same series again yields the
same SEG and SR UIDs, so a PACS replaces the earlier result instead of storing a duplicate,
while a different run (more instances arrived, another algorithm version) gets new ones.
The device identity (manufacturer, model, version, serial number) comes from the settings and
the installed package, never from placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomnode import __version__
from dicomnode.settings import Settings
from dicomnode.volume import SeriesVolume
from inference.types import AlgorithmFamily, Findings

#: ManufacturerModelName of every object the node writes.
MODEL_NAME = "decov-node"
#: How each algorithm family of the findings is coded (CID 7162).
ALGORITHM_FAMILY_CODES = {
    AlgorithmFamily.MORPHOLOGICAL_OPERATIONS: codes.cid7162.MorphologicalOperations,
    AlgorithmFamily.ARTIFICIAL_INTELLIGENCE: codes.cid7162.ArtificialIntelligence,
}

#: Object kinds of :func:`result_uid`.
SEG_INSTANCE = "seg"
SR_INSTANCE = "sr"
SEG_SERIES = "seg-series"
SR_SERIES = "sr-series"
KEY_IMAGE_SERIES = "key-image-series"
TOTAL_LUNG_TRACKING = "tracking-total-lung"


def seg_kinds(seg_type: str) -> tuple[str, str]:
    """(instance, series) kinds of the SEG of ``seg_type``; the BINARY ones are the plain names,
    so BINARY results keep the UIDs they had before LABELMAP existed."""
    return _with_seg_type(SEG_INSTANCE, seg_type), _with_seg_type(SEG_SERIES, seg_type)


def sr_kinds(seg_type: str) -> tuple[str, str]:
    """(instance, series) kinds of the SR that references the SEG of ``seg_type``."""
    return _with_seg_type(SR_INSTANCE, seg_type), _with_seg_type(SR_SERIES, seg_type)


def key_image_kind(index: int) -> str:
    """Object kind of the ``index``-th key image (from 1)."""
    return f"key-image-{index}"


def _with_seg_type(kind: str, seg_type: str) -> str:
    return kind if seg_type == "binary" else f"{kind}-{seg_type}"


def tracking_kind(segment_key: str) -> str:
    """Object kind of a segment's tracking UID (shared by the SEG segment and its SR group)."""
    return f"tracking-{segment_key}"


def result_uid(root: str, kind: str, source_sop_uids: Sequence[str], version: str) -> str:
    """A UID under ``root`` that is a function of the object kind, the source instances and the version.

    The source UIDs are sorted first: the same instances in another order are the same input.
    Every part ends with a newline (pydicom joins the parts before hashing them), so that
    ("seg", "1.2") and ("seg1", ".2") stay different inputs.
    """
    if not source_sop_uids:
        raise ValueError("result_uid: at least one source SOP instance UID is needed")
    return generate_uid(prefix=root, entropy_srcs=_parts(kind, version, *sorted(source_sop_uids)))


def _parts(*parts: str) -> list[str]:
    return [f"{part}\n" for part in parts]


def algorithm_version_key(findings: Findings) -> str:
    """What identifies the producer of a result in its UIDs: the algorithm's name and version."""
    return f"{findings.algorithm_name} {findings.algorithm_version}"


def source_sop_uids(series: SeriesVolume) -> list[str]:
    """The SOP instance UIDs a result derives from."""
    return [str(ds.SOPInstanceUID) for ds in series.datasets]


def derived_uid(kind: str, series: SeriesVolume, findings: Findings, settings: Settings) -> str:
    """:func:`result_uid` of one object of the results of ``series`` analysed into ``findings``."""
    return result_uid(settings.encoding.uid_root, kind, source_sop_uids(series), algorithm_version_key(findings))


@dataclass(frozen=True)
class DeviceIdentity:
    """The node as the equipment that created an object (General Equipment, device observer)."""

    manufacturer: str
    model_name: str
    software_versions: str
    serial_number: str
    institution_name: str | None
    #: Device observer UID: stable for an installation (root, manufacturer, model, serial).
    uid: str


def device_identity(settings: Settings) -> DeviceIdentity:
    """The node's identity from its settings and the installed package version."""
    encoding = settings.encoding
    serial = settings.device_serial_number
    return DeviceIdentity(
        manufacturer=encoding.manufacturer,
        model_name=MODEL_NAME,
        software_versions=__version__,
        serial_number=serial,
        institution_name=encoding.institution_name or None,
        uid=generate_uid(prefix=encoding.uid_root, entropy_srcs=_parts("device", encoding.manufacturer, MODEL_NAME, serial)),
    )


def seg_algorithm_identification(findings: Findings) -> hd.AlgorithmIdentificationSequence:
    """Algorithm identification of SEG segments (name and version from the findings)."""
    return hd.AlgorithmIdentificationSequence(
        name=findings.algorithm_name,
        family=ALGORITHM_FAMILY_CODES[findings.algorithm_family],
        version=findings.algorithm_version,
    )


def sr_algorithm_identification(findings: Findings) -> hd.sr.AlgorithmIdentification:
    """Algorithm identification (TID 4019) of SR measurements.

    Built once per algorithm and shared by every measurement: a report cites it about 50 times,
    and highdicom's validation makes each build cost 10 ms (half a second per report).
    """
    return _sr_algorithm_identification(findings.algorithm_name, findings.algorithm_version, findings.algorithm_family)


@lru_cache(maxsize=8)
def _sr_algorithm_identification(name: str, version: str, family: AlgorithmFamily) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=name, version=version, family=ALGORITHM_FAMILY_CODES[family])

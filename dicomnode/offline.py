"""``dicomnode process``: the node's pipeline on a folder, without the network.

The same series rules, volume builder, analysis and encoders as the running node; every object
the node would write for its configured destinations (SEG, SR, key images; a SEG and an SR per
SEG encoding they ask for) lands in the output folder as ``<series UID>/<SOP instance UID>.dcm``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.assembly import first_failure
from dicomnode.encode import EncodingError
from dicomnode.fileio import safe_name
from dicomnode.pipeline import Analyze, analyse_series, build_analyze
from dicomnode.settings import Settings
from dicomnode.spool import HeaderError, InstanceHeader, read_header
from dicomnode.volume import VolumeError

logger = logging.getLogger(__name__)


def _read_headers(folder: Path, keep: tuple[str, ...]) -> dict[str, list[tuple[InstanceHeader, Path]]]:
    """Group the kept DICOM files under ``folder`` by series; skip (and log) everything else."""
    series: dict[str, list[tuple[InstanceHeader, Path]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = read_header(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, HeaderError, OSError, ValueError) as error:
            logger.info("skipped %s: %s", path, error)
            continue
        if header.sop_class_uid in keep:
            series[header.series_uid].append((header, path))
        else:
            logger.info("skipped %s: SOP class %s is not analysed", path, header.sop_class_uid)
    return series


def process_folder(
    folder: Path, out: Path, settings: Settings, analyze: Analyze | None = None
) -> list[dict[str, Any]]:
    """Analyse every series found under ``folder``; return one result record per series.

    ``analyze`` replaces the configured analysis (tests inject a stub). By default one analyzer
    is built from ``settings.analysis`` when the first series is to be analysed, and reused for
    the others: a folder without analysable series does not load the models at all.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    results = []
    for series_uid, members in _read_headers(folder, settings.storage.keep_sop_classes).items():
        record: dict[str, Any] = {"series_uid": series_uid, "instances": len(members)}
        reason = first_failure([header for header, _ in members], settings.assembly)
        if reason:
            logger.warning("series %s not analysed: %s", series_uid, reason)
            results.append(record | {"state": "rejected", "reason": reason})
            continue
        if analyze is None:
            analyze = build_analyze(settings)
        try:
            result = analyse_series([path for _, path in members], settings, analyze)
        except (VolumeError, EncodingError) as error:
            logger.error("series %s failed: %s", series_uid, error)
            results.append(record | {"state": "failed", "reason": str(error)})
            continue
        target = out / safe_name(series_uid)
        target.mkdir(parents=True, exist_ok=True)
        files = []
        for dataset in (result_object.dataset for result_object in result.objects):
            path = target / f"{safe_name(dataset.SOPInstanceUID)}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            files.append(str(path))
        results.append(record | {"state": "done", "summary": result.summary, "files": files})
    return results

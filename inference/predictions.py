"""Per-scan predictions and their ground truth, read into one list of records for evaluation.

Why one record type: ``python -m inference evaluate`` scores three kinds of input alike: the
authors' released result file (to reproduce the paper's figures), a plain CSV (another model's
output, a spreadsheet), and a folder of ``python -m inference predict`` outputs (which adds
lesion centres and the lung mask). A truth CSV then completes or overrides the labels and points
at lesion and lung masks.

Every problem with the input raises :class:`PredictionsError` (a ``ValueError``) naming the file
and line, so the command can say what to fix instead of failing half-way through.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

RELEASED_HEADER_LINES = 3
"""The authors' file opens with three lines naming the data set and its image lists."""


class PredictionsError(ValueError):
    """The predictions or truth cannot be read or do not fit together."""


@dataclass(frozen=True)
class LesionCentre:
    """A reported lesion's centroid (patient LPS, mm) and whether it is the primary one."""

    centre_mm: tuple[float, float, float]
    primary: bool


@dataclass(frozen=True)
class ScanRecord:
    """One scan's prediction and truth.

    ``probability`` is None when the scan was not assessable (``not_assessable`` says why).
    ``called_positive`` is the predicting run's own call (folder input only): lesions were
    localized on exactly those scans, so the hit rate is measured on them. The paths are set
    when the input provides them.
    """

    case: str
    probability: float | None
    label: int | None = None
    not_assessable: str | None = None
    called_positive: bool | None = None
    lesions: tuple[LesionCentre, ...] | None = None
    predicted_lungs: Path | None = None
    lesion_mask: Path | None = None
    lung_mask: Path | None = None


@dataclass(frozen=True)
class TruthRow:
    label: int | None
    lesion_mask: Path | None
    lung_mask: Path | None


def load_predictions(path: Path) -> list[ScanRecord]:
    """Records from a predict-output folder, a CSV (``case,probability[,label]``) or the released file."""
    path = Path(path)
    if path.is_dir():
        records = _load_folder(path)
    else:
        text = _read_text(path)
        records = _load_csv(path, text) if _looks_like_csv(path, text) else _load_released(path, text)
    if not records:
        raise PredictionsError(f"{path}: no predictions found")
    _check_unique([r.case for r in records], path)
    return records


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PredictionsError(f"{path}: cannot read: {error}") from error


def _looks_like_csv(path: Path, text: str) -> bool:
    """A ``.csv`` name or a header naming a ``case`` column (the released file has commas in its header)."""
    first = text.lstrip().partition("\n")[0]
    return path.suffix.lower() == ".csv" or "case" in (c.strip() for c in first.split(","))


def _load_released(path: Path, text: str) -> list[ScanRecord]:
    """The authors' result file: header lines, then ``path uid p_negative p_positive label``."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if number <= RELEASED_HEADER_LINES or not line.strip():
            continue
        fields = line.split()
        if len(fields) != 5:
            raise PredictionsError(
                f"{path}, line {number}: expected 'path uid p_negative p_positive label', got {len(fields)} fields"
                " (a CSV needs a header with 'case,probability')"
            )
        where = f"{path}, line {number}"
        records.append(
            ScanRecord(
                case=fields[1],
                probability=_probability(fields[3], where),
                label=_label(fields[4], where),
            )
        )
    return records


def _load_csv(path: Path, text: str) -> list[ScanRecord]:
    """``case,probability`` and optionally ``label``; an empty probability is a not-assessable scan."""
    rows = _csv_rows(path, text, required=("case", "probability"))
    records = []
    for number, row in rows:
        where = f"{path}, line {number}"
        probability = None if not row["probability"] else _probability(row["probability"], where)
        records.append(
            ScanRecord(
                case=row["case"],
                probability=probability,
                label=_label(row.get("label") or "", where),
                not_assessable="no probability given" if probability is None else None,
            )
        )
    return records


def _load_folder(folder: Path) -> list[ScanRecord]:
    """Each subfolder holding a ``findings.json`` is one case, named after the subfolder."""
    from inference.predict import (  # loads torch: only for this input
        FINDINGS_JSON,
        LUNGS_NIFTI,
    )

    records = []
    for case in sorted(p for p in folder.iterdir() if (p / FINDINGS_JSON).is_file()):
        findings = _read_findings(case / FINDINGS_JSON)
        where = str(case / FINDINGS_JSON)
        probability = findings.get("probability")
        lungs = case / LUNGS_NIFTI
        records.append(
            ScanRecord(
                case=case.name,
                probability=None if probability is None else _probability(probability, where),
                not_assessable=(findings.get("not_assessable") or "no probability") if probability is None else None,
                called_positive=_called(findings, where),
                lesions=tuple(_lesion(lesion, where) for lesion in findings.get("lesions") or ()),
                predicted_lungs=lungs if lungs.is_file() else None,
            )
        )
    if not records:
        raise PredictionsError(f"{folder}: no subfolder holds a {FINDINGS_JSON} (an output folder of 'predict')")
    return records


def _read_findings(path: Path) -> dict[str, Any]:
    """The JSON of one ``predict`` run; anything else is an error naming the file."""
    try:
        findings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PredictionsError(f"{path}: cannot read: {error}") from error
    if not isinstance(findings, dict) or "probability" not in findings:
        raise PredictionsError(f"{path}: not a findings file of 'predict' (no 'probability')")
    return findings


def _called(findings: dict[str, Any], where: str) -> bool | None:
    if findings.get("probability") is None:
        return None
    if isinstance(findings.get("positive"), bool):
        return findings["positive"]
    threshold = findings.get("threshold")
    if not isinstance(threshold, (int, float)):
        raise PredictionsError(f"{where}: neither 'positive' nor 'threshold' gives the call")
    return float(findings["probability"]) >= threshold


def _lesion(lesion: Any, where: str) -> LesionCentre:
    try:
        x, y, z = (float(c) for c in lesion["centre_mm"])
        return LesionCentre((x, y, z), bool(lesion.get("primary", False)))
    except (KeyError, TypeError, ValueError) as error:
        raise PredictionsError(f"{where}: a lesion without a valid 'centre_mm' (x, y, z)") from error


def load_truth(path: Path) -> dict[str, TruthRow]:
    """``case,label`` and optionally ``lesion_mask``, ``lung_mask`` (paths relative to the CSV)."""
    path = Path(path)
    rows = _csv_rows(path, _read_text(path), required=("case", "label"))
    _check_unique([row["case"] for _, row in rows], path)
    truth = {}
    for number, row in rows:
        where = f"{path}, line {number}"
        truth[row["case"]] = TruthRow(
            label=_label(row["label"], where),
            lesion_mask=_mask_path(path, row.get("lesion_mask"), where),
            lung_mask=_mask_path(path, row.get("lung_mask"), where),
        )
    return truth


def _mask_path(csv_path: Path, value: str | None, where: str) -> Path | None:
    if not value:
        return None
    mask = (csv_path.parent / value).resolve()
    if not mask.is_file():
        raise PredictionsError(f"{where}: mask {value} does not exist ({mask})")
    return mask


def apply_truth(records: list[ScanRecord], truth: dict[str, TruthRow]) -> list[ScanRecord]:
    """Labels and mask paths of the truth CSV on the records (its labels win over the input's).

    Truth rows with no prediction are ignored here; :func:`unmatched_truth` lists them.
    """
    result = []
    for record in records:
        row = truth.get(record.case)
        if row is None:
            result.append(record)
            continue
        result.append(
            replace(
                record,
                label=record.label if row.label is None else row.label,
                lesion_mask=row.lesion_mask,
                lung_mask=row.lung_mask,
            )
        )
    return result


def unmatched_truth(records: list[ScanRecord], truth: dict[str, TruthRow]) -> list[str]:
    cases = {r.case for r in records}
    return sorted(case for case in truth if case not in cases)


def require_labels(records: list[ScanRecord]) -> None:
    """Every scan must have a label: a metric silently computed on a subset would mislead."""
    missing = [r.case for r in records if r.label is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PredictionsError(
            f"{len(missing)} scan(s) have no label: {shown}; give a label column or a --truth CSV with case,label"
        )


def _csv_rows(path: Path, text: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or ()]
    absent = [c for c in required if c not in columns]
    if absent:
        raise PredictionsError(f"{path}: the header lacks column(s) {', '.join(absent)} (found: {', '.join(columns)})")
    rows = []
    for row in reader:
        cleaned = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        if not any(cleaned.values()):
            continue
        if not cleaned.get("case"):
            raise PredictionsError(f"{path}, line {reader.line_num}: empty case")
        rows.append((reader.line_num, cleaned))
    return rows


def _probability(value: Any, where: str) -> float:
    try:
        probability = float(value)
    except (TypeError, ValueError) as error:
        raise PredictionsError(f"{where}: probability {value!r} is not a number") from error
    if not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
        raise PredictionsError(f"{where}: probability {value!r} is outside [0, 1]")
    return probability


def _label(value: str, where: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise PredictionsError(f"{where}: label {value!r} is not 0 or 1")
    return int(value)


def _check_unique(cases: list[str], path: Path) -> None:
    repeated = sorted(case for case, count in Counter(cases).items() if count > 1)
    if repeated:
        raise PredictionsError(f"{path}: case(s) listed twice: {', '.join(repeated[:5])}")

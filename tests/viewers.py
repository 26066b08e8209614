"""The node's results as viewers read them: dcmjs (under OHIF and Cornerstone) and highdicom.

dcmjs runs in Node.js (``tests/js/read_dicom.js``, installed by ``./setup.sh --test`` from the
npm registry); highdicom is the second, independent reader. Both give the voxels of every
segment on every source CT image, so a test can compare them with the mask they came from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

JS = Path(__file__).resolve().parent / "js"
READER = JS / "read_dicom.js"


def _require_dcmjs() -> str:
    """The node executable; skip (fail in CI) when Node.js or the installed dcmjs is missing."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "dcmjs").is_dir():
        message = "Node.js with dcmjs is not installed (./setup.sh --test installs it into tests/js)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node


def _run(*args: str) -> dict[str, Any]:
    result = subprocess.run([_require_dcmjs(), str(READER), *args], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"dcmjs could not read {args[1]}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


@dataclass(frozen=True)
class ReadSegmentation:
    """A SEG as a reader placed it: ``masks[k]`` is segment ``numbers[k]`` on the CT images
    (images, rows, columns), in the order the CT files were given."""

    numbers: list[int]
    masks: np.ndarray
    info: dict[str, Any]

    def mask(self, number: int) -> np.ndarray:
        return self.masks[self.numbers.index(number)]


def dcmjs_segmentation(seg_path: Path, ct_paths: list[Path]) -> ReadSegmentation:
    """The SEG read by dcmjs (BINARY: placed by its Cornerstone adapter, as OHIF does)."""
    out = seg_path.with_suffix(".dcmjs-masks.bin")
    info = _run("seg", str(seg_path), str(out), *map(str, ct_paths))
    numbers = list(info["mask_segments"])
    rows, columns = info["rows"], info["columns"]
    bits = np.unpackbits(np.fromfile(out, dtype=np.uint8))
    size = len(ct_paths) * rows * columns
    masks = bits[: len(numbers) * size].reshape(len(numbers), len(ct_paths), rows, columns).astype(bool)
    out.unlink()
    return ReadSegmentation(numbers, masks, info)


def highdicom_segmentation(seg_path: Path, ct_paths: list[Path]) -> ReadSegmentation:
    """The SEG read by highdicom: each segment's frames fetched by the source image they name."""
    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in ct_paths]
    numbers = [int(n) for n in seg.segment_numbers]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=False, skip_overlap_checks=True
    )
    masks = np.moveaxis(pixels, -1, 0).astype(bool)  # (images, rows, columns, segments) -> segments first
    return ReadSegmentation(numbers, masks, {"segmentation_type": seg.SegmentationType})


def dcmjs_report(sr_path: Path) -> dict[str, Any]:
    """The TID 1500 report read by dcmjs: its measurement groups (see ``read_dicom.js``)."""
    return _run("sr", str(sr_path))

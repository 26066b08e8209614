"""The files of one CT series -> a :class:`CTVolume` in HU with its patient-space geometry.

Slices are ordered by their position along the slice normal (the cross product of the row and
column cosines), never by InstanceNumber: scanners and PACS number slices head-to-feet,
feet-to-head or by acquisition, and a volume built in the wrong order is a mirrored patient.
Everything that would make the uniform-grid geometry of :class:`CTVolume` a lie (mixed series,
different matrix or pixel spacing, missing slices, uneven spacing, a sheared stack) is a
:class:`VolumeError` that says where, rather than a silently wrong volume.

Memory: headers are read first (without pixel data) to sort and check the series; then each
file is decoded straight into its place of a preallocated array, a few at a time, so building a
volume needs little more than the volume itself. HU are kept as 16-bit integers
(:data:`HU_DTYPE`), half of float32: 315 MB less for every stage of a 600-slice series. CT
stores integers with an integer rescale, so the values are exact; a fractional rescale is
rounded to whole HU (a tenth of the noise of any CT), and values beyond the int16 range (the
extended CT scale ends near 30,000 HU) are clipped. The models were trained and evaluated on
int16 HU too (:func:`inference.io.image_to_volume`).

Decoding: GDCM (through SimpleITK, already the project's volume library) decodes compressed
pixel data 1.6x faster than pydicom's plugins and releases the GIL, so :data:`DECODE_THREADS`
slices decode at once (RICORD, 255 JPEG-lossless slices: 3.4 s with pydicom, 1.1 s with GDCM
on 2 threads). pydicom decodes uncompressed data, what GDCM cannot, and any slice whose rescale
is not an integer offset (GDCM hands back rescaled values; only an integer offset gives the
stored values back exactly): its error message is the one a damaged file gets.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicomnode.geometry import find_gaps, positions_along_normal, slice_normal
from dicomnode.settings import CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE
from inference.types import CTVolume

logger = logging.getLogger(__name__)

#: HU given to pixel padding and to values at or below :data:`OUTSIDE_FOV_HU`: the method treats
#: them as air outside the field of view, and -1000 HU is air by the definition of the HU scale.
AIR_HU = -1000.0
#: Values at or below this are not tissue but the scanner's "outside the reconstruction circle".
OUTSIDE_FOV_HU = -2000.0

# Tolerances. Headers carry decimal strings, so equal values differ by rounding only.
_COSINE_TOLERANCE = 1e-3  # direction cosines (about 0.06 degrees)
_PIXEL_SPACING_TOLERANCE_MM = 1e-3
_DUPLICATE_POSITION_MM = 0.01  # two slices this close along the normal are the same slice
_GAP_TOLERANCE = 0.2  # a gap may differ from the median spacing by this fraction
_GRID_TOLERANCE = 0.1  # a slice may lie this fraction of the spacing off the regular grid
_IN_PLANE_SHIFT_TOLERANCE = 0.1  # in-plane shift between slices, as a fraction of a pixel
_MISSING_SLICE_FACTOR = 1.5  # a gap this many median spacings long is (at least) a missing slice

#: The HU array's type (see the module's docstring).
HU_DTYPE = np.int16
_HU_RANGE = (float(np.iinfo(HU_DTYPE).min), float(np.iinfo(HU_DTYPE).max))

#: Slices decoded at once (GDCM releases the GIL while it decodes).
DECODE_THREADS = min(4, os.cpu_count() or 1)

_REQUIRED = ("Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")


class VolumeError(ValueError):
    """The files cannot make one correct volume; the message says why and, where it can, which file."""


@dataclass(frozen=True)
class SeriesVolume:
    """A volume with the source datasets in its slice order (``datasets[k]`` is ``volume.hu[k]``).

    The datasets carry no PixelData: the encoders need only their attributes, and keeping
    hundreds of compressed slices would double the memory a series needs.
    """

    volume: CTVolume
    datasets: tuple[Dataset, ...]

    def __post_init__(self) -> None:
        if len(self.datasets) != self.volume.hu.shape[0]:
            raise ValueError(
                f"SeriesVolume: {len(self.datasets)} datasets for {self.volume.hu.shape[0]} slices"
            )


@dataclass(frozen=True)
class _Grid:
    """In-plane geometry shared by every slice of the series."""

    rows: int
    columns: int
    row_spacing_mm: float  # PixelSpacing[0]: distance between rows (dy)
    column_spacing_mm: float  # PixelSpacing[1]: distance between columns (dx)
    row_cosine: np.ndarray  # direction of increasing column index (x)
    column_cosine: np.ndarray  # direction of increasing row index (y)
    normal: np.ndarray


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: Dataset
    ipp: np.ndarray
    position_mm: float  # along the slice normal


@dataclass(frozen=True)
class DecodedSlice:
    """One file read ahead of its volume (:func:`read_slice`): its checked header and its HU
    plane (:data:`HU_DTYPE`)."""

    header: Dataset
    hu: np.ndarray


def read_slice(path: Path) -> DecodedSlice:
    """Read and decode one file as :func:`build_volume` does, for reading a series ahead during
    its quiet period (:mod:`dicomnode.jobs.prefetch`). Raises :class:`VolumeError`."""
    header = _read_header(path)
    rows, columns = _number(header, "Rows", 0, int), _number(header, "Columns", 0, int)
    hu = np.empty((rows, columns), dtype=HU_DTYPE)
    _stored_to_hu(_decode_pixels(path, header, (rows, columns)), header, out=hu)
    return DecodedSlice(header, hu)


def build_volume(paths: Sequence[Path], decoded: Mapping[Path, DecodedSlice] | None = None) -> SeriesVolume:
    """Read, check, sort and decode the files of one single-frame CT series.

    ``decoded`` holds files already read by :func:`read_slice`, by path: their headers and
    planes are taken from there (the caller vouches that the files have not changed since).
    Raises :class:`VolumeError` for anything that would give a wrong or partial volume.
    """
    if not paths:
        raise VolumeError("no files to build a volume from")
    decoded = decoded or {}
    headers = [
        (Path(path), decoded[Path(path)].header if Path(path) in decoded else _read_header(Path(path))) for path in paths
    ]
    grid = _common_grid(headers)
    slices = _drop_duplicates(_sort_along_normal(headers, grid))
    if len(slices) < 2:
        raise VolumeError(f"a volume needs at least 2 slices at distinct positions, got {len(slices)}")
    slice_spacing = _uniform_slice_spacing([s.position_mm for s in slices])
    _check_in_plane_alignment(slices, grid)
    hu = _decode_slices(slices, grid, decoded)
    volume = CTVolume(
        hu=hu,
        spacing=(grid.column_spacing_mm, grid.row_spacing_mm, slice_spacing),
        origin=tuple(float(v) for v in slices[0].ipp),
        direction=np.column_stack([grid.row_cosine, grid.column_cosine, grid.normal]),
    )
    logger.info(
        "Built a volume of %d slices of %dx%d, spacing %.3f x %.3f x %.3f mm",
        hu.shape[0], grid.rows, grid.columns, *volume.spacing,
    )
    return SeriesVolume(volume=volume, datasets=tuple(s.header for s in slices))


# --- headers -------------------------------------------------------------------------------


def _read_header(path: Path) -> Dataset:
    """The file's attributes without pixel data, checked to be a single-frame CT image."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        list(header)  # pydicom converts values when first read: a damaged one must fail here, not in a check
    except Exception as error:  # pydicom raises many types for damaged files; all mean the same
        raise VolumeError(f"{path}: not a readable DICOM file ({error})") from error
    _check_sop_class(path, header)
    missing = [keyword for keyword in _REQUIRED if header.get(keyword) in (None, "")]
    if missing:
        raise VolumeError(f"{path}: missing {', '.join(missing)}")
    return header


def _check_sop_class(path: Path, header: Dataset) -> None:
    """Only single-frame CT Image Storage is analysed."""
    _fill_from_file_meta(path, header)
    sop_class = str(header.get("SOPClassUID") or "")
    number_of_frames = _number(header, "NumberOfFrames", 1, int)
    if sop_class == ENHANCED_CT_IMAGE_STORAGE or number_of_frames > 1:
        raise VolumeError(f"{path}: Enhanced CT multi-frame is not analysed by this version")
    if sop_class != CT_IMAGE_STORAGE:
        raise VolumeError(f"{path}: SOP class {sop_class or '(none)'} is not CT Image Storage")


def _fill_from_file_meta(path: Path, header: Dataset) -> None:
    """Empty SOPClassUID/SOPInstanceUID are taken from the file meta information (logged).

    Some exporters empty them in the dataset while the file meta still names them (the
    TotalSegmentator example files do); the result objects must reference both.
    """
    file_meta = getattr(header, "file_meta", None)
    for keyword, meta_keyword in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        value = str(getattr(file_meta, meta_keyword, "") or "")
        if not header.get(keyword) and value:
            logger.warning("%s: %s is empty; using the file meta's %s", path, keyword, value)
            header.add_new(keyword, "UI", value)  # as a UI: the empty element may have been sent with another VR


def _common_grid(headers: Sequence[tuple[Path, Dataset]]) -> _Grid:
    """Check that every file belongs to the first one's series and shares its image plane."""
    first_path, first = headers[0]
    for path, header in headers[1:]:
        _check_same_series(first_path, first, path, header)
    _warn_about_frames_of_reference(headers)
    spacing = _floats(first, "PixelSpacing", first_path)
    if spacing.shape != (2,) or not (spacing > 0).all():
        raise VolumeError(f"{first_path}: PixelSpacing must be two positive numbers, got {spacing.tolist()}")
    row_spacing, column_spacing = (float(v) for v in spacing)
    row_cosine, column_cosine = _unit_cosines(first_path, first)
    return _Grid(
        rows=_number(first, "Rows", 0, int),
        columns=_number(first, "Columns", 0, int),
        row_spacing_mm=row_spacing,
        column_spacing_mm=column_spacing,
        row_cosine=row_cosine,
        column_cosine=column_cosine,
        normal=slice_normal(np.concatenate([row_cosine, column_cosine])),
    )


def _check_same_series(first_path: Path, first: Dataset, path: Path, header: Dataset) -> None:
    for keyword in ("SeriesInstanceUID", "Rows", "Columns"):
        if header.get(keyword) != first.get(keyword):
            raise VolumeError(
                f"{path}: {keyword} {header.get(keyword)} differs from {first.get(keyword)} of {first_path}"
                + (" (files of more than one series)" if keyword == "SeriesInstanceUID" else "")
            )
    for keyword, tolerance in (
        ("PixelSpacing", _PIXEL_SPACING_TOLERANCE_MM),
        ("ImageOrientationPatient", _COSINE_TOLERANCE),
    ):
        mine, theirs = _floats(header, keyword, path), _floats(first, keyword, first_path)
        if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=0, atol=tolerance):
            raise VolumeError(f"{path}: {keyword} {mine.tolist()} differs from {theirs.tolist()} of {first_path}")


def _warn_about_frames_of_reference(headers: Sequence[tuple[Path, Dataset]]) -> None:
    """Several FrameOfReferenceUIDs in one series are logged, not refused.

    Some de-identified collections (LIDC-IDRI) give every slice its own FrameOfReferenceUID
    although the slices share one acquisition; positions and orientation are checked on their
    own, so the geometry does not depend on it. The SEG encoder decides what to write.
    """
    frames = {str(header.get("FrameOfReferenceUID") or "") for _, header in headers}
    if len(frames) > 1:
        logger.warning(
            "The %d slices of series %s carry %d different FrameOfReferenceUIDs (a de-identification artifact?)",
            len(headers), headers[0][1].get("SeriesInstanceUID"), len(frames),
        )


def _unit_cosines(path: Path, header: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines, normalised; they must be perpendicular."""
    iop = _floats(header, "ImageOrientationPatient", path)
    if iop.shape != (6,):
        raise VolumeError(f"{path}: ImageOrientationPatient must have 6 values, got {iop.tolist()}")
    row, column = iop[:3], iop[3:]
    norms = np.linalg.norm(row), np.linalg.norm(column)
    if min(norms) < 0.5 or abs(float(np.dot(row, column))) / (norms[0] * norms[1]) > _COSINE_TOLERANCE:
        raise VolumeError(f"{path}: ImageOrientationPatient {iop.tolist()} is not two perpendicular unit vectors")
    return row / norms[0], column / norms[1]


def _floats(header: Dataset, keyword: str, path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in header[keyword].value], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise VolumeError(f"{path}: {keyword} is not a list of numbers ({error})") from error
    if not np.isfinite(values).all():
        raise VolumeError(f"{path}: {keyword} {values.tolist()} is not finite")
    return values


# --- order and spacing ---------------------------------------------------------------------


def _sort_along_normal(headers: Sequence[tuple[Path, Dataset]], grid: _Grid) -> list[_Slice]:
    """Slices by ascending position along the normal; ties broken so that file order never matters."""
    ipps = [_floats(header, "ImagePositionPatient", path) for path, header in headers]
    for (path, _), ipp in zip(headers, ipps):
        if ipp.shape != (3,):
            raise VolumeError(f"{path}: ImagePositionPatient must have 3 values, got {ipp.tolist()}")
    orientation = np.concatenate([grid.row_cosine, grid.column_cosine])
    positions = positions_along_normal(orientation, ipps)
    slices = [
        _Slice(path=path, header=header, ipp=ipp, position_mm=float(position))
        for (path, header), ipp, position in zip(headers, ipps, positions)
    ]
    return sorted(
        slices,
        key=lambda s: (s.position_mm, _number(s.header, "InstanceNumber", 0, int), str(s.header.get("SOPInstanceUID"))),
    )


def _drop_duplicates(slices: list[_Slice]) -> list[_Slice]:
    """Keep one slice per position (the first in sort order); a resent or repeated slice is not a slice."""
    kept = [slices[0]]
    for candidate in slices[1:]:
        if candidate.position_mm - kept[-1].position_mm < _DUPLICATE_POSITION_MM:
            logger.warning(
                "Dropped %s (SOP instance %s): same position %.3f mm along the normal as SOP instance %s",
                candidate.path, candidate.header.get("SOPInstanceUID"), candidate.position_mm,
                kept[-1].header.get("SOPInstanceUID"),
            )
            continue
        kept.append(candidate)
    return kept


def _uniform_slice_spacing(positions: Sequence[float]) -> float:
    """The slice spacing of evenly spaced positions; anything else (a missing slice) is an error.

    A gap of :data:`_MISSING_SLICE_FACTOR` median spacings is reported as a missing slice (the
    series rules' test, shared through :mod:`dicomnode.geometry`); every other gap must be near
    the median gap, and every slice near its place on the regular grid from the first to the
    last slice. The returned spacing is that grid's (first to last over n-1): it equals the
    median for a regular series, and unlike the median it stays right when the headers round
    the positions (gaps of 0.6 and 0.7 mm in a 0.625 mm series), where a median would let the
    error add up along the stack.
    """
    positions_mm = np.asarray(positions, dtype=np.float64)
    missing = find_gaps(positions_mm, _MISSING_SLICE_FACTOR)
    if missing:
        before, after, median = missing[0]
        raise VolumeError(
            f"missing slice: a gap of {after - before:.4g} mm between positions {before:.3f} and {after:.3f} mm "
            f"along the slice normal, where the median spacing is {median:.4g} mm"
            + (f" ({len(missing)} such gaps)" if len(missing) > 1 else "")
        )
    gaps = np.diff(positions_mm)
    median = float(np.median(gaps))
    for index, gap in enumerate(gaps):
        if abs(gap - median) > _GAP_TOLERANCE * median:
            raise VolumeError(
                f"slice spacing is not uniform: a gap of {gap:.4g} mm between positions "
                f"{positions_mm[index]:.3f} and {positions_mm[index + 1]:.3f} mm along the slice normal, "
                f"where the median spacing is {median:.4g} mm"
            )
    spacing = float(positions_mm[-1] - positions_mm[0]) / (len(positions_mm) - 1)
    grid = positions_mm[0] + spacing * np.arange(len(positions_mm))
    worst = int(np.argmax(np.abs(positions_mm - grid)))
    if abs(positions_mm[worst] - grid[worst]) > _GRID_TOLERANCE * spacing:
        raise VolumeError(
            f"slice positions drift off a regular grid: the slice at {positions_mm[worst]:.3f} mm along the "
            f"normal is {abs(positions_mm[worst] - grid[worst]):.3g} mm from its place at spacing {spacing:.4g} mm"
        )
    return spacing


def _check_in_plane_alignment(slices: Sequence[_Slice], grid: _Grid) -> None:
    """Slices must stack straight along the normal; a sheared stack (gantry tilt) has no such geometry."""
    offsets = np.array([s.ipp - slices[0].ipp for s in slices])
    shift = np.max(np.abs(offsets @ np.column_stack([grid.row_cosine, grid.column_cosine])), axis=0)
    limit = _IN_PLANE_SHIFT_TOLERANCE * np.array([grid.column_spacing_mm, grid.row_spacing_mm])
    if np.any(shift > limit):
        raise VolumeError(
            f"slices are shifted in-plane by up to {shift.max():.3g} mm relative to the first "
            "(a gantry-tilted or sheared stack): not analysed by this version"
        )


# --- pixels --------------------------------------------------------------------------------


def _decode_slices(slices: Sequence[_Slice], grid: _Grid, decoded: Mapping[Path, DecodedSlice]) -> np.ndarray:
    """Decode each file into its place of one preallocated HU array, :data:`DECODE_THREADS`
    at a time; a plane in ``decoded`` is copied instead.

    The first failing slice in slice order raises; the slices not yet started are cancelled.
    """
    try:
        hu = np.empty((len(slices), grid.rows, grid.columns), dtype=HU_DTYPE)
    except MemoryError as error:  # the sizes come from the headers, which may claim anything
        raise VolumeError(f"{len(slices)} slices of {grid.rows} x {grid.columns} do not fit in memory") from error

    def decode_into(index: int) -> None:
        item = slices[index]
        ready = decoded.get(item.path)
        if ready is not None and ready.hu.shape == hu.shape[1:]:
            hu[index] = ready.hu
        else:
            _stored_to_hu(_decode_pixels(item.path, item.header, hu.shape[1:]), item.header, out=hu[index])

    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode") as pool:
        futures = [pool.submit(decode_into, index) for index in range(len(slices))]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return hu


def _decode_pixels(path: Path, header: Dataset, shape: tuple[int, ...]) -> np.ndarray:
    """The stored values of one file (``shape``: rows, columns), by GDCM where it can, else by pydicom."""
    stored = _decode_with_gdcm(path, header)
    if stored is None:
        stored = _decode_with_pydicom(path)
    if stored.shape != tuple(shape):
        raise VolumeError(f"{path}: pixel data has shape {stored.shape}, expected {tuple(shape)}")
    return stored


def _decode_with_gdcm(path: Path, header: Dataset) -> np.ndarray | None:
    """The stored values as GDCM decodes them, or None where pydicom is to decode (and judge) the file.

    Only compressed (encapsulated) pixel data goes to GDCM: uncompressed data costs pydicom
    nothing to decode, and pydicom checks its length, where GDCM returns whatever the bytes
    give (a file truncated on disk would become a wrong slice). GDCM applies RescaleSlope and
    RescaleIntercept itself; with a slope of 1 and an integer intercept (every CT series here)
    subtracting the intercept gives the stored values exactly.
    """
    transfer_syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if transfer_syntax is None or not transfer_syntax.is_encapsulated:
        return None
    slope = _number(header, "RescaleSlope", 1.0)
    intercept = _number(header, "RescaleIntercept", 0.0)
    if slope != 1.0 or not float(intercept).is_integer():
        return None
    try:
        image = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
    except RuntimeError:  # GDCM cannot decode it: pydicom decides, and words the error
        return None
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind not in "iu" or values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[0] != 1):
        return None
    return np.subtract(values.reshape(values.shape[-2:]), int(intercept), dtype=np.int32)


def _decode_with_pydicom(path: Path) -> np.ndarray:
    """The stored values as pydicom decodes them; the dataset (and its compressed bytes) is dropped on return."""
    try:
        return pydicom.dcmread(path).pixel_array
    except Exception as error:  # decoders raise many types for truncated or corrupt data
        raise VolumeError(f"{path}: pixel data cannot be decoded ({error})") from error


def _stored_to_hu(stored: np.ndarray, header: Dataset, out: np.ndarray) -> None:
    """Rescale stored values to whole HU in ``out`` (a :data:`HU_DTYPE` plane); padding and
    outside-the-field-of-view become air.

    The arithmetic runs in a float32 plane (exact for integer stored values and rescales, which
    stay far below 2**24), then rounds and clips into ``out``.
    """
    slope = _number(header, "RescaleSlope", 1.0)
    intercept = _number(header, "RescaleIntercept", 0.0)
    hu = np.multiply(stored, slope, dtype=np.float32, casting="unsafe")
    hu += np.float32(intercept)
    padding = _padding_mask(stored, header)
    if padding is not None:
        hu[padding] = AIR_HU
    hu[hu <= OUTSIDE_FOV_HU] = AIR_HU
    np.rint(hu, out=hu)
    np.clip(hu, *_HU_RANGE, out=hu)
    out[...] = hu


def _number(header: Dataset, keyword: str, default: float, kind: type = float) -> Any:
    """One finite number (``default`` when absent); anything else is a VolumeError naming the file."""
    value = header.get(keyword)
    if value in (None, ""):
        return default
    where = getattr(header, "filename", "")  # dcmread's path
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise VolumeError(f"{where}: {keyword} {value!r} is not one number") from error
    if not math.isfinite(number):
        raise VolumeError(f"{where}: {keyword} {value!r} is not finite")
    return number


def _padding_mask(stored: np.ndarray, header: Dataset) -> np.ndarray | None:
    """Where the stored values are pixel padding (a value, or a range up to PixelPaddingRangeLimit)."""
    if header.get("PixelPaddingValue") in (None, ""):
        return None
    low = _as_stored(_number(header, "PixelPaddingValue", 0, int), header)
    if header.get("PixelPaddingRangeLimit") in (None, ""):
        return stored == low
    high = _as_stored(_number(header, "PixelPaddingRangeLimit", 0, int), header)
    low, high = min(low, high), max(low, high)
    return (stored >= low) & (stored <= high)


def _as_stored(value: int, header: Dataset) -> int:
    """A padding value in the pixels' signedness.

    Its VR (US or SS) follows PixelRepresentation, but files in the wild write -2000 as US 63536
    (LIDC does); read that as the signed value it stands for.
    """
    bits = int(header.get("BitsAllocated") or 16)
    if int(header.get("PixelRepresentation") or 0) == 1 and value >= 2 ** (bits - 1):
        return value - 2**bits
    return value

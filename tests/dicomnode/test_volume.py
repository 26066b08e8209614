"""The volume builder: order along the normal, HU, geometry checks, every transfer syntax, real series."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, EnhancedCTImageStorage, RLELossless, generate_uid

from conftest import SHARED_DATA, require_path
from dicomnode import volume as volume_module
from dicomnode.volume import AIR_HU, SeriesVolume, VolumeError, build_volume
from factories import TEST_UID_ROOT, PhantomSeries

CT = SHARED_DATA / "ct"


def write(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write datasets as files in reverse order of their list (file order must not matter)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in reversed(list(enumerate(datasets))):
        path = directory / f"{index:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def modified(phantom: PhantomSeries, change: Callable[[int, Dataset], None]) -> list[Dataset]:
    """The phantom's datasets, each passed through ``change(index, dataset)``."""
    datasets = phantom.datasets()
    for index, ds in enumerate(datasets):
        change(index, ds)
    return datasets


def expected_hu(phantom: PhantomSeries) -> np.ndarray:
    """The phantom as the factory stores it (rounded, clipped at stored 0), slice 0 first."""
    return np.clip(np.round(phantom.hu() + 1024), 0, 65535) - 1024


def set_stored(ds: Dataset, stored: np.ndarray) -> None:
    ds.PixelData = stored.astype(np.uint16 if ds.PixelRepresentation == 0 else np.int16).tobytes()


# --- order and geometry --------------------------------------------------------------------


def test_shuffled_files_sort_along_the_normal(tmp_path: Path) -> None:
    phantom = PhantomSeries()
    paths = phantom.write(tmp_path / "series")  # shuffled names
    rng = np.random.default_rng(3)
    series = build_volume([paths[i] for i in rng.permutation(len(paths))])

    volume = series.volume
    # The factory writes slice 0 most cranial (z decreasing); the normal of IOP [1,0,0,0,1,0]
    # points to the head (+z), so the volume starts at the most caudal slice.
    np.testing.assert_array_equal(volume.hu, expected_hu(phantom)[::-1])
    assert volume.hu.dtype == np.int16  # half of float32; CT HU are whole numbers
    assert volume.spacing == pytest.approx((4.0, 4.0, 5.0))
    assert volume.origin == pytest.approx((-192.0, -192.0, -195.0))
    np.testing.assert_allclose(volume.direction, np.eye(3))
    positions = [float(ds.ImagePositionPatient[2]) for ds in series.datasets]
    assert positions == sorted(positions)
    assert all("PixelData" not in ds for ds in series.datasets)


def test_feet_to_head_series(tmp_path: Path) -> None:
    """Slice 0 most caudal and InstanceNumbers scrambled: positions decide, not numbers."""
    phantom = PhantomSeries(slices=12)
    rng = np.random.default_rng(5)
    numbers = rng.permutation(12) + 1

    def feet_first(index: int, ds: Dataset) -> None:
        ds.ImagePositionPatient = [-192.0, -192.0, -300.0 + index * 5.0]
        ds.InstanceNumber = int(numbers[index])

    series = build_volume(write(modified(phantom, feet_first), tmp_path))
    np.testing.assert_array_equal(series.volume.hu, expected_hu(phantom))
    assert series.volume.origin == pytest.approx((-192.0, -192.0, -300.0))


def test_normal_pointing_to_the_feet(tmp_path: Path) -> None:
    """IOP [1,0,0,0,-1,0] has its normal along -z: the volume runs head to feet, z descending."""
    phantom = PhantomSeries(slices=10)

    def flipped_rows(index: int, ds: Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
        ds.ImagePositionPatient = [-192.0, 192.0, -index * 5.0]

    series = build_volume(write(modified(phantom, flipped_rows), tmp_path))
    z = [float(ds.ImagePositionPatient[2]) for ds in series.datasets]
    assert z == sorted(z, reverse=True)
    np.testing.assert_array_equal(series.volume.hu, expected_hu(phantom))
    np.testing.assert_allclose(series.volume.direction, np.diag([1.0, -1.0, -1.0]))
    assert series.volume.origin == pytest.approx((-192.0, 192.0, 0.0))
    assert series.volume.spacing[2] == pytest.approx(5.0)


def test_rectangular_pixels_give_x_and_y_spacing(tmp_path: Path) -> None:
    """PixelSpacing is [row spacing (dy), column spacing (dx)]; CTVolume.spacing is (x, y, z)."""
    phantom = PhantomSeries(slices=4, rows=32, columns=48)
    series = build_volume(write(modified(phantom, lambda i, ds: setattr(ds, "PixelSpacing", [0.5, 0.8])), tmp_path))
    assert series.volume.spacing == pytest.approx((0.8, 0.5, 5.0))
    assert series.volume.hu.shape == (4, 32, 48)


def test_duplicate_positions_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    phantom = PhantomSeries(slices=10)
    datasets = phantom.datasets()
    duplicate = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(datasets[4])))
    duplicate.SOPInstanceUID = duplicate.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=TEST_UID_ROOT)
    caplog.set_level(logging.WARNING, logger="dicomnode.volume")

    series = build_volume(write([*datasets, duplicate], tmp_path))

    assert series.volume.hu.shape[0] == 10
    assert len({ds.SOPInstanceUID for ds in series.datasets}) == 10
    assert "same position" in caplog.text


def _encoded(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --- geometry errors -----------------------------------------------------------------------


def test_missing_middle_slice_names_the_gap(tmp_path: Path) -> None:
    paths = PhantomSeries(slices=40, missing=(20,)).write(tmp_path)
    with pytest.raises(VolumeError, match=r"gap of 10 mm between positions -105\.000 and -95\.000 mm.*median spacing is 5 mm"):
        build_volume(paths)


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    def uneven(index: int, ds: Dataset) -> None:
        ds.ImagePositionPatient = [-192.0, -192.0, -index * 5.0 - (1.5 if index >= 5 else 0.0)]

    with pytest.raises(VolumeError, match="not uniform: a gap of 6.5 mm"):
        build_volume(write(modified(PhantomSeries(slices=10), uneven), tmp_path))


def test_sheared_stack_is_refused(tmp_path: Path) -> None:
    """A gantry-tilted series: each slice shifted in y while the orientation stays axial."""

    def sheared(index: int, ds: Dataset) -> None:
        ds.ImagePositionPatient = [-192.0, -192.0 + index * 1.0, -index * 5.0]

    with pytest.raises(VolumeError, match="shifted in-plane"):
        build_volume(write(modified(PhantomSeries(slices=10), sheared), tmp_path))


def test_mixed_series_are_refused(tmp_path: Path) -> None:
    first = PhantomSeries(slices=5).write(tmp_path / "a")
    second = PhantomSeries(slices=5).write(tmp_path / "b")
    with pytest.raises(VolumeError, match="more than one series"):
        build_volume(first + second)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("PixelSpacing", [4.0, 4.5], "PixelSpacing"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 0.995, 0.0998], "ImageOrientationPatient"),
    ],
)
def test_a_slice_with_another_plane_is_refused(tmp_path: Path, keyword: str, value: list[float], message: str) -> None:
    datasets = PhantomSeries(slices=6).datasets()
    setattr(datasets[3], keyword, value)
    with pytest.raises(VolumeError, match=message):
        build_volume(write(datasets, tmp_path))


def test_a_slice_with_another_matrix_is_refused(tmp_path: Path) -> None:
    datasets = PhantomSeries(slices=6).datasets()
    datasets[2] = PhantomSeries(slices=6, rows=64, series_uid=datasets[0].SeriesInstanceUID).datasets()[2]
    with pytest.raises(VolumeError, match="Rows 64 differs from 96"):
        build_volume(write(datasets, tmp_path))


def test_enhanced_ct_is_refused(tmp_path: Path) -> None:
    def enhanced(index: int, ds: Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage

    with pytest.raises(VolumeError, match="Enhanced CT multi-frame is not analysed by this version"):
        build_volume(write(modified(PhantomSeries(slices=3), enhanced), tmp_path))


def test_a_single_slice_is_not_a_volume(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="at least 2 slices"):
        build_volume(PhantomSeries(slices=1).write(tmp_path))


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no files"):
        build_volume([])


def test_not_dicom_names_the_file(tmp_path: Path) -> None:
    paths = PhantomSeries(slices=3).write(tmp_path)
    paths[1].write_bytes(b"not a DICOM file at all")
    with pytest.raises(VolumeError, match=f"{paths[1].name}: not a readable DICOM file"):
        build_volume(paths)


def test_truncated_pixel_data_names_the_file(tmp_path: Path) -> None:
    paths = PhantomSeries(slices=5).write(tmp_path)
    paths[2].write_bytes(paths[2].read_bytes()[:-1000])
    with pytest.raises(VolumeError, match=f"{paths[2].name}: pixel data cannot be decoded"):
        build_volume(paths)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_compressed_pixel_data_names_the_file(tmp_path: Path) -> None:
    datasets = PhantomSeries(slices=4).datasets()
    for ds in datasets:
        ds.compress(RLELossless)
    paths = write(datasets, tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:-3000])
    with pytest.raises(VolumeError, match=paths[1].name):
        build_volume(paths)


# --- HU ------------------------------------------------------------------------------------


def test_rescale_is_applied_per_slice(tmp_path: Path) -> None:
    """Odd slices stored at half-HU resolution with another slope and intercept: rescaled, then
    rounded to whole HU (half-way values to even, as numpy rounds)."""
    phantom = PhantomSeries(slices=6)
    hu = phantom.hu()

    def rescaled(index: int, ds: Dataset) -> None:
        if index % 2:
            ds.RescaleSlope, ds.RescaleIntercept = 0.5, -2048
            set_stored(ds, np.round((hu[index] + 2048) * 2))

    series = build_volume(write(modified(phantom, rescaled), tmp_path))
    result = series.volume.hu[::-1]  # slice 0 of the phantom is the last along the normal
    np.testing.assert_array_equal(result[0::2], expected_hu(phantom)[0::2])
    halves = np.round((hu[1::2] + 2048) * 2) * 0.5 - 2048
    assert np.any(halves % 1)  # the test has fractional HU to round
    np.testing.assert_array_equal(result[1::2], np.round(halves))


def test_hu_beyond_the_int16_range_are_clipped(tmp_path: Path) -> None:
    """A slope that takes stored values past 32767 HU (no CT does) clips them, rather than
    wrapping a bright voxel round to air."""
    phantom = PhantomSeries(slices=3, rows=16, columns=16)

    def bright(index: int, ds: Dataset) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = 10, 0
        set_stored(ds, np.full((16, 16), 4000))

    hu = build_volume(write(modified(phantom, bright), tmp_path)).volume.hu
    assert hu.dtype == np.int16
    assert np.all(hu == 32767)


def padded_phantom(padding: int, written_as_unsigned: bool) -> list[Dataset]:
    """Signed pixels, intercept 0 (stored = HU), a padded border and a -2048 disc outside the FOV."""
    phantom = PhantomSeries(slices=4, rows=32, columns=32)
    hu = np.round(phantom.hu()).astype(np.int16)

    def signed(index: int, ds: Dataset) -> None:
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        stored = hu[index].copy()
        stored[:, :3] = padding
        stored[0, 10] = -2048
        set_stored(ds, stored)
        ds.PixelPaddingValue = padding
        # LIDC writes -2000 as US 63536 although the pixels are signed.
        ds["PixelPaddingValue"].VR = "US" if written_as_unsigned else "SS"
        if written_as_unsigned:
            ds.PixelPaddingValue = padding + 65536

    return modified(phantom, signed)


@pytest.mark.parametrize("written_as_unsigned", [False, True])
def test_padding_and_outside_fov_become_air(tmp_path: Path, written_as_unsigned: bool) -> None:
    series = build_volume(write(padded_phantom(-1500, written_as_unsigned), tmp_path))
    hu = series.volume.hu
    assert np.all(hu[:, :, :3] == AIR_HU)
    assert np.all(hu[:, 0, 10] == AIR_HU)
    assert hu.min() >= -1100  # nothing left of -1500 or -2048
    assert np.any(hu[:, :, 3:] > 0)  # the body is still there


def test_padding_range(tmp_path: Path) -> None:
    def ranged(index: int, ds: Dataset) -> None:
        ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 0, 10  # stored units: HU -1024..-1014

    series = build_volume(write(modified(PhantomSeries(slices=3), ranged), tmp_path))
    assert series.volume.hu.min() > -1014


# --- transfer syntaxes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def explicit_build(tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    return build_volume(PhantomSeries(slices=8).write(tmp_path_factory.mktemp("explicit")))


def rle(ds: Dataset) -> None:
    ds.compress(RLELossless)


def deflated(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


@pytest.mark.parametrize("encode", [rle, deflated], ids=["rle", "deflated"])
def test_transfer_syntaxes_build_identically(
    tmp_path: Path, explicit_build: SeriesVolume, encode: Callable[[Dataset], None]
) -> None:
    datasets = modified(PhantomSeries(slices=8), lambda index, ds: encode(ds))
    paths = write(datasets, tmp_path)
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in paths} == {
        str(datasets[0].file_meta.TransferSyntaxUID)
    }
    series = build_volume(paths)
    np.testing.assert_array_equal(series.volume.hu, explicit_build.volume.hu)
    assert series.volume.spacing == explicit_build.volume.spacing
    assert series.volume.origin == explicit_build.volume.origin


# --- memory --------------------------------------------------------------------------------


def test_memory_stays_near_one_volume(tmp_path: Path) -> None:
    """Slices decode one at a time into the preallocated array: the peak stays below two volumes."""
    paths = PhantomSeries(slices=60, rows=256, columns=256).write(tmp_path)
    volume_bytes = 60 * 256 * 256 * 2  # int16 HU
    tracemalloc.start()
    try:
        series = build_volume(paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert series.volume.hu.nbytes == volume_bytes
    assert peak < 1.5 * volume_bytes, f"peak {peak / 1e6:.1f} MB for a {volume_bytes / 1e6:.1f} MB volume"


# --- real series ---------------------------------------------------------------------------


REAL_SERIES = [
    # folder, slices, spacing (x, y, z) in mm
    ("ricord1a-000082-covid", 255, (0.703125, 0.703125, 1.25)),  # JPEG lossless
    ("petct-wholebody", 269, (0.9765625, 0.9765625, 2.5)),  # JPEG-LS
    ("totalseg-example/dicom", 20, (0.9765625, 0.9765625, 2.0)),  # JPEG 2000
    ("lidc-idri-0001", 133, (0.703125, 0.703125, 2.5)),  # explicit VR little endian
]


@pytest.mark.parametrize(("folder", "slices", "spacing"), REAL_SERIES, ids=[r[0].split("/")[0] for r in REAL_SERIES])
def test_real_series(folder: str, slices: int, spacing: tuple[float, float, float]) -> None:
    directory = require_path(CT / folder)
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix != ".xml")
    series = build_volume(paths)
    volume = series.volume

    assert volume.hu.shape[0] == slices == len(series.datasets)
    assert volume.spacing == pytest.approx(spacing)
    normal = volume.direction[:, 2]
    positions = [float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)) for ds in series.datasets]
    assert positions == sorted(positions)

    # One slice against pydicom's own decode and modality LUT.
    reference = pydicom.dcmread(paths[len(paths) // 2])
    index = [ds.SOPInstanceUID for ds in series.datasets].index(reference.SOPInstanceUID or reference.file_meta.MediaStorageSOPInstanceUID)
    expected = apply_modality_lut(reference.pixel_array, reference)
    expected[expected <= -2000] = AIR_HU
    assert np.all(expected % 1 == 0)  # whole HU: the int16 volume holds them exactly
    np.testing.assert_array_equal(volume.hu[index], expected)
    assert -1100 <= volume.hu.min() and volume.hu.max() < 4000


@pytest.mark.parametrize(("folder", "slices", "spacing"), REAL_SERIES, ids=[r[0].split("/")[0] for r in REAL_SERIES])
def test_gdcm_decodes_real_series_as_pydicom_does(
    folder: str, slices: int, spacing: tuple[float, float, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every compressed slice of the real series goes the fast way (GDCM), and gives pydicom's volume exactly."""
    directory = require_path(CT / folder)
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix != ".xml")
    by_gdcm = 0
    gdcm_decode = volume_module._decode_with_gdcm

    def counted(path: Path, header: Dataset) -> np.ndarray | None:
        nonlocal by_gdcm
        stored = gdcm_decode(path, header)
        by_gdcm += stored is not None
        return stored

    monkeypatch.setattr(volume_module, "_decode_with_gdcm", counted)
    fast = build_volume(paths).volume.hu
    assert by_gdcm == (0 if folder == "lidc-idri-0001" else slices)  # LIDC is uncompressed: pydicom's
    monkeypatch.setattr(volume_module, "_decode_with_gdcm", lambda path, header: None)
    np.testing.assert_array_equal(build_volume(paths).volume.hu, fast)

"""Reading CT for the model commands (``python -m inference predict``, training): DICOM folders
and NIfTI files, through SimpleITK, so that this package never needs pydicom.

SimpleITK (GDCM inside) sorts the slices along the normal, applies RescaleSlope/Intercept and
decodes JPEG lossless, JPEG-LS and JPEG 2000; padding keeps its rescaled value (at or below
-2000 HU), which the analysis treats as air outside the field of view. NIfTI geometry is
converted to LPS by SimpleITK, the convention of :class:`CTVolume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.types import CTVolume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class ReadError(ValueError):
    """The path holds no readable CT volume."""


def read_volume(path: Path) -> CTVolume:
    """A CT volume from a DICOM series folder (the largest series in it) or a NIfTI file."""
    path = Path(path)
    if path.is_dir():
        return image_to_volume(_read_dicom_folder(path))
    if path.name.endswith(NIFTI_SUFFIXES):
        return image_to_volume(sitk.ReadImage(str(path)))
    raise ReadError(f"{path}: neither a DICOM folder nor a NIfTI file ({', '.join(NIFTI_SUFFIXES)})")


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ReadError(f"{folder}: no DICOM image series found")
    files = max(
        (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series), key=len
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise ReadError(f"{folder}: cannot read the series: {error}") from error


def image_to_volume(image: sitk.Image) -> CTVolume:
    """SimpleITK image to CTVolume (same axis and geometry conventions, no reordering)."""
    return CTVolume(
        hu=sitk.GetArrayFromImage(image).astype(np.int16),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


def volume_to_image(volume: CTVolume, array: np.ndarray | None = None) -> sitk.Image:
    """``array`` (default: the HU) as a SimpleITK image with the volume's geometry."""
    image = sitk.GetImageFromArray(volume.hu if array is None else array)
    return with_geometry(image, volume.spacing, volume.origin, volume.direction)


def with_geometry(
    image: sitk.Image, spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray | Sequence[float]
) -> sitk.Image:
    """``image`` placed in patient space (SimpleITK order: spacing and origin x, y, z; direction
    3x3 by columns, flattened row by row); returned for chaining."""
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in np.asarray(direction, dtype=float).ravel()])
    return image


def write_nifti(volume: CTVolume, array: np.ndarray, path: Path) -> None:
    """Write ``array`` (shape of ``volume.hu``) as NIfTI with the volume's geometry."""
    sitk.WriteImage(volume_to_image(volume, array), str(path), useCompression=True)

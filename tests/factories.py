"""Synthetic, seeded CT series for tests: a chest phantom written as real DICOM files.

The phantom is a body ellipse (soft tissue, 40 HU) in air (-1000 HU) holding two lung
ellipsoids (-850 HU), the patient's right lung at smaller patient x (LPS). Small images keep
the tests fast; the geometry (spacing, orientation, positions) is as real as a scanner's.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

TEST_UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass
class PhantomSeries:
    """Parameters of a synthetic series; ``write`` puts it on disk as one file per slice."""

    slices: int = 40
    rows: int = 96
    columns: int = 96
    pixel_spacing_mm: float = 4.0
    slice_spacing_mm: float = 5.0
    seed: int = 0
    patient_id: str = "PHANTOM-001"
    patient_name: str = "Phantom^Chest"
    study_uid: str = field(default_factory=lambda: generate_uid(prefix=TEST_UID_ROOT))
    series_uid: str = field(default_factory=lambda: generate_uid(prefix=TEST_UID_ROOT))
    modality: str = "CT"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    #: Slice indices left out (to make a series with a missing slice).
    missing: tuple[int, ...] = ()

    def hu(self) -> np.ndarray:
        """The phantom in HU, ``[z, y, x]``."""
        rng = np.random.default_rng(self.seed)
        z, y, x = np.mgrid[0 : self.slices, 0 : self.rows, 0 : self.columns].astype(np.float32)
        cz, cy, cx = (self.slices - 1) / 2, (self.rows - 1) / 2, (self.columns - 1) / 2
        volume = np.full(z.shape, -1000.0, dtype=np.float32)
        body = ((y - cy) / (0.38 * self.rows)) ** 2 + ((x - cx) / (0.46 * self.columns)) ** 2 <= 1
        volume[body] = 40.0
        for side in (-1, 1):  # -1: patient's right (smaller x), +1: left
            lung = (
                ((z - cz) / (0.42 * self.slices)) ** 2
                + ((y - cy) / (0.28 * self.rows)) ** 2
                + ((x - cx - side * 0.2 * self.columns) / (0.15 * self.columns)) ** 2
            ) <= 1
            volume[lung] = -850.0
        volume += rng.normal(0, 10, volume.shape).astype(np.float32)
        return volume

    def datasets(self) -> list[Dataset]:
        """One CT Image Storage dataset per slice (in acquisition order, missing ones left out)."""
        hu = self.hu()
        now = datetime.datetime(2026, 1, 2, 3, 4, 5)
        frame_of_reference = generate_uid(prefix=TEST_UID_ROOT, entropy_srcs=[self.series_uid, "for"])
        result = []
        for index in range(self.slices):
            if index in self.missing:
                continue
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
                prefix=TEST_UID_ROOT, entropy_srcs=[self.series_uid, str(index)]
            )
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID = self.study_uid
            ds.SeriesInstanceUID = self.series_uid
            ds.FrameOfReferenceUID = frame_of_reference
            ds.PatientName = self.patient_name
            ds.PatientID = self.patient_id
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.AccessionNumber = "ACC0001"
            ds.StudyID = "1"
            ds.ReferringPhysicianName = ""
            ds.Manufacturer = "Phantom"
            ds.Modality = self.modality
            ds.SeriesNumber = 2
            ds.InstanceNumber = index + 1
            ds.ImageType = list(self.image_type)
            ds.BodyPartExamined = "CHEST"
            ds.PositionReferenceIndicator = ""
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            # Slice 0 is the most cranial (z decreases towards the feet), as scanners write it.
            ds.ImagePositionPatient = [
                -self.columns * self.pixel_spacing_mm / 2,
                -self.rows * self.pixel_spacing_mm / 2,
                -index * self.slice_spacing_mm,
            ]
            ds.SliceLocation = ds.ImagePositionPatient[2]
            ds.SliceThickness = self.slice_spacing_mm
            ds.PixelSpacing = [self.pixel_spacing_mm, self.pixel_spacing_mm]
            ds.KVP = 120
            ds.PatientPosition = "FFS"
            ds.AcquisitionNumber = 1
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = self.rows, self.columns
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = -600, 1500
            stored = np.clip(np.round(hu[index] + 1024), 0, 65535).astype(np.uint16)
            ds.PixelData = stored.tobytes()
            result.append(ds)
        return result

    def write(self, directory: Path) -> list[Path]:
        """Write the slices as ``<directory>/<n>.dcm`` (shuffled names: order must not matter)."""
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(self.seed + 1)
        datasets = self.datasets()
        names = rng.permutation(len(datasets))
        paths = []
        for name, ds in zip(names, datasets):
            path = directory / f"{name:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
        return paths

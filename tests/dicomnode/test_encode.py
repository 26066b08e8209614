"""SEG + TID 1500 SR encoding: validated by dciodvfy, read back with highdicom and pydicom."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from conftest import SHARED_DATA, require_path, require_tool
from dicomnode import __version__
from dicomnode.encode import EncodingError, encode_results, encode_seg, encode_sr
from dicomnode.encode.identity import MODEL_NAME, result_uid
from dicomnode.settings import EncodingSettings, Settings
from dicomnode.volume import SeriesVolume, build_volume
from factories import PhantomSeries
from inference.types import AlgorithmFamily, Findings, LungLabel, LungVolumes

RIGHT_LUNG, LEFT_LUNG, LUNG = "3341006", "44029006", "39607008"
SETTINGS = Settings()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    return build_volume(PhantomSeries().write(tmp_path_factory.mktemp("phantom")))


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """The phantom's lungs: air inside the body (air components not touching the image border)."""
    components, _ = ndimage.label(hu < -500)
    border = np.unique(np.concatenate([components[:, [0, -1], :].ravel(), components[:, :, [0, -1]].ravel()]))
    return (components > 0) & ~np.isin(components, border)


def findings_for(series: SeriesVolume, labels: np.ndarray, version: str = "1.0") -> Findings:
    """Findings with the volumes the analysis states: right/left only when no voxel is unseparated."""
    voxel_ml = series.volume.voxel_volume_ml
    count = {label: int(np.count_nonzero(labels == label)) * voxel_ml for label in LungLabel}
    separated = count[LungLabel.UNSEPARATED] == 0
    return Findings(
        lung_labels=labels,
        lungs=LungVolumes(
            right_ml=count[LungLabel.RIGHT] if separated else None,
            left_ml=count[LungLabel.LEFT] if separated else None,
            total_ml=count[LungLabel.RIGHT] + count[LungLabel.LEFT] + count[LungLabel.UNSEPARATED],
        ),
        algorithm_name="Test lung segmentation",
        algorithm_version=version,
        algorithm_family=AlgorithmFamily.MORPHOLOGICAL_OPERATIONS,
    )


def split_labels(series: SeriesVolume) -> np.ndarray:
    """Right lung at smaller patient x (the left half of the image), left lung at larger x."""
    lungs = lung_mask(series.volume.hu)
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    right_half = np.arange(lungs.shape[2]) < lungs.shape[2] // 2
    labels[lungs & right_half] = LungLabel.RIGHT
    labels[lungs & ~right_half] = LungLabel.LEFT
    return labels


@pytest.fixture(scope="module")
def separated(phantom_series: SeriesVolume) -> Findings:
    return findings_for(phantom_series, split_labels(phantom_series))


@pytest.fixture(scope="module")
def written(phantom_series: SeriesVolume, separated: Findings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    seg, sr = encode_results(phantom_series, separated, SETTINGS)
    directory = tmp_path_factory.mktemp("results")
    return save(seg, directory / "seg.dcm"), save(sr, directory / "sr.dcm")


def save(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def dciodvfy(path: Path) -> str:
    """dciodvfy's report on a file; the test fails on any line starting with Error."""
    tool = require_tool("/usr/bin/dciodvfy")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, f"dciodvfy {path.name}:\n{output}"
    return output


# --- validity ------------------------------------------------------------------------------


def test_seg_and_sr_pass_dciodvfy(written: tuple[Path, Path]) -> None:
    seg_path, sr_path = written
    assert "Segmentation" in dciodvfy(seg_path)
    assert "Comprehensive3DSR" in dciodvfy(sr_path)


# --- SEG -----------------------------------------------------------------------------------


def test_seg_segments(written: tuple[Path, Path]) -> None:
    seg = hd.seg.segread(written[0])
    assert seg.SegmentationType == "BINARY"
    assert seg.ContentLabel == "LUNGS"
    described = [
        (item.SegmentNumber, item.SegmentLabel, item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        for item in seg.SegmentSequence
    ]
    assert described == [(1, "Right lung", RIGHT_LUNG), (2, "Left lung", LEFT_LUNG)]
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("Test lung segmentation", "1.0")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123104"  # Morphological Operations


def test_seg_mask_round_trip(written: tuple[Path, Path], phantom_series: SeriesVolume, separated: Findings) -> None:
    seg = hd.seg.segread(written[0])
    sop_uids = [ds.SOPInstanceUID for ds in phantom_series.datasets]
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids,
        segment_numbers=[1, 2],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(mask, separated.lung_labels)  # RIGHT=1, LEFT=2 are also the segment numbers


def test_seg_frames_reference_their_source_slices(
    written: tuple[Path, Path], phantom_series: SeriesVolume, separated: Findings
) -> None:
    """Read with pydicom alone: each frame's source SOP instance is the slice at its position."""
    seg = pydicom.dcmread(written[0])
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    index_of = {ds.SOPInstanceUID: k for k, ds in enumerate(phantom_series.datasets)}
    segment_label = {1: LungLabel.RIGHT, 2: LungLabel.LEFT}
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index_of[source]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in phantom_series.datasets[k].ImagePositionPatient])
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame, separated.lung_labels[k] == segment_label[number])
        seen.add((k, number))
    expected = {(k, n) for n, label in segment_label.items() for k in range(len(index_of)) if np.any(separated.lung_labels[k] == label)}
    assert seen == expected


def test_seg_identity_from_settings(written: tuple[Path, Path]) -> None:
    seg = pydicom.dcmread(written[0], stop_before_pixels=True)
    assert seg.SeriesNumber == SETTINGS.encoding.seg_series_number
    assert seg.SeriesDescription == SETTINGS.encoding.seg_series_description
    assert seg.Manufacturer == SETTINGS.encoding.manufacturer
    assert seg.ManufacturerModelName == MODEL_NAME
    assert seg.SoftwareVersions == __version__
    assert seg.DeviceSerialNumber == SETTINGS.device_serial_number == SETTINGS.node.ae_title


# --- SR ------------------------------------------------------------------------------------


def test_sr_measurements_equal_the_findings(
    written: tuple[Path, Path], phantom_series: SeriesVolume, separated: Findings
) -> None:
    seg = pydicom.dcmread(written[0], stop_before_pixels=True)
    report = hd.sr.srread(written[1]).content
    groups = report.get_volumetric_roi_measurement_groups()
    assert [g.finding_type.value for g in groups] == [RIGHT_LUNG, LEFT_LUNG]
    for group, expected_ml, number in zip(groups, (separated.lungs.right_ml, separated.lungs.left_ml), (1, 2)):
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.value == pytest.approx(expected_ml, rel=1e-9)
        assert volume.unit.value == "ml" and volume.unit.scheme_designator == "UCUM"
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_sop_class_uid == seg.SOPClassUID
        assert reference.referenced_segment_numbers == [number]
        assert reference.source_series_for_segmentation.value == phantom_series.datasets[0].SeriesInstanceUID
        segment = seg.SegmentSequence[number - 1]
        assert group.tracking_uid == segment.TrackingUID  # the SR group and the SEG segment are one ROI
    (total,) = report.get_image_measurement_groups()
    (total_volume,) = total.get_measurements(name=codes.SCT.Volume)
    assert total_volume.value == pytest.approx(separated.lungs.total_ml, rel=1e-9)
    assert total.finding_type.value == LUNG


def test_sr_observer_is_the_node(written: tuple[Path, Path]) -> None:
    sr = hd.sr.srread(written[1])
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    attributes = observer.observer_identifying_attributes
    assert attributes.model_name == MODEL_NAME
    assert attributes.serial_number == SETTINGS.device_serial_number
    assert sr.SeriesNumber == SETTINGS.encoding.sr_series_number
    assert sr.SeriesDescription == SETTINGS.encoding.sr_series_description
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_sr_evidence_lists_the_slices_and_the_seg(
    written: tuple[Path, Path], phantom_series: SeriesVolume
) -> None:
    sr = hd.sr.srread(written[1])
    seg = pydicom.dcmread(written[0], stop_before_pixels=True)
    referenced = {item[2] for item in sr.get_evidence()}
    assert referenced == {ds.SOPInstanceUID for ds in phantom_series.datasets} | {seg.SOPInstanceUID}


# --- identities ----------------------------------------------------------------------------


def uids(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in datasets]


def test_identities_are_deterministic(phantom_series: SeriesVolume, separated: Findings) -> None:
    first = encode_results(phantom_series, separated, SETTINGS)
    again = encode_results(phantom_series, separated, SETTINGS)
    assert uids(first) == uids(again)
    assert len({uid for pair in uids(first) for uid in pair}) == 4

    newer = encode_results(phantom_series, dataclasses.replace(separated, algorithm_version="1.1"), SETTINGS)
    assert not set(uids(newer)) & set(uids(first))


def test_another_instance_set_gives_other_identities(separated: Findings, tmp_path: Path) -> None:
    """Same series UID, one slice fewer (a run before the last slice arrived): new UIDs."""
    phantom = PhantomSeries()
    paths = phantom.write(tmp_path)
    full = build_volume(paths)
    caudal_end = full.datasets[0].SOPInstanceUID
    partial = build_volume([p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID != caudal_end])
    labels = split_labels(full)
    first = encode_results(full, findings_for(full, labels), SETTINGS)
    other = encode_results(partial, findings_for(partial, labels[1:]), SETTINGS)
    assert not set(uids(first)) & set(uids(other))


def test_result_uid() -> None:
    root = SETTINGS.encoding.uid_root
    uid = result_uid(root, "seg", ["1.2.3", "1.2.4"], "v1")
    assert uid.startswith(root) and len(uid) <= 64
    assert uid == result_uid(root, "seg", ["1.2.4", "1.2.3"], "v1")  # order of instances does not matter
    assert uid != result_uid(root, "sr", ["1.2.3", "1.2.4"], "v1")
    assert uid != result_uid(root, "seg", ["1.2.3", "1.2.4", "1.2.5"], "v1")
    assert uid != result_uid(root, "seg", ["1.2.3", "1.2.4"], "v2")
    with pytest.raises(ValueError):
        result_uid(root, "seg", [], "v1")


def test_settings_name_the_series(phantom_series: SeriesVolume, separated: Findings) -> None:
    settings = dataclasses.replace(
        SETTINGS,
        encoding=EncodingSettings(
            uid_root="1.2.3.4.",
            manufacturer="Hospital IT",
            institution_name="General Hospital",
            device_serial_number="SN-42",
            seg_series_number=42,
            sr_series_number=43,
            seg_series_description="Lungen",
            sr_series_description="Lungenvolumen",
        ),
    )
    seg, sr = encode_results(phantom_series, separated, settings)
    assert (seg.SeriesNumber, seg.SeriesDescription, sr.SeriesNumber, sr.SeriesDescription) == (42, "Lungen", 43, "Lungenvolumen")
    for ds in (seg, sr):
        assert ds.SOPInstanceUID.startswith("1.2.3.4.") and ds.SeriesInstanceUID.startswith("1.2.3.4.")
        assert (ds.Manufacturer, ds.InstitutionName, ds.DeviceSerialNumber) == ("Hospital IT", "General Hospital", "SN-42")


# --- other label maps ----------------------------------------------------------------------


def test_unseparated_lungs_are_one_lung_segment(phantom_series: SeriesVolume, tmp_path: Path) -> None:
    labels = np.where(lung_mask(phantom_series.volume.hu), LungLabel.UNSEPARATED, LungLabel.BACKGROUND).astype(np.uint8)
    findings = findings_for(phantom_series, labels)
    assert findings.lungs.right_ml is None
    seg, sr = encode_results(phantom_series, findings, SETTINGS)
    dciodvfy(save(seg, tmp_path / "seg.dcm"))
    dciodvfy(save(sr, tmp_path / "sr.dcm"))
    assert [(i.SegmentLabel, i.SegmentedPropertyTypeCodeSequence[0].CodeValue) for i in seg.SegmentSequence] == [("Lung", LUNG)]
    (group,) = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(findings.lungs.total_ml, rel=1e-9)


def test_partly_separated_lungs_have_three_segments(phantom_series: SeriesVolume, tmp_path: Path) -> None:
    """Right, left and an unseparated part: the analysis states only the total; the parts are measured."""
    labels = split_labels(phantom_series)
    labels[:10][labels[:10] > 0] = LungLabel.UNSEPARATED
    findings = findings_for(phantom_series, labels)
    seg, sr = encode_results(phantom_series, findings, SETTINGS)
    dciodvfy(save(sr, tmp_path / "sr.dcm"))
    assert [i.SegmentLabel for i in seg.SegmentSequence] == ["Right lung", "Left lung", "Lung"]
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    voxel_ml = phantom_series.volume.voxel_volume_ml
    for group, label in zip(groups, (LungLabel.RIGHT, LungLabel.LEFT, LungLabel.UNSEPARATED)):
        expected = np.count_nonzero(labels == label) * voxel_ml
        assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(expected, rel=1e-9)


def test_no_lung_is_an_encoding_error(phantom_series: SeriesVolume) -> None:
    empty = np.zeros(phantom_series.volume.hu.shape, dtype=np.uint8)
    with pytest.raises(EncodingError, match="no lung found"):
        encode_results(phantom_series, findings_for(phantom_series, empty), SETTINGS)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((3, 3, 3), dtype=np.uint8), "shape"),
        (None, "LungLabel values"),
    ],
)
def test_bad_label_maps_are_encoding_errors(phantom_series: SeriesVolume, labels: np.ndarray | None, message: str) -> None:
    if labels is None:
        labels = np.full(phantom_series.volume.hu.shape, 7, dtype=np.uint8)
    findings = Findings(labels, LungVolumes(None, None, 1.0), "x", "1", AlgorithmFamily.ARTIFICIAL_INTELLIGENCE)
    with pytest.raises(EncodingError, match=message):
        encode_seg(phantom_series, findings, SETTINGS)


def test_one_frame_of_reference_per_slice_is_harmonised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """LIDC-IDRI gives every slice its own FrameOfReferenceUID; the SEG uses the first slice's."""
    datasets = PhantomSeries(slices=8).datasets()
    for index, ds in enumerate(datasets):
        ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.8.498.77.{index + 1}"
    paths = []
    for index, ds in enumerate(datasets):
        paths.append(tmp_path / f"{index}.dcm")
        pydicom.dcmwrite(paths[-1], ds, enforce_file_format=True)
    series = build_volume(paths)
    caplog.set_level(logging.WARNING)
    seg, sr = encode_results(series, findings_for(series, split_labels(series)), SETTINGS)
    assert seg.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    assert "FrameOfReferenceUIDs" in caplog.text
    assert {ds.FrameOfReferenceUID for ds in series.datasets} == {ds.FrameOfReferenceUID for ds in datasets}
    dciodvfy(save(seg, tmp_path / "seg.dcm"))


def test_encode_sr_rejects_a_seg_of_other_segments(written: tuple[Path, Path], phantom_series: SeriesVolume, separated: Findings) -> None:
    seg = hd.seg.segread(written[0])
    seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = "10200004"  # liver
    with pytest.raises(EncodingError, match="not a lung segment"):
        encode_sr(phantom_series, seg, separated, SETTINGS)


# --- a real series -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
def test_real_ricord_series(tmp_path: Path) -> None:
    """255 slices of 512x512 (JPEG lossless), a crude threshold mask split at the midline."""
    directory = require_path(SHARED_DATA / "ct" / "ricord1a-000082-covid")
    series = build_volume(sorted(directory.glob("*.dcm")))
    hu = series.volume.hu
    labels = np.zeros(hu.shape, dtype=np.uint8)
    box = (slice(None), slice(130, 380), slice(80, 440))  # inside the body, away from the outside air
    lungs = np.zeros(hu.shape, dtype=bool)
    lungs[box] = hu[box] < -400
    right_half = np.arange(hu.shape[2]) < hu.shape[2] // 2
    labels[lungs & right_half] = LungLabel.RIGHT
    labels[lungs & ~right_half] = LungLabel.LEFT
    findings = findings_for(series, labels)

    started = time.perf_counter()
    seg, sr = encode_results(series, findings, SETTINGS)
    elapsed = time.perf_counter() - started
    seg_path, sr_path = save(seg, tmp_path / "seg.dcm"), save(sr, tmp_path / "sr.dcm")
    logging.getLogger(__name__).info(
        "RICORD: encoded in %.2f s, SEG %d frames %.1f MB", elapsed, seg.NumberOfFrames, seg_path.stat().st_size / 1e6
    )
    dciodvfy(seg_path)
    dciodvfy(sr_path)
    read_back = hd.seg.segread(seg_path)
    mask = read_back.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in series.datasets],
        segment_numbers=[1, 2],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(mask, labels)

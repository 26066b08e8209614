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

from conftest import SHARED_DATA, require_path, require_tool
from dicomnode import __version__
from dicomnode.encode import EncodingError, encode_results, encode_seg, encode_sr
from dicomnode.encode.identity import MODEL_NAME, result_uid
from dicomnode.settings import EncodingSettings, Settings
from dicomnode.volume import SeriesVolume, build_volume
from factories import PhantomSeries
from findings_factories import assessed_findings, findings_for, lung_mask, save, split_labels
from inference.types import AlgorithmFamily, Findings, Lesion, LungLabel, LungVolumes
from peers import DCIODVFY, dciodvfy_errors

RIGHT_LUNG, LEFT_LUNG, LUNG = "3341006", "44029006", "39607008"
SETTINGS = Settings()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    return build_volume(PhantomSeries().write(tmp_path_factory.mktemp("phantom")))


@pytest.fixture(scope="module")
def separated(phantom_series: SeriesVolume) -> Findings:
    return findings_for(phantom_series, split_labels(phantom_series))


@pytest.fixture(scope="module")
def written(phantom_series: SeriesVolume, separated: Findings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    seg, sr = encode_results(phantom_series, separated, SETTINGS)
    directory = tmp_path_factory.mktemp("results")
    return save(seg, directory / "seg.dcm"), save(sr, directory / "sr.dcm")


def dciodvfy(path: Path) -> str:
    """dciodvfy's report on a file; the test fails on any line starting with Error."""
    tool = require_tool(DCIODVFY)
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


OMITTING = dataclasses.replace(SETTINGS, encoding=dataclasses.replace(SETTINGS.encoding, omit_empty_frames=True))


@pytest.mark.parametrize("omit", [False, True], ids=["every-frame", "empty-frames-omitted"])
def test_seg_frames_reference_their_source_slices(
    phantom_series: SeriesVolume, separated: Findings, omit: bool, tmp_path: Path
) -> None:
    """Read with pydicom alone: each frame's source SOP instance is the slice at its position.
    By default every slice has a frame per segment (empty ones too); omitting them is an option."""
    seg, _ = encode_results(phantom_series, separated, OMITTING if omit else SETTINGS)
    seg = pydicom.dcmread(save(seg, tmp_path / "seg.dcm"))
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
    every = {(k, n) for n in segment_label for k in range(len(index_of))}
    occupied = {(k, n) for k, n in every if np.any(separated.lung_labels[k] == segment_label[n])}
    assert occupied < every  # the phantom has slices without lung
    assert seen == (occupied if omit else every)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == pytest.approx([float(v) for v in phantom_series.datasets[0].ImageOrientationPatient])


def test_seg_references_every_source_slice(written: tuple[Path, Path], phantom_series: SeriesVolume) -> None:
    """Also the slices outside the lungs, which highdicom is not given as planes (their frames are empty)."""
    seg = pydicom.dcmread(written[0], stop_before_pixels=True)
    slices = {ds.SOPInstanceUID for ds in phantom_series.datasets}
    assert not all(np.any(lung_mask(phantom_series.volume.hu), axis=(1, 2)))  # the phantom has slices without lung
    assert {item.ReferencedSOPInstanceUID for item in seg.SourceImageSequence} == slices
    (series_item,) = seg.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == phantom_series.datasets[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in series_item.ReferencedInstanceSequence} == slices
    spacing = float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices)
    assert spacing == pytest.approx(phantom_series.volume.spacing[2])


@pytest.mark.parametrize("index", [0, 20, -1])
def test_a_lung_on_one_slice(phantom_series: SeriesVolume, index: int, tmp_path: Path) -> None:
    labels = np.zeros(phantom_series.volume.hu.shape, dtype=np.uint8)
    labels[index, 40:50, 20:30] = LungLabel.RIGHT
    findings = findings_for(phantom_series, labels)
    seg, _ = encode_results(phantom_series, findings, OMITTING)
    assert dciodvfy_errors(save(seg, tmp_path / "seg.dcm")) == []
    assert seg.NumberOfFrames == 1
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(phantom_series.volume.spacing[2])  # not guessed from one plane
    source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == phantom_series.datasets[index].SOPInstanceUID
    every, _ = encode_results(phantom_series, findings, SETTINGS)  # the default: one frame per slice
    assert every.NumberOfFrames == len(phantom_series.datasets)


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


# --- the COVID-19 assessment: lesion segments and the scan's group ----------------------------

GROUND_GLASS, CONSOLIDATION, MORPHOLOGICALLY_ABNORMAL = "112120", "95436008", "49755003"
COVID_19, POSITIVE, NEGATIVE, INDETERMINATE = "840539006", "10828004", "260385009", "82334004"
PROBABILITY, THRESHOLD, LESION_COUNT, MEAN_HU = "122157", "122411", "246206008", "112181"


@pytest.fixture(scope="module")
def assessed(phantom_series: SeriesVolume) -> Findings:
    return assessed_findings(phantom_series)


@pytest.fixture(scope="module")
def assessed_written(
    phantom_series: SeriesVolume, assessed: Findings, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    seg, sr = encode_results(phantom_series, assessed, SETTINGS)
    directory = tmp_path_factory.mktemp("assessed")
    return save(seg, directory / "seg.dcm"), save(sr, directory / "sr.dcm")


def one(items: list) -> object:  # type: ignore[type-arg]
    (item,) = items
    return item


def call_of(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> str:
    """The code of the group's one COVID-19 qualitative evaluation (the call)."""
    return one([e.value.value for e in group.get_qualitative_evaluations() if e.name.value == COVID_19])


def test_assessed_seg_and_sr_pass_dciodvfy(assessed_written: tuple[Path, Path]) -> None:
    for path in assessed_written:
        assert dciodvfy_errors(path) == [], path.name


def test_lesion_seg_frames_are_highdicoms_from_one_mask_per_segment(phantom_series: SeriesVolume, assessed: Findings) -> None:
    """The lungs and lesions go to highdicom as two label layers; every frame is the one
    highdicom itself makes from one full mask per segment (its documented input)."""
    seg = encode_seg(phantom_series, assessed, SETTINGS)
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    lungs, lesions = numbers[:2], numbers[2:]
    masks = [assessed.lung_labels == label for label in (LungLabel.RIGHT, LungLabel.LEFT)]
    masks += [assessed.lesion_labels == lesion.label for lesion in assessed.lesions]
    assert len(masks) == len(numbers) and lungs == [1, 2] and lesions
    reference = hd.seg.Segmentation(
        source_images=list(phantom_series.datasets),
        pixel_array=np.stack(masks, axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription.from_dataset(item) for item in seg.SegmentSequence],
        series_instance_uid=seg.SeriesInstanceUID,
        series_number=1,
        sop_instance_uid=seg.SOPInstanceUID,
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="test",
        device_serial_number="test",
        omit_empty_frames=False,  # as the node's default
    )
    assert seg.SegmentsOverlap == reference.SegmentsOverlap == "YES"
    assert seg.NumberOfFrames == reference.NumberOfFrames
    assert seg.PixelData == reference.PixelData


def test_lesion_segments_follow_the_lung_segments(assessed_written: tuple[Path, Path]) -> None:
    seg = hd.seg.segread(assessed_written[0])
    assert seg.SegmentsOverlap == "YES"  # the lesions lie inside the lungs
    described = [
        (
            item.SegmentNumber,
            item.SegmentLabel,
            item.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            item.SegmentedPropertyTypeCodeSequence[0].CodeValue,
        )
        for item in seg.SegmentSequence
    ]
    assert described == [
        (1, "Right lung", "91723000", RIGHT_LUNG),
        (2, "Left lung", "91723000", LEFT_LUNG),
        (3, "Lesion 1 (ground glass, primary)", MORPHOLOGICALLY_ABNORMAL, GROUND_GLASS),
        (4, "Lesion 2 (consolidation)", MORPHOLOGICALLY_ABNORMAL, CONSOLIDATION),
    ]
    lesions = seg.SegmentSequence[2:]
    assert [item.AnatomicRegionSequence[0].CodeValue for item in lesions] == [RIGHT_LUNG, LEFT_LUNG]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("DeCoVNet", "2.0")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.ArtificialIntelligence.value
    colours = [tuple(item.RecommendedDisplayCIELabValue) for item in seg.SegmentSequence]
    assert len(set(colours)) == len(colours)


def test_lesion_masks_round_trip(
    assessed_written: tuple[Path, Path], phantom_series: SeriesVolume, assessed: Findings
) -> None:
    seg = hd.seg.segread(assessed_written[0])
    sop_uids = [ds.SOPInstanceUID for ds in phantom_series.datasets]
    lungs = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids,
        segment_numbers=[1, 2],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(lungs, assessed.lung_labels)
    lesions = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, segment_numbers=[3, 4], assert_missing_frames_are_empty=True
    )
    assert assessed.lesion_labels is not None
    for index, label in enumerate((1, 2)):
        np.testing.assert_array_equal(lesions[..., index], assessed.lesion_labels == label)


def test_sr_assesses_the_scan(assessed_written: tuple[Path, Path], assessed: Findings) -> None:
    sr = hd.sr.srread(assessed_written[1])
    scheme = one(list(sr.CodingSchemeIdentificationSequence))
    assert scheme.CodingSchemeDesignator == "99DECOV" and scheme.CodingSchemeName
    total, assessment = sr.content.get_image_measurement_groups()
    assert total.finding_type.value == LUNG
    assert assessment.finding_type.value == COVID_19
    by_name = {m.name.value: m for m in assessment.get_measurements()}
    assert by_name[PROBABILITY].value == pytest.approx(0.87) and by_name[PROBABILITY].unit.value == "1"
    assert by_name[THRESHOLD].value == pytest.approx(0.5)
    assert call_of(assessment) == POSITIVE
    assert by_name[LESION_COUNT].value == 2
    assert by_name["LESION-VOLUME"].name.scheme_designator == "99DECOV"
    assert by_name["LESION-VOLUME"].value == pytest.approx(assessed.lesion_volume_ml)
    assert by_name["LESION-VOLUME"].unit.value == "ml"
    assert by_name["LUNG-INVOLVEMENT"].value == pytest.approx(assessed.involvement_percent)
    assert by_name["LUNG-INVOLVEMENT"].unit.value == "%"


def test_sr_has_one_group_per_lesion_referencing_its_segment(
    assessed_written: tuple[Path, Path], assessed: Findings
) -> None:
    seg = pydicom.dcmread(assessed_written[0], stop_before_pixels=True)
    groups = hd.sr.srread(assessed_written[1]).content.get_volumetric_roi_measurement_groups()
    assert [g.finding_type.value for g in groups] == [RIGHT_LUNG, LEFT_LUNG, GROUND_GLASS, CONSOLIDATION]
    for group, lesion, number in zip(groups[2:], assessed.lesions, (3, 4)):
        assert group.referenced_segment.referenced_segment_numbers == [number]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.tracking_uid == seg.SegmentSequence[number - 1].TrackingUID
        assert group.tracking_identifier == seg.SegmentSequence[number - 1].SegmentLabel
        assert group.finding_category.value == MORPHOLOGICALLY_ABNORMAL
        by_name = {m.name.value: m for m in group.get_measurements()}
        assert by_name[codes.SCT.Volume.value].value == pytest.approx(lesion.volume_ml)
        assert by_name["MEAN-ACTIVATION"].value == pytest.approx(lesion.score)
        assert by_name[MEAN_HU].value == pytest.approx(lesion.mean_hu)
        assert by_name[MEAN_HU].unit.value == "[hnsf'U]"


def test_a_negative_call(phantom_series: SeriesVolume) -> None:
    _, sr = encode_results(phantom_series, assessed_findings(phantom_series, probability=0.2), SETTINGS)
    _, assessment = sr_content(sr).get_image_measurement_groups()
    assert call_of(assessment) == NEGATIVE


def sr_content(sr: Dataset) -> hd.sr.MeasurementReport:
    return hd.sr.Comprehensive3DSR.from_dataset(sr).content


def test_not_assessable(phantom_series: SeriesVolume, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No probability, no lesions: the call is indeterminate and the reason is written as text."""
    findings = assessed_findings(phantom_series, probability=None, not_assessable="lungs cut off at the apex")
    caplog.set_level(logging.INFO)
    seg, sr = encode_results(phantom_series, findings, SETTINGS)
    seg_path, sr_path = save(seg, tmp_path / "seg.dcm"), save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Right lung", "Left lung"]
    report = hd.sr.srread(sr_path).content
    _, assessment = report.get_image_measurement_groups()
    assert assessment.get_measurements() == []
    assert call_of(assessment) == INDETERMINATE
    contained = [item for item in assessment[0].ContentSequence if item.RelationshipType == "CONTAINS"]
    texts = [item.TextValue for item in contained if item.ValueType == "TEXT"]
    assert texts == ["Not assessable: lungs cut off at the apex"]
    assert len(report.get_volumetric_roi_measurement_groups()) == 2
    assert "not assessable (lungs cut off at the apex)" in caplog.text


NO_LUNGS = "no lungs found (not a chest CT, or the lungs are outside the field of view)"


def lungless_findings(series: SeriesVolume) -> Findings:
    """What the analysis states for a scan without lungs: an empty map, not assessable."""
    empty = np.zeros(series.volume.hu.shape, dtype=np.uint8)
    return dataclasses.replace(
        findings_for(series, empty),
        algorithm_name="DeCoVNet",
        algorithm_version="2.0",
        algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
        not_assessable=NO_LUNGS,
    )


def test_a_scan_without_lungs_gets_a_report_alone(
    phantom_series: SeriesVolume, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No SEG (nothing to segment); the SR says "indeterminate" with the reason and cites the CT only."""
    caplog.set_level(logging.INFO)
    (sr,) = encode_results(phantom_series, lungless_findings(phantom_series), SETTINGS)
    path = save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    read = hd.sr.srread(path)
    assert read.SeriesDescription == SETTINGS.encoding.sr_series_description
    ct_series = phantom_series.datasets[0].SeriesInstanceUID
    assert sorted(read.get_evidence()) == sorted(
        (ds.StudyInstanceUID, ct_series, ds.SOPInstanceUID, ds.SOPClassUID) for ds in phantom_series.datasets
    )
    assert {ds.SOPClassUID for ds in phantom_series.datasets} == {"1.2.840.10008.5.1.4.1.1.2"}  # CT Image
    report = read.content
    assert report.get_volumetric_roi_measurement_groups() == []  # no segment to reference
    assessment = one(report.get_image_measurement_groups())  # no lung volume: no lung was measured
    assert assessment.finding_type.value == COVID_19
    assert assessment.get_measurements() == []
    assert call_of(assessment) == INDETERMINATE
    contained = [item for item in assessment[0].ContentSequence if item.RelationshipType == "CONTAINS"]
    assert [item.TextValue for item in contained if item.ValueType == "TEXT"] == [f"Not assessable: {NO_LUNGS}"]
    assert "CodingSchemeIdentificationSequence" not in read
    assert f"not assessable ({NO_LUNGS})" in caplog.text
    again = encode_results(phantom_series, lungless_findings(phantom_series), SETTINGS)
    assert uids(again) == uids([sr])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: dataclasses.replace(f, not_assessable=None), "no lung found"),
        (
            lambda f: dataclasses.replace(
                f, lesions=(Lesion(1, 0.5, 1.0, (0.0, 0.0, 0.0), -600.0),), lesion_labels=np.ones_like(f.lung_labels)
            ),
            "lesions but no lung",
        ),
    ],
)
def test_no_lung_without_a_reason_or_with_lesions_is_an_encoding_error(
    phantom_series: SeriesVolume, change, message: str  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(EncodingError, match=message):
        encode_results(phantom_series, change(lungless_findings(phantom_series)), SETTINGS)


def test_a_report_without_a_seg_is_only_for_a_scan_without_lungs(
    phantom_series: SeriesVolume, assessed: Findings
) -> None:
    with pytest.raises(EncodingError, match="needs their SEG"):
        encode_sr(phantom_series, None, assessed, SETTINGS)


def test_lung_only_findings_have_no_assessment(written: tuple[Path, Path]) -> None:
    sr = pydicom.dcmread(written[1])
    assert "CodingSchemeIdentificationSequence" not in sr
    assert len(hd.sr.srread(written[1]).content.get_image_measurement_groups()) == 1


def test_lesion_numbers_follow_an_unseparated_lung(phantom_series: SeriesVolume) -> None:
    findings = assessed_findings(phantom_series)
    unseparated = np.where(findings.lung_labels > 0, LungLabel.UNSEPARATED, LungLabel.BACKGROUND).astype(np.uint8)
    findings = dataclasses.replace(
        findings, lung_labels=unseparated, lungs=LungVolumes(None, None, findings.lungs.total_ml)
    )
    seg, sr = encode_results(phantom_series, findings, SETTINGS)
    assert [(i.SegmentNumber, i.SegmentLabel) for i in seg.SegmentSequence] == [
        (1, "Lung"), (2, "Lesion 1 (ground glass, primary)"), (3, "Lesion 2 (consolidation)")
    ]
    assert [i.AnatomicRegionSequence[0].CodeValue for i in seg.SegmentSequence[1:]] == [LUNG, LUNG]
    groups = sr_content(sr).get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[1], [2], [3]]


def test_assessed_identities_are_deterministic(phantom_series: SeriesVolume, assessed: Findings) -> None:
    first = encode_results(phantom_series, assessed, SETTINGS)
    again = encode_results(phantom_series, assessed, SETTINGS)
    assert uids(first) == uids(again)
    assert [i.TrackingUID for i in first[0].SegmentSequence] == [i.TrackingUID for i in again[0].SegmentSequence]
    assert len({i.TrackingUID for i in first[0].SegmentSequence}) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: dataclasses.replace(f, lesion_labels=None), "no lesion label map"),
        (lambda f: dataclasses.replace(f, lesions=f.lesions[:1]), "lesion labels must be 0..1"),
        (lambda f: dataclasses.replace(f, lesions=(f.lesions[1], f.lesions[0])), "must have label i"),
        (
            lambda f: dataclasses.replace(f, lesion_labels=np.where(f.lesion_labels == 2, 0, f.lesion_labels)),
            "lesion 2 has no voxels",
        ),
        (lambda f: dataclasses.replace(f, lesion_labels=f.lesion_labels[1:]), "shape"),
    ],
)
def test_lesions_that_do_not_match_their_map_are_encoding_errors(
    phantom_series: SeriesVolume, assessed: Findings, change, message: str  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(EncodingError, match=message):
        encode_results(phantom_series, change(assessed), SETTINGS)


def test_encode_sr_rejects_a_seg_of_other_lesions(
    assessed_written: tuple[Path, Path], phantom_series: SeriesVolume, assessed: Findings
) -> None:
    seg = hd.seg.segread(assessed_written[0])
    fewer = dataclasses.replace(
        assessed,
        lesions=assessed.lesions[:1],
        lesion_labels=np.where(assessed.lesion_labels == 2, 0, assessed.lesion_labels),
    )
    with pytest.raises(EncodingError, match="not the findings' lesions"):
        encode_sr(phantom_series, seg, fewer, SETTINGS)

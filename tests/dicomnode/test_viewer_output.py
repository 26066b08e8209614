"""The results as radiologists' viewers read them: SEG of both types, SR regions, key images.

Every object is validated by dciodvfy and read back by dcmjs (the library under OHIF and
Cornerstone; BINARY SEGs placed by its Cornerstone adapter) and by highdicom, and each segment
must land on exactly the source slices and voxels of the mask it was written from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicomnode.encode import ResultPlan, encode_for_destinations, encode_key_images, encode_results
from dicomnode.encode.outline import key_slice, outline
from dicomnode.encode.segments import shown_lung_labels
from dicomnode.settings import Delivery, FolderDestination, Settings
from dicomnode.volume import SeriesVolume, build_volume
from factories import PhantomSeries
from findings_factories import assessed_findings, save
from inference.overview import LESION_COLOUR, LUNG_COLOUR
from inference.types import Findings, LungLabel
from peers import dciodvfy_errors
from viewers import dcmjs_report, dcmjs_segmentation, highdicom_segmentation

SETTINGS = Settings()
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[SeriesVolume, list[Path]]:
    """The phantom series and its files in the volume's slice order (the SEG's source order)."""
    paths = PhantomSeries().write(tmp_path_factory.mktemp("phantom"))
    series = build_volume(paths)
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    return series, [by_uid[str(ds.SOPInstanceUID)] for ds in series.datasets]


@pytest.fixture(scope="module")
def findings(phantom: tuple[SeriesVolume, list[Path]]) -> Findings:
    """Two lesions and a class activation map that is hottest on them."""
    series, _ = phantom
    found = assessed_findings(series)
    assert found.lesion_labels is not None
    cam = np.where(found.lesion_labels > 0, 230, np.where(found.lung_labels > 0, 40, 0)).astype(np.uint8)
    return dataclasses.replace(found, cam=cam)


def expected_masks(findings: Findings, seg_type: str) -> dict[int, np.ndarray]:
    """What each segment number must show: the lungs (right, left; without the lesions in a
    LABELMAP), then the lesions."""
    assert findings.lesion_labels is not None
    lungs = shown_lung_labels(findings) if seg_type == "labelmap" else findings.lung_labels
    masks = {1: lungs == LungLabel.RIGHT, 2: lungs == LungLabel.LEFT}
    for lesion in findings.lesions:
        masks[2 + lesion.label] = findings.lesion_labels == lesion.label
    return masks


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_each_segment_lands_on_its_source_voxels_in_dcmjs_and_highdicom(
    phantom: tuple[SeriesVolume, list[Path]], findings: Findings, seg_type: str, tmp_path: Path
) -> None:
    series, ct_paths = phantom
    seg, _ = encode_results(series, findings, SETTINGS, seg_type)
    path = save(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    expected = expected_masks(findings, seg_type)
    for reader in (dcmjs_segmentation, highdicom_segmentation):
        read = reader(path, ct_paths)
        assert sorted(read.numbers) == sorted(expected), reader.__name__
        for number, mask in expected.items():
            assert mask.any()
            np.testing.assert_array_equal(read.mask(number), mask, err_msg=f"{reader.__name__}: segment {number}")


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_every_frame_names_its_source_image_and_position(
    phantom: tuple[SeriesVolume, list[Path]], findings: Findings, seg_type: str, tmp_path: Path
) -> None:
    """As dcmjs reads them: a frame per segment and slice (BINARY; empty ones too) or per slice
    (LABELMAP), each naming the CT image at its plane position; the planes' orientation is the CT's."""
    series, ct_paths = phantom
    seg, _ = encode_results(series, findings, SETTINGS, seg_type)
    info = dcmjs_segmentation(save(seg, tmp_path / "seg.dcm"), ct_paths).info
    slices = len(series.datasets)
    segments = 2 + len(findings.lesions)
    assert info["number_of_frames"] == (slices if seg_type == "labelmap" else segments * slices)
    position = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in series.datasets}
    for frame in info["frames"]:
        assert frame["image_position_patient"] == pytest.approx(position[frame["source_sop_instance_uid"]])
    assert {frame["source_sop_instance_uid"] for frame in info["frames"]} == set(position)
    if seg_type == "binary":
        pairs = {(f["source_sop_instance_uid"], f["segment_number"]) for f in info["frames"]}
        assert len(pairs) == segments * slices
    else:
        assert info["sop_class_uid"] == LABEL_MAP_SEGMENTATION and info["segmentation_type"] == "LABELMAP"
    orientation = [float(v) for v in series.datasets[0].ImageOrientationPatient]
    assert info["image_orientation_patient"] == pytest.approx(orientation)
    assert info["frame_of_reference_uid"] == series.datasets[0].FrameOfReferenceUID


def test_segments_read_well_in_a_viewers_list(phantom: tuple[SeriesVolume, list[Path]], findings: Findings, tmp_path: Path) -> None:
    series, ct_paths = phantom
    seg, _ = encode_results(series, findings, SETTINGS)
    segments = dcmjs_segmentation(save(seg, tmp_path / "seg.dcm"), ct_paths).info["segments"]
    assert [s["label"] for s in segments] == [
        "Right lung", "Left lung", "Lesion 1 (ground glass, primary)", "Lesion 2 (consolidation)"
    ]
    colours = [tuple(s["cielab"]) for s in segments]
    assert all(len(c) == 3 for c in colours) and len(set(colours)) == len(colours)  # a colour each, all different


def lesion_groups_with_regions(report: dict) -> list[dict]:
    return [g for g in report["groups"] if g["regions"]]


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_the_report_lists_each_lesion_with_its_outline_on_its_key_slice(
    phantom: tuple[SeriesVolume, list[Path]], findings: Findings, seg_type: str, tmp_path: Path
) -> None:
    """Read by dcmjs: per lesion a group with a closed polyline on the CT image where the lesion
    is largest, tracing that slice's mask; the probability and the call are in the assessment."""
    series, _ = phantom
    seg, sr = encode_results(series, findings, SETTINGS, seg_type)
    path = save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path, labelmap_references=seg_type == "labelmap") == []
    report = dcmjs_report(path)
    assert findings.lesion_labels is not None
    regions = lesion_groups_with_regions(report)
    assert [g["tracking_identifier"] for g in regions] == ["Lesion 1 (ground glass, primary)", "Lesion 2 (consolidation)"]
    column_mm, row_mm = (float(v) for v in series.volume.spacing[:2])
    for lesion, group in zip(findings.lesions, regions):
        mask = findings.lesion_labels == lesion.label
        index = key_slice(mask)
        (region,) = group["regions"]
        assert region["value_type"] == "SCOORD" and region["graphic_type"] == "POLYLINE"
        assert region["image_sop_instance_uid"] == series.datasets[index].SOPInstanceUID
        points = np.array(region["graphic_data"]).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])  # closed
        rows, columns = np.nonzero(mask[index])
        assert points[:, 0].min() >= columns.min() and points[:, 0].max() <= columns.max() + 1
        assert points[:, 1].min() >= rows.min() and points[:, 1].max() <= rows.max() + 1
        pixels = int(mask[index].sum())
        assert 0.7 * pixels <= polygon_area(points) <= pixels  # the outline encloses the slice's lesion
        (area,) = group["measurements"]
        assert area["unit"] == "mm2" and area["value"] == pytest.approx(pixels * column_mm * row_mm)
    assessment = next(g for g in report["groups"] if g["tracking_identifier"] == "COVID-19 assessment")
    measured = {m["code"]: m["value"] for m in assessment["measurements"]}
    assert assessment["finding"] == "840539006"  # SNOMED CT: disease caused by SARS-CoV-2
    assert measured["122157"] == pytest.approx(0.87) and measured["122411"] == pytest.approx(0.5)
    segment_groups = [g for g in report["groups"] if g["segment"]]
    assert {g["segment"]["sop_instance_uid"] for g in segment_groups} == {seg.SOPInstanceUID}


def test_a_labelmap_report_measures_the_lungs_as_its_seg_shows_them(
    phantom: tuple[SeriesVolume, list[Path]], findings: Findings, tmp_path: Path
) -> None:
    series, _ = phantom
    voxel_ml = series.volume.voxel_volume_ml
    shown = shown_lung_labels(findings)
    for seg_type, labels in (("binary", findings.lung_labels), ("labelmap", shown)):
        _, sr = encode_results(series, findings, SETTINGS, seg_type)
        volumes = {
            g["tracking_identifier"]: g["measurements"][0]["value"]
            for g in dcmjs_report(save(sr, tmp_path / f"{seg_type}.dcm"))["groups"]
            if g["tracking_identifier"] in ("Right lung", "Left lung", "Total lung")
        }
        assert volumes["Right lung"] == pytest.approx(np.count_nonzero(labels == LungLabel.RIGHT) * voxel_ml)
        assert volumes["Left lung"] == pytest.approx(np.count_nonzero(labels == LungLabel.LEFT) * voxel_ml)
        assert volumes["Total lung"] == pytest.approx(findings.lungs.total_ml)  # the whole lung, either way


def test_outline_of_a_square_and_of_a_region_at_the_edge() -> None:
    plane = np.zeros((8, 10), dtype=bool)
    plane[2:5, 3:7] = True
    points = outline(plane)
    assert points[:, 0].min() == 3 and points[:, 0].max() == 7  # along the pixels' outer edges
    assert points[:, 1].min() == 2 and points[:, 1].max() == 5
    edge = np.zeros((4, 4), dtype=bool)
    edge[0, :] = True
    closed = outline(edge)
    assert np.array_equal(closed[0], closed[-1]) and closed[:, 1].min() == 0
    with pytest.raises(ValueError, match="empty"):
        outline(np.zeros((3, 3), dtype=bool))


# --- key images --------------------------------------------------------------------------------


def display_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` (one slice) resized to the drawn image by nearest neighbour, as the renderer does."""
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def test_key_images_show_the_findings_where_they_are(
    phantom: tuple[SeriesVolume, list[Path]], findings: Findings, tmp_path: Path
) -> None:
    """Valid Secondary Capture images in the source study, one per chosen slice, the first through
    the primary lesion; outline colours only on their masks; the caption says what was found."""
    series, _ = phantom
    images = encode_key_images(series, findings, SETTINGS)
    assert len(images) == SETTINGS.encoding.key_image_count
    assert findings.lesion_labels is not None
    primary_slice = round(float(np.nonzero(findings.lesion_labels == 1)[0].mean()))
    shown_slices = []
    for number, image in enumerate(images, start=1):
        path = save(image, tmp_path / f"key-{number}.dcm")
        assert dciodvfy_errors(path) == []
        Image.fromarray(image.pixel_array).save(tmp_path / f"key-{number}.png")  # for a person to look at
        source = image.SourceImageSequence[0].ReferencedSOPInstanceUID
        index = next(k for k, ds in enumerate(series.datasets) if ds.SOPInstanceUID == source)
        shown_slices.append(index)
        assert image.StudyInstanceUID == series.datasets[0].StudyInstanceUID
        assert image.SeriesInstanceUID != series.datasets[0].SeriesInstanceUID
        assert image.SeriesDescription == SETTINGS.encoding.key_image_series_description
        assert image.BurnedInAnnotation == "YES" and image.PhotometricInterpretation == "RGB"
        assert "COVID-19 POSITIVE: probability 0.87 (threshold 0.50)" in image.ImageComments
        assert SETTINGS.encoding.key_image_disclaimer in image.ImageComments
        pixels = image.pixel_array
        drawn = pixels[: round(pixels.shape[1] * series.volume.hu.shape[1] / series.volume.hu.shape[2])]
        height, width = drawn.shape[:2]
        lungs = display_mask(findings.lung_labels[index] > 0, height, width)
        lesions = display_mask(findings.lesion_labels[index] > 0, height, width)
        lung_outline = np.all(drawn == LUNG_COLOUR, axis=-1)
        lesion_outline = np.all(drawn == LESION_COLOUR, axis=-1)
        assert lung_outline.any() and not np.any(lung_outline & ~lungs)
        assert not np.any(lesion_outline & ~lesions)
        if lesions.any():
            assert lesion_outline.any()
            tinted = (drawn[..., 0].astype(int) - drawn[..., 2].astype(int)) > 40  # the heat map's red-yellow
            assert tinted[lesions].mean() > 0.5 and not np.any(tinted & ~lungs)
        assert np.any(pixels[height:] > 128)  # the caption band has text
    assert primary_slice in shown_slices
    assert "On this slice: Lesion 1 (ground glass, primary)" in images[shown_slices.index(primary_slice)].ImageComments


def test_a_negative_scan_gets_key_images_through_its_lungs(phantom: tuple[SeriesVolume, list[Path]], findings: Findings) -> None:
    series, _ = phantom
    negative = dataclasses.replace(
        findings, classification=dataclasses.replace(findings.classification, probability=0.1), lesions=(), lesion_labels=None
    )
    images = encode_key_images(series, negative, SETTINGS)
    assert len(images) == SETTINGS.encoding.key_image_count
    for image in images:
        assert "COVID-19 negative: probability 0.10" in image.ImageComments
        index = next(k for k, ds in enumerate(series.datasets) if ds.SOPInstanceUID == image.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert findings.lung_labels[index].any()


# --- what each destination gets ----------------------------------------------------------------


def test_the_plan_follows_the_destinations() -> None:
    everything, labelmap = Delivery(), Delivery(objects=("seg", "sr"), seg_type="labelmap")
    assert ResultPlan.for_deliveries([]) == ResultPlan(("binary",), True)  # no destination: the defaults
    assert ResultPlan.for_deliveries([everything, labelmap]) == ResultPlan(("binary", "labelmap"), True)
    assert ResultPlan.for_deliveries([labelmap]) == ResultPlan(("labelmap",), False)
    assert ResultPlan.for_deliveries([Delivery(objects=("key-images",))]) == ResultPlan((), True)


def test_encoding_for_destinations_labels_every_object(phantom: tuple[SeriesVolume, list[Path]], findings: Findings) -> None:
    series, _ = phantom
    settings = dataclasses.replace(
        SETTINGS,
        destinations=(
            FolderDestination("viewer", Path("/nonexistent/a"), Delivery(seg_type="labelmap")),
            FolderDestination("pacs", Path("/nonexistent/b"), Delivery(objects=("sr",))),
        ),
    )
    objects = encode_for_destinations(series, findings, settings)
    kinds = [(o.kind, o.seg_type, str(o.dataset.SOPClassUID)) for o in objects]
    assert kinds == [
        ("seg", "binary", "1.2.840.10008.5.1.4.1.1.66.4"),
        ("sr", "binary", "1.2.840.10008.5.1.4.1.1.88.34"),
        ("seg", "labelmap", LABEL_MAP_SEGMENTATION),
        ("sr", "labelmap", "1.2.840.10008.5.1.4.1.1.88.34"),
        *[("key-images", None, "1.2.840.10008.5.1.4.1.1.7")] * SETTINGS.encoding.key_image_count,
    ]
    assert len({o.dataset.SOPInstanceUID for o in objects}) == len(objects)  # every object its own UID
    viewer, pacs = (d.delivery for d in settings.destinations)
    assert [o.kind for o in objects if viewer.wants(o.kind, o.seg_type)] == ["seg", "sr", *["key-images"] * 3]
    assert [(o.kind, o.seg_type) for o in objects if pacs.wants(o.kind, o.seg_type)] == [("sr", "binary")]

"""``python -m inference predict``: the findings record, the overview picture and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference import predict
from inference.cli import main
from inference.io import read_volume, write_nifti
from inference.multilevel_cam import LEVELS
from inference.options import AnalysisOptions
from inference.overview import (
    CAPTION_PX,
    GAP_PX,
    LESION_COLOUR,
    LUNG_COLOUR,
    Panel,
    render_overview,
    write_overview,
)
from inference.predict import findings_record
from inference.types import (
    AlgorithmFamily,
    Classification,
    CTVolume,
    Findings,
    Lesion,
    LungLabel,
    LungVolumes,
)

# Fixtures (tests/inference/conftest.py): ``phantom``.

SMALL = CTVolume(
    hu=np.full((4, 6, 8), -850, dtype=np.int16), spacing=(0.7, 0.7, 2.0), origin=(-2.8, -2.1, 10.0)
)


def small_findings(**changes) -> Findings:
    labels = np.zeros(SMALL.hu.shape, dtype=np.uint8)
    labels[:, 1:5, 1:4] = LungLabel.RIGHT
    labels[:, 1:5, 4:7] = LungLabel.LEFT
    lesions = (
        Lesion(label=1, score=0.81234, volume_ml=0.0123456, centre_mm=(-1.23, 0.456, 12.0), mean_hu=-650.04),
        Lesion(label=2, score=0.5, volume_ml=0.5, centre_mm=(1.0, 0.0, 13.0), mean_hu=-120.0, primary=True),
    )
    findings = Findings(
        lung_labels=labels,
        lungs=LungVolumes(right_ml=200.04, left_ml=100.0, total_ml=300.04),
        algorithm_name="DeCoVNet",
        algorithm_version="0.1.0+wabc",
        algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
        classification=Classification(probability=0.876543, threshold=0.4),
        lesions=lesions,
    )
    return Findings(**{**findings.__dict__, **changes})


def test_record_of_a_positive_scan() -> None:
    record = findings_record(small_findings(), SMALL, Path("/data/scan.nii.gz"), 0.4)
    assert record["probability"] == 0.8765
    assert record["positive"] is True
    assert record["threshold"] == 0.4
    assert record["not_assessable"] is None
    assert record["lungs"] == {"right_ml": 200.0, "left_ml": 100.0, "total_ml": 300.0}
    first, second = record["lesions"]
    assert first == {
        "label": 1,
        "volume_ml": 0.01,
        "score": 0.812,
        "centre_mm": [-1.2, 0.5, 12.0],
        "mean_hu": -650.0,
        "kind": "ground glass",
        "primary": False,
    }
    assert second["kind"] == "consolidation" and second["primary"] is True
    assert record["lesion_volume_ml"] == 0.51
    assert record["involvement_percent"] == pytest.approx(100 * 0.5123456 / 300.04, abs=0.005)
    assert record["algorithm"] == {"name": "DeCoVNet", "version": "0.1.0+wabc", "family": "artificial intelligence"}
    assert record["source"] == "/data/scan.nii.gz"
    assert record["shape"] == [4, 6, 8]
    assert record["spacing_mm"] == [0.7, 0.7, 2.0]
    json.dumps(record)  # plain JSON values only


def test_record_of_a_scan_that_is_not_assessable() -> None:
    findings = small_findings(
        classification=None,
        not_assessable="only one lung found",
        lesions=(),
        lungs=LungVolumes(right_ml=None, left_ml=None, total_ml=0.0),
    )
    record = findings_record(findings, SMALL, Path("scan"), 0.5)
    assert record["probability"] is None and record["positive"] is None
    assert record["threshold"] == 0.5
    assert record["not_assessable"] == "only one lung found"
    assert record["lungs"] == {"right_ml": None, "left_ml": None, "total_ml": 0.0}
    assert record["lesions"] == [] and record["lesion_volume_ml"] == 0.0
    assert record["involvement_percent"] is None


def drawn_findings(right: np.ndarray, left: np.ndarray, lesion: np.ndarray, cam: np.ndarray | None) -> Findings:
    """Positive findings drawn by hand: the given lungs, one primary lesion and the CAM."""
    labels = np.zeros(right.shape, dtype=np.uint8)
    labels[right] = LungLabel.RIGHT
    labels[left] = LungLabel.LEFT
    return Findings(
        lung_labels=labels,
        lungs=LungVolumes(right_ml=1000.0, left_ml=800.0, total_ml=1800.0),
        algorithm_name="DeCoVNet",
        algorithm_version="test",
        algorithm_family=AlgorithmFamily.ARTIFICIAL_INTELLIGENCE,
        classification=Classification(probability=0.9, threshold=0.5),
        lesions=(Lesion(label=1, score=0.9, volume_ml=7.0, centre_mm=(0.0, 0.0, 0.0), mean_hu=-30.0, primary=True),),
        lesion_labels=lesion.astype(np.uint16),
        cam=cam,
    )


@pytest.fixture(scope="module")
def phantom_findings(phantom) -> Findings:
    """The phantom's lungs, a lesion at the consolidation and a CAM peaking there."""
    centre = np.argwhere(phantom.consolidation).mean(axis=0)
    distance_mm = np.sqrt(
        sum(
            ((np.arange(n) - c) * s).reshape([-1 if a == axis else 1 for a in range(3)]) ** 2
            for axis, (n, c, s) in enumerate(zip(phantom.volume.hu.shape, centre, phantom.volume.spacing[::-1]))
        )
    )
    cam = np.round(255 * np.exp(-((distance_mm / 25.0) ** 2))).astype(np.uint8)
    return drawn_findings(phantom.right, phantom.left, phantom.consolidation, cam)


def test_overview_shows_the_lesion_where_it_is(phantom, phantom_findings: Findings, tmp_path: Path) -> None:
    path = tmp_path / "overview.png"
    write_overview(phantom.volume, phantom_findings, path)
    pixels = np.array(Image.open(path).convert("RGB"))
    image, panels = render_overview(phantom.volume, phantom_findings)
    assert pixels.shape == (image.height, image.width, 3)
    assert [p.view for p in panels] == ["axial"] * 3 + ["coronal"] * 2

    # Physical aspect: axial 360 x 264 mm, coronal 360 x 200 mm (80 slices of 2.5 mm).
    (nz, ny, nx) = phantom.volume.hu.shape
    for panel, aspect in ((panels[0], nx / ny), (panels[3], nx / (nz * 2.5))):
        left, top, right, bottom = panel.box
        assert (right - left) / (bottom - top) == pytest.approx(aspect, rel=0.02)

    # The axial section through the lesion's centre shows its outline there: on the image's
    # left (the patient's right lung), at the consolidation's position within the panel.
    centre = np.argwhere(phantom.consolidation).mean(axis=0)
    through = next(p for p in panels if p.view == "axial" and p.index == round(centre[0]))
    tile = crop(pixels, through)
    rows, cols = np.nonzero(np.all(tile == LESION_COLOUR, axis=-1))
    assert rows.size > 20
    assert cols.mean() / tile.shape[1] == pytest.approx((centre[2] + 0.5) / nx, abs=0.02)
    assert rows.mean() / tile.shape[0] == pytest.approx((centre[1] + 0.5) / ny, abs=0.02)
    assert np.all(tile == LUNG_COLOUR, axis=-1).sum() > 100

    # The heat map is warm at the lesion and absent from the other lung.
    r, g, b = tile[round(rows.mean()), round(cols.mean())].astype(int)
    assert r > b + 60 and g > b + 60
    left_lung = np.argwhere(phantom.left[round(centre[0])]).mean(axis=0)
    r, g, b = tile[round(left_lung[0] / ny * tile.shape[0]), round(left_lung[1] / nx * tile.shape[1])].astype(int)
    assert abs(r - b) <= 2 and abs(g - b) <= 2


def feet_first_mirrored(volume: CTVolume, *arrays: np.ndarray) -> tuple[CTVolume, ...]:
    """The same patient stored with the slice and column axes reversed (direction -x, -z)."""
    (nz, _, nx), (sx, _, sz) = volume.hu.shape, volume.spacing
    origin = (volume.origin[0] + (nx - 1) * sx, volume.origin[1], volume.origin[2] + (nz - 1) * sz)
    mirrored = CTVolume(volume.hu[::-1, :, ::-1], volume.spacing, origin, np.diag([-1.0, 1.0, -1.0]))
    return (mirrored, *(array[::-1, :, ::-1] for array in arrays))


@pytest.mark.parametrize("storage", ["head first", "feet first, mirrored"])
def test_overview_orientation_follows_the_patient(phantom, storage: str) -> None:
    """A lesion in the top of the right lung shows on the image left, at the top of the coronal
    section, however the volume is stored."""
    top_of_right = phantom.right & (np.arange(phantom.right.shape[0]) >= 60)[:, None, None]
    volume, right, left, lesion = phantom.volume, phantom.right, phantom.left, top_of_right
    if storage != "head first":
        volume, right, left, lesion = feet_first_mirrored(volume, right, left, lesion)
    image, panels = render_overview(volume, drawn_findings(right, left, lesion, cam=None))
    pixels = np.array(image)
    for view in ("axial", "coronal"):
        panel = next(p for p in panels if p.view == view and np.all(crop(pixels, p) == LESION_COLOUR, axis=-1).any())
        rows, cols = np.nonzero(np.all(crop(pixels, panel) == LESION_COLOUR, axis=-1))
        height, width = panel.box[3] - panel.box[1], panel.box[2] - panel.box[0]
        assert cols.mean() < 0.4 * width
        if view == "coronal":
            assert rows.mean() < 0.4 * height


def crop(pixels: np.ndarray, panel: Panel) -> np.ndarray:
    left, top, right, bottom = panel.box
    return pixels[top:bottom, left:right]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"classification": None, "not_assessable": "no lungs found", "lesions": ()},
        {"lung_labels": np.zeros(SMALL.hu.shape, dtype=np.uint8), "lesions": ()},
    ],
    ids=["lesions without label map", "not assessable", "no lungs"],
)
def test_overview_without_lesions_or_cam(changes: dict) -> None:
    image, panels = render_overview(SMALL, small_findings(**changes))
    pixels = np.array(image)
    assert panels and image.width > 0 and image.height > 0
    assert not np.all(pixels == LESION_COLOUR, axis=-1).any()


def drawn_levels(phantom, findings: Findings) -> dict[str, np.ndarray]:
    """CAM levels drawn by hand: low all over the left lung, mid nowhere, high the findings' CAM."""
    return {"low": (phantom.left * 255).astype(np.uint8), "mid": np.zeros_like(findings.cam), "high": findings.cam}


def test_overview_has_a_band_per_cam_level_on_the_same_sections(phantom, phantom_findings: Findings) -> None:
    single, single_panels = render_overview(phantom.volume, phantom_findings)
    levels = drawn_levels(phantom, phantom_findings)
    image, panels = render_overview(phantom.volume, phantom_findings, [(LEVELS[n], cam) for n, cam in levels.items()])
    pixels = np.array(image)

    titles = list(LEVELS.values())
    assert titles == ["low (stem)", "mid (block 1)", "high (block 2)"]
    assert [p.level for p in panels] == [title for title in titles for _ in single_panels]
    assert {p.level for p in single_panels} == {""}
    assert image.width == single.width
    band = single.height - CAPTION_PX + GAP_PX  # one band of sections
    assert image.height == CAPTION_PX + 3 * (CAPTION_PX + band) - GAP_PX

    by_level = {title: [p for p in panels if p.level == title] for title in titles}
    for title, band_panels in by_level.items():
        # The same sections in every band, each band below its title.
        assert [(p.view, p.index) for p in band_panels] == [(p.view, p.index) for p in single_panels]
        top = min(p.box[1] for p in band_panels)
        assert (pixels[top - CAPTION_PX : top].min(axis=-1) > 128).sum() > 20, f"{title}: title drawn (white text)"
    # The high band is the single overview's band; each band shows its own map.
    high = by_level["high (block 2)"]
    for panel, alone in zip(high, single_panels):
        np.testing.assert_array_equal(crop(pixels, panel)[20:], crop(np.array(single), alone)[20:])
    axial = [next(p for p in by_level[title] if p.view == "axial") for title in titles]
    low, mid, _ = (crop(pixels, p).astype(int) for p in axial)
    assert warm_pixels(low) > 1000 and warm_pixels(mid) == 0


def warm_pixels(tile: np.ndarray) -> int:
    """Pixels tinted by the red-to-yellow heat map (grey CT and blue outlines are not)."""
    return int(((tile[..., 0] - tile[..., 2]) > 40).sum())



def test_predict_command_writes_every_map_of_positive_findings(
    phantom, phantom_findings: Findings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writing side on its own (the analysis stubbed): lesion, CAM and CAM-level maps, a
    positive record; without CAM levels, none computed and no stale ones left."""
    calls = []

    class DrawnAnalyzer:
        def __init__(self, options: AnalysisOptions) -> None:
            assert options.threshold == 0.3 and options.threads == 1

        def analyze(self, volume: CTVolume) -> Findings:
            return phantom_findings

        def multilevel_cams(self, volume: CTVolume, lung_labels: np.ndarray) -> dict[str, np.ndarray]:
            calls.append(volume)
            np.testing.assert_array_equal(lung_labels, phantom_findings.lung_labels)
            return drawn_levels(phantom, phantom_findings)

    monkeypatch.setattr(predict, "Analyzer", DrawnAnalyzer)
    source = tmp_path / "phantom.nii.gz"
    write_nifti(phantom.volume, phantom.volume.hu, source)
    out = tmp_path / "out"
    command = ["predict", str(source), "--out", str(out), "--threads", "1", "--threshold", "0.3"]

    assert main(command) == 0

    record = json.loads((out / "findings.json").read_text())
    assert record["positive"] is True and record["lesions"][0]["kind"] == "consolidation"
    lesions = read_volume(out / "lesions.nii.gz")
    np.testing.assert_array_equal(lesions.hu, phantom.consolidation)
    assert lesions.origin == pytest.approx(phantom.volume.origin)
    np.testing.assert_array_equal(read_volume(out / "cam.nii.gz").hu, phantom_findings.cam)
    levels = drawn_levels(phantom, phantom_findings)
    for name in ("low", "mid"):
        written = read_volume(out / f"cam-{name}.nii.gz")
        np.testing.assert_array_equal(written.hu, levels[name])
        assert written.origin == pytest.approx(phantom.volume.origin)
    with_levels = Image.open(out / "overview.png").size
    assert len(calls) == 1

    assert main([*command, "--no-cam-levels"]) == 0

    assert len(calls) == 1, "no CAM levels computed"
    assert not (out / "cam-low.nii.gz").exists() and not (out / "cam-mid.nii.gz").exists()
    assert (out / "cam.nii.gz").is_file()
    width, height = Image.open(out / "overview.png").size
    assert width == with_levels[0] and 2.5 * height < with_levels[1]


def test_predict_command_writes_findings_masks_and_overview(phantom, tmp_path: Path) -> None:
    source = tmp_path / "phantom.nii.gz"
    write_nifti(phantom.volume, phantom.volume.hu, source)
    out = tmp_path / "out"

    assert main(["predict", str(source), "--out", str(out), "--threads", "1"]) == 0

    record = json.loads((out / "findings.json").read_text())
    assert record["source"] == str(source)
    assert record["shape"] == list(phantom.volume.hu.shape)
    assert (out / "overview.png").is_file()
    assert record["probability"] is not None, "the phantom is classified, so it has a CAM"
    for name in ("cam.nii.gz", "cam-low.nii.gz", "cam-mid.nii.gz"):
        cam = read_volume(out / name)
        assert cam.hu.shape == phantom.volume.hu.shape and cam.hu.min() >= 0 and cam.hu.max() <= 255, name
    lungs = read_volume(out / "lungs.nii.gz")
    assert lungs.hu.shape == phantom.volume.hu.shape
    assert lungs.spacing == pytest.approx(phantom.volume.spacing)
    assert lungs.origin == pytest.approx(phantom.volume.origin)
    np.testing.assert_allclose(lungs.direction, phantom.volume.direction)
    assert set(np.unique(lungs.hu)) <= {label.value for label in LungLabel}

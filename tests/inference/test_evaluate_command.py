"""``python -m inference evaluate``: the paper's figures from the released predictions, the three
input formats, the lesion hit rate and lung Dice against masks written here, and the errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA, require_path

from inference.cli import main
from inference.grid import VoxelGrid, point_in_mask
from inference.mask_metrics import LesionHit, lesion_hit
from inference.types import Lesion

RELEASED = SHARED_DATA / "decovnet" / "20200212-auc95p9.txt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*argv: str | Path) -> int:
    return main(["evaluate", *(str(a) for a in argv)])


def test_reproduces_the_papers_figures_from_the_released_predictions(tmp_path: Path) -> None:
    released = require_path(RELEASED)
    out, report = tmp_path / "evaluation.json", tmp_path / "report"
    assert run("--predictions", released, "--json", out, "--report", report) == 0

    d = json.loads(out.read_text())
    assert (d["n_scans"], d["n_positive"], d["n_negative"], d["n_not_assessable"]) == (131, 75, 56, 0)
    assert round(d["roc_auc"], 3) == 0.959
    assert round(d["pr_auc"], 3) == 0.976  # scikit-learn's step-wise average precision
    (point,) = d["operating_points"]
    assert point["threshold"] == 0.5
    assert round(point["accuracy"], 3) == 0.901
    assert round(point["sensitivity"], 3) == 0.840
    assert round(point["specificity"], 3) == 0.982
    assert round(point["ppv"], 3) == 0.984
    assert round(point["npv"], 3) == 0.821
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (63, 1, 55, 12)
    for key in ("roc_auc", "pr_auc"):
        ci = d[f"{key}_ci"]
        assert ci["lower"] < d[key] < ci["upper"] and ci["resamples"] == 2000
    target = d["target_sensitivity_point"]
    assert target["target"] == 0.95 and target["sensitivity"] >= 0.95
    assert sum(b["count"] for b in d["reliability"]) == 131
    assert 0 < d["brier"] < 0.25
    assert len(d["per_scan"]) == 131

    for name in ("roc.png", "pr.png", "reliability.png"):
        assert (report / name).read_bytes().startswith(PNG_SIGNATURE)
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "n = 131 scans" in page and "0.959 (95 % CI" in page


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join((header, *rows)) + "\n")
    return path


def test_csv_with_truth_and_a_not_assessable_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions = write_csv(
        tmp_path / "predictions.csv", "case,probability,label",
        "a,0.9,1", "b,0.6,0", "c,0.4,1", "d,0.1,0", "e,0.7,", "f,,1",
    )
    truth = write_csv(tmp_path / "truth.csv", "case,label", "b,1", "e,0", "unseen,1")
    out = tmp_path / "out.json"
    assert run("--predictions", predictions, "--truth", truth, "--json", out,
               "--thresholds", "0.5", "0.65", "--bootstrap", "200", "--seed", "4") == 0

    d = json.loads(out.read_text())
    # Scored: a 0.9/1, b 0.6/1 (truth wins), c 0.4/1, d 0.1/0, e 0.7/0 (truth completes); f excluded.
    assert (d["n_scans"], d["n_positive"], d["n_negative"]) == (5, 3, 2)
    assert d["n_not_assessable"] == 1 and d["not_assessable"][0]["case"] == "f"
    assert d["truth_without_prediction"] == ["unseen"]
    # Positive-negative pairs ranked correctly: a>d, a>e, b>d, c>d = 4 of 6.
    assert d["roc_auc"] == pytest.approx(4 / 6)
    # Ranking a(1) e(0) b(1) c(1) d(0): AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4.
    assert d["pr_auc"] == pytest.approx(1 / 3 + 2 / 9 + 1 / 4)
    half, higher = d["operating_points"]
    assert (half["tp"], half["fp"], half["tn"], half["fn"]) == (2, 1, 1, 1)
    assert (higher["threshold"], higher["tp"], higher["fp"]) == (0.65, 1, 1)
    assert d["target_sensitivity_point"]["threshold"] == 0.4  # the highest reaching 3/3
    assert d["brier"] == pytest.approx(np.mean([0.1**2, 0.4**2, 0.6**2, 0.1**2, 0.7**2]))
    assert d["roc_auc_ci"]["resamples"] <= 200
    assert {row["case"]: row["positive"] for row in d["per_scan"]} == {
        "a": True, "b": True, "c": False, "d": False, "e": True, "f": None,
    }
    assert "lesion_hit_rate" not in d and "lung_dice" not in d
    assert "n = 5 (3 positive, 2 negative); 1 not assessable" in capsys.readouterr().out


# A predict-output folder: masks on a grid with flipped x and y (as NIfTI from RAS reads in LPS).
SIZE, SPACING, ORIGIN = (20, 20, 10), (2.0, 2.0, 3.0), (20.0, 20.0, -15.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def box_image(lower: tuple[int, int, int], upper: tuple[int, int, int], value: int = 1,
              size=SIZE, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    """A label map with ``value`` in the index box [lower, upper) (x, y, z)."""
    array = np.zeros(size[::-1], dtype=np.uint8)
    array[lower[2]:upper[2], lower[1]:upper[1], lower[0]:upper[0]] = value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    return image


def centre_of(index: tuple[int, int, int]) -> list[float]:
    return list(box_image((0, 0, 0), (0, 0, 0)).TransformIndexToPhysicalPoint(index))


def write_case(folder: Path, probability: float | None, lesions: list[tuple[tuple[int, int, int], bool]],
               lungs: sitk.Image | None = None) -> None:
    folder.mkdir(parents=True)
    findings = {
        "probability": probability,
        "positive": None if probability is None else probability >= 0.5,
        "threshold": 0.5,
        "not_assessable": "lungs cut off" if probability is None else None,
        "lesions": [{"label": n + 1, "centre_mm": centre_of(index), "primary": primary}
                    for n, (index, primary) in enumerate(lesions)],
    }
    (folder / "findings.json").write_text(json.dumps(findings))
    if lungs is not None:
        sitk.WriteImage(lungs, str(folder / "lungs.nii.gz"))


INSIDE, OUTSIDE = (3, 3, 3), (12, 12, 3)  # the lesion box is [2, 6) x [2, 6) x [2, 5)


@pytest.fixture
def predict_folder(tmp_path: Path) -> tuple[Path, Path]:
    outputs, masks = tmp_path / "outputs", tmp_path / "truth" / "masks"
    masks.mkdir(parents=True)
    sitk.WriteImage(box_image((2, 2, 2), (6, 6, 5)), str(masks / "lesion.nii.gz"))
    sitk.WriteImage(box_image((0, 0, 0), (0, 0, 0)), str(masks / "empty.nii.gz"))
    # Lungs: predicted x 5..14 (two labels), reference x 7..16: overlap 8 of 10 columns, Dice 0.8.
    lungs = box_image((5, 5, 3), (15, 15, 7))
    lungs = sitk.Add(lungs, box_image((10, 5, 3), (15, 15, 7)))  # left half labelled 2
    sitk.WriteImage(box_image((7, 5, 3), (17, 15, 7), value=3), str(masks / "lungs-a.nii.gz"))
    # Reference of case b on a grid twice as fine: nearest neighbour gives back the same box.
    fine = box_image((10, 10, 9), (30, 30, 21), size=(40, 40, 30), spacing=(1.0, 1.0, 1.0),
                     origin=(20.0, 20.0, -15.0))
    sitk.WriteImage(fine, str(masks / "lungs-b.nii.gz"))
    lungs_b = box_image((5, 5, 3), (15, 15, 7))

    write_case(outputs / "a", 0.9, [(INSIDE, True), (OUTSIDE, False)], lungs)      # primary hit
    write_case(outputs / "b", 0.8, [(OUTSIDE, True), (INSIDE, False)], lungs_b)    # any hit only
    write_case(outputs / "c", 0.7, [(OUTSIDE, True)])                              # miss
    write_case(outputs / "d", 0.6, [])                                             # called, nothing reported
    write_case(outputs / "e", 0.3, [])                                             # missed call: not counted
    write_case(outputs / "f", 0.2, [])                                             # true negative
    write_case(outputs / "g", None, [])                                            # not assessable
    (outputs / "not-a-case").mkdir()
    truth = write_csv(
        tmp_path / "truth" / "truth.csv", "case,label,lesion_mask,lung_mask",
        "a,1,masks/lesion.nii.gz,masks/lungs-a.nii.gz", "b,1,masks/lesion.nii.gz,masks/lungs-b.nii.gz",
        "c,1,masks/lesion.nii.gz,", "d,1,masks/empty.nii.gz,", "e,1,masks/lesion.nii.gz,",
        "f,0,masks/empty.nii.gz,", "g,1,,",
    )
    return outputs, truth


def test_predict_folder_lesion_hits_and_lung_dice(predict_folder: tuple[Path, Path], tmp_path: Path) -> None:
    outputs, truth = predict_folder
    out, report = tmp_path / "out.json", tmp_path / "report"
    assert run("--predictions", outputs, "--truth", truth, "--json", out, "--report", report, "--bootstrap", "50") == 0

    d = json.loads(out.read_text())
    assert (d["n_scans"], d["n_positive"], d["n_negative"], d["n_not_assessable"]) == (6, 5, 1, 1)
    assert d["not_assessable"] == [{"case": "g", "reason": "lungs cut off"}]
    hits = d["lesion_hit_rate"]
    assert (hits["n_scans"], hits["primary_hits"], hits["any_hits"]) == (4, 1, 2)  # a, b, c, d
    assert hits["primary"] == 0.25 and hits["any"] == 0.5
    rows = {row["case"]: row for row in d["per_scan"]}
    assert [(rows[c]["primary_hit"], rows[c]["any_hit"]) for c in "abcdef"] == [
        (True, True), (False, True), (False, False), (False, False), (None, None), (None, None),
    ]
    assert rows["a"]["lung_dice"] == pytest.approx(0.8)
    assert rows["b"]["lung_dice"] == 1.0
    assert d["lung_dice"]["n_scans"] == 2 and d["lung_dice"]["mean"] == pytest.approx(0.9)
    page = (report / "report.html").read_text()
    assert "Lesion hit rate" in page and "Lung Dice" in page


def test_point_in_mask_agrees_with_simpleitk() -> None:
    """The hit test's voxel is SimpleITK's TransformPhysicalPointToIndex, on an oblique grid too."""
    image = box_image((2, 2, 2), (6, 6, 5))
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple((rotation @ np.reshape(DIRECTION, (3, 3))).ravel()))
    grid = VoxelGrid.from_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    mask = sitk.GetArrayFromImage(image) > 0
    rng = np.random.default_rng(0)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((4.0, 4.0, 3.5)))
    for point in centre + rng.normal(0.0, 8.0, size=(300, 3)):
        index = image.TransformPhysicalPointToIndex(tuple(point))
        inside = all(0 <= i < n for i, n in zip(index, image.GetSize(), strict=True))
        expected = inside and bool(mask[index[::-1]])
        assert point_in_mask(mask, grid, point) == expected
        assert tuple(grid.nearest_index(point)[::-1]) == index


def test_a_scan_without_a_label_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    predictions = write_csv(tmp_path / "p.csv", "case,probability", "a,0.9", "b,0.2")
    with caplog.at_level(logging.ERROR):
        assert run("--predictions", predictions) == 1
    assert "2 scan(s) have no label: a, b" in caplog.text


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.txt", "h1\nh2\nh3\npath uid 0.1 0.9\n", "line 4: expected 'path uid p_negative p_positive label'"),
        ("bad.csv", "case,score\na,0.1\n", "the header lacks column(s) probability"),
        ("range.csv", "case,probability,label\na,1.5,1\n", "line 2: probability '1.5' is outside [0, 1]"),
        ("label.csv", "case,probability,label\na,0.5,yes\n", "label 'yes' is not 0 or 1"),
        ("twice.csv", "case,probability,label\na,0.5,1\na,0.2,0\n", "case(s) listed twice: a"),
        ("one-class.csv", "case,probability,label\na,0.5,1\nb,0.2,1\n", "must include positive and negative"),
        ("binary.txt", b"\xff\xfe\x00garbage", "cannot read"),
    ],
)
def test_unreadable_predictions_fail_with_a_clear_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, text: str | bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with caplog.at_level(logging.ERROR):
        assert run("--predictions", path) == 1
    assert message in caplog.text


def test_missing_inputs_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    predictions = write_csv(tmp_path / "p.csv", "case,probability,label", "a,0.9,1", "b,0.2,0")
    truth = write_csv(tmp_path / "t.csv", "case,label,lesion_mask", "a,1,missing.nii.gz")
    with caplog.at_level(logging.ERROR):
        assert run("--predictions", tmp_path / "absent.txt") == 1
        assert run("--predictions", tmp_path) == 1  # a folder without predict outputs
        assert run("--predictions", predictions, "--truth", truth) == 1
    assert "absent.txt: cannot read" in caplog.text
    assert "no subfolder holds a findings.json" in caplog.text
    assert "mask missing.nii.gz does not exist" in caplog.text
    with pytest.raises(SystemExit) as usage:
        main(["evaluate"])
    assert usage.value.code == 2


def test_lesion_hit_takes_the_analysis_lesions_too() -> None:
    """evaluate-inserted scores the analysis' own Lesion objects with the same test."""
    image = box_image((2, 2, 2), (6, 6, 5))
    grid = VoxelGrid.from_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    truth = sitk.GetArrayFromImage(image) > 0
    inside, outside = (tuple(centre_of(i)) for i in (INSIDE, OUTSIDE))
    lesions = (Lesion(1, 0.9, 2.0, outside, -500.0, primary=True), Lesion(2, 0.5, 1.0, inside, -500.0))
    hit = lesion_hit(truth, grid, lesions)
    assert (hit.primary, hit.any) == (False, True)
    assert lesion_hit(truth, grid, ()) == LesionHit(primary=False, any=False)

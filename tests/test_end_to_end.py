"""The node as operators run it: `dicomnode serve` in its own process, real peers around it.

dcmtk storescu plays the scanner, Orthanc the PACS that routes CT series to the node with the
Lua script the operator's guide ships, dcmtk storescp a viewer's store; dciodvfy validates what
comes back, and dcmjs and highdicom read it. Nothing is mocked.
"""

from __future__ import annotations

import signal
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from conftest import ROOT, free_port, require_path
from inference.overview import LESION_COLOUR, LUNG_COLOUR
from factories import PhantomSeries
from peers import (
    KEY_IMAGES,
    LABEL_MAP_SEG,
    NODE_AET,
    SEG,
    NodeProcess,
    OrthancPACS,
    StoreSCP,
    dciodvfy_errors,
    echo_ok,
    results_by_series,
    storescu,
    wait_until,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ROUTING_SCRIPT = ROOT / "config" / "orthanc" / "route-to-decovnode.lua"


def lung_volumes_ml(sr: pydicom.Dataset) -> dict[str, float]:
    """Volume measurements of a TID 1500 report by tracking identifier (read with pydicom alone)."""
    volumes = {}
    for container in sr.ContentSequence:
        if container.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in container.ContentSequence:  # Measurement Group (125007)
            items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
            if "112039" in items and "118565006" in items:  # Tracking Identifier, Volume
                value = items["118565006"].MeasuredValueSequence[0]
                assert value.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
                volumes[items["112039"].TextValue] = float(value.NumericValue)
    return volumes


PROBABILITY = "122157"  # DCM "Probability"


def numeric_value(sr: pydicom.Dataset, concept: str) -> float:
    """The first numeric item named ``concept`` anywhere in the report's content tree."""
    pending = list(sr.ContentSequence)
    while pending:
        item = pending.pop(0)
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == concept:
            return float(item.MeasuredValueSequence[0].NumericValue)
        pending.extend(getattr(item, "ContentSequence", []))
    raise AssertionError(f"no numeric item {concept} in the report")


@pytest.fixture
def peers(tmp_path: Path):
    node_port = free_port()
    storescp = StoreSCP(tmp_path / "storescp", aet="RESULTS")
    orthanc = OrthancPACS(tmp_path / "orthanc", node_aet=NODE_AET, node_port=node_port)
    yield node_port, storescp, orthanc
    orthanc.stop()
    storescp.stop()


def destinations(storescp: StoreSCP, orthanc: OrthancPACS) -> list[str]:
    return [f"RESULTS@127.0.0.1:{storescp.port}", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"]


def routed_node_config(path: Path, orthanc: OrthancPACS, viewer: StoreSCP) -> Path:
    """The operator's configuration: everything back to the PACS; a LABELMAP SEG and its report
    to a viewer's store."""
    path.write_text(
        f"""
[[destinations]]
name = "pacs"
type = "dicom"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[[destinations]]
name = "viewer"
type = "dicom"
ae_title = "{viewer.aet}"
host = "127.0.0.1"
port = {viewer.port}
objects = ["seg", "sr"]
seg_type = "labelmap"
"""
    )
    return path


def pacs_results(orthanc: OrthancPACS, directory: Path) -> list[Path]:
    """Every result instance Orthanc holds (SEG, SR, key images), downloaded into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for series_id in orthanc.get("/series"):
        series = orthanc.get(f"/series/{series_id}")
        if series["MainDicomTags"]["Modality"] == "CT":
            continue
        for instance in series["Instances"]:
            path = directory / f"{instance}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{instance}/file"))
            paths.append(path)
    return paths


def test_orthanc_routes_chest_ct_to_the_node_and_files_the_results(tmp_path: Path) -> None:
    """The deployment of the operator's guide. The scanner (storescu) sends LIDC (explicit LE) and
    RICORD (JPEG lossless) to Orthanc; Orthanc's own routing (the shipped Lua script) sends each
    stable CT series to the node; the node returns SEG, SR and key images into the source study
    in Orthanc, and a LABELMAP SEG with its report to a viewer's store. RICORD (COVID-19) is
    called positive with lesion segments, LIDC negative without."""
    lidc = require_path(ROOT.parent / "shared/data/ct/lidc-idri-0001")
    ricord = require_path(lidc.parent / "ricord1a-000082-covid")
    node_port = free_port()
    viewer = StoreSCP(tmp_path / "viewer", aet="VIEWER", promiscuous=True)  # a viewer that knows LABELMAP SEG
    orthanc = OrthancPACS(tmp_path / "orthanc", node_aet=NODE_AET, node_port=node_port, lua_scripts=(ROUTING_SCRIPT,))
    config = routed_node_config(tmp_path / "node.toml", orthanc, viewer)
    node = NodeProcess(tmp_path / "state", node_port, [], config=config)
    try:
        for series in (lidc, ricord):
            storescu(series, orthanc.aet, orthanc.dicom_port, calling="SCANNER")
        wait_until(lambda: len(viewer.files()) >= 4, 900, 1.0, "a LABELMAP SEG and an SR per series at the viewer")
        wait_until(lambda: node.status()["outbox"]["pending"] == 0, 300, 1.0, "the outbox to drain")
        status = node.status()
    finally:
        node.stop()
        viewer.stop()
    try:
        pacs_files = pacs_results(orthanc, tmp_path / "from-pacs")
        studies = {study: orthanc.get(f"/studies/{study}") for study in orthanc.get("/studies")}
        series_of = {study: [orthanc.get(f"/series/{s}") for s in info["Series"]] for study, info in studies.items()}
        routed = "decov-node: routing CT series" in orthanc.output()
    finally:
        orthanc.stop()
    assert routed  # Orthanc's own Lua routing sent the series, not the test
    assert status["jobs"]["done"] == 2 and status["jobs"]["failed"] == 0, status
    assert status["outbox"] == {"pending": 0, "sent": 2 * (2 + KEY_IMAGES) + 2 * 2, "failed": 0}

    # Orthanc filed the results in the study of their source series: CT, SEG, SR, key images.
    assert len(studies) == 2
    for series in series_of.values():
        assert sorted(s["MainDicomTags"]["Modality"] for s in series) == ["CT", "OT", "SEG", "SR"]
        (key_series,) = [s for s in series if s["MainDicomTags"]["Modality"] == "OT"]
        assert len(key_series["Instances"]) == KEY_IMAGES
    for path in [*pacs_files, *viewer.files()]:
        assert dciodvfy_errors(path, labelmap_references=True) == [], path

    pacs = results_by_series(pacs_files[0].parent)
    at_viewer = results_by_series(viewer.directory)
    covid_series = pydicom.dcmread(next(ricord.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    for folder in (lidc, ricord):
        source = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
        seg, sr = pacs[source]["seg"], pacs[source]["sr"]
        assert seg.SOPClassUID == SEG and at_viewer[source]["seg"].SOPClassUID == LABEL_MAP_SEG
        segmentation = hd.seg.Segmentation.from_dataset(seg)
        labels = {segmentation.get_segment_description(n).SegmentLabel for n in segmentation.segment_numbers}
        lesions = {label for label in labels if label.startswith("Lesion")}
        assert labels - lesions == {"Right lung", "Left lung"}
        volumes = lung_volumes_ml(sr)
        for lung in ("Right lung", "Left lung"):
            assert 1000 <= volumes[lung] <= 4000, (source, volumes)
        assert sr.StudyInstanceUID == seg.StudyInstanceUID == at_viewer[source]["sr"].StudyInstanceUID
        probability = numeric_value(sr, PROBABILITY)
        assert numeric_value(at_viewer[source]["sr"], PROBABILITY) == probability
        if source == covid_series:
            assert probability >= 0.5 and lesions, (probability, labels)
        else:
            assert probability < 0.5 and not lesions, (probability, labels)
    check_viewers_agree(tmp_path, ricord, pacs_files, at_viewer[covid_series]["seg_path"])


def check_viewers_agree(tmp_path: Path, ricord: Path, pacs_files: list[Path], labelmap_path: Path) -> None:
    """On RICORD: the BINARY SEG (highdicom) and the LABELMAP SEG (dcmjs) show the same lesions and
    the same lungs but for the lesions; the key images' outlines lie on the SEG's masks."""
    from viewers import dcmjs_segmentation, highdicom_segmentation

    ct_paths = sorted(ricord.iterdir())
    covid_uid = pydicom.dcmread(ct_paths[0], stop_before_pixels=True).SeriesInstanceUID
    by_class = {}
    for path in pacs_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID == SEG and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == covid_uid:
            by_class["seg"] = path
        elif ds.SOPClassUID == SECONDARY_CAPTURE and ds.SourceImageSequence[0].ReferencedSOPInstanceUID in {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct_paths
        }:
            by_class.setdefault("key", []).append(path)
    binary = highdicom_segmentation(by_class["seg"], ct_paths)
    labelmap = dcmjs_segmentation(labelmap_path, ct_paths)
    assert labelmap.numbers == binary.numbers
    lesion_numbers = binary.numbers[2:]
    assert lesion_numbers  # RICORD has lesions
    lesions = np.any([binary.mask(n) for n in lesion_numbers], axis=0)
    for number in binary.numbers:
        expected = binary.mask(number) if number in lesion_numbers else binary.mask(number) & ~lesions
        np.testing.assert_array_equal(labelmap.mask(number), expected, err_msg=f"segment {number}")
    lungs = binary.mask(1) | binary.mask(2)
    uid_index = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: k for k, p in enumerate(ct_paths)}
    for number, path in enumerate(sorted(by_class["key"]), start=1):
        image = pydicom.dcmread(path)
        index = uid_index[image.SourceImageSequence[0].ReferencedSOPInstanceUID]
        pixels = image.pixel_array
        Image.fromarray(pixels).save(tmp_path / f"ricord-key-{number}.png")  # looked at by a person
        drawn = pixels[: lungs.shape[1]]  # RICORD is drawn at its own 512 x 512 pixels
        assert drawn.shape[1] == lungs.shape[2]
        lung_outline = np.all(drawn == LUNG_COLOUR, axis=-1)
        lesion_outline = np.all(drawn == LESION_COLOUR, axis=-1)
        assert lung_outline.any() and not np.any(lung_outline & ~lungs[index])
        assert not np.any(lesion_outline & ~lesions[index])
        assert "COVID-19 POSITIVE" in image.ImageComments and "Not for diagnosis" in image.ImageComments


def test_bad_input_in_one_association_loses_nothing_else(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    """Two series interleaved with a 3-slice series, a series with a hole and a non-CT object,
    all in one association: each bad one is logged with its reason, the good ones come back."""
    node_port, storescp, orthanc = peers
    folder = tmp_path / "study"
    good_a = PhantomSeries(seed=1)
    good_b = PhantomSeries(seed=2, study_uid=good_a.study_uid)
    tiny, holed = PhantomSeries(slices=3, seed=3), PhantomSeries(missing=(20,), seed=4)
    files_a, files_b = good_a.write(folder / "a"), good_b.write(folder / "b")
    interleaved = [f for pair in zip(files_a, files_b) for f in pair]
    other = pydicom.dcmread(files_a[0])
    other.SOPClassUID = other.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    other_path = folder / "secondary-capture.dcm"
    other.save_as(other_path)
    sent = interleaved + tiny.write(folder / "tiny") + holed.write(folder / "holed") + [other_path]

    node = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc))
    try:
        result = storescu(sent, NODE_AET, node_port, calling="SCANNER")
        assert result.stderr.count("Received Store Response (Success)") == len(sent)
        wait_until(lambda: len(storescp.files()) >= 2 * (2 + KEY_IMAGES), 300, 1.0, "results of the two good series")
        wait_until(lambda: node.status()["jobs"]["rejected"] == 2, 60, 1.0, "two rejections")
        assert echo_ok(NODE_AET, node_port)  # still serving
        status = node.status()
    finally:
        node.stop()
    log = node.output()
    assert f"series {tiny.series_uid} (3 instances) not analysed: minimum slices: 3 slices, at least 20 needed" in log
    assert f"series {holed.series_uid} (39 instances) not analysed: no missing slices" in log
    assert "acknowledged and dropped Secondary Capture Image Storage" in log
    assert status["jobs"]["done"] == 2
    assert set(results_by_series(storescp.directory)) >= {good_a.series_uid, good_b.series_uid}
    # No patient identifiers in the log (the node logs at INFO): name, ID, birth date, accession.
    identifiers = (good_a.patient_name, good_a.patient_id, "19700101", "ACC0001")
    assert [identifier for identifier in identifiers if identifier in log] == []


def test_results_arrive_after_the_node_is_killed_and_restarted(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    node_port, storescp, orthanc = peers
    series = PhantomSeries(seed=7)
    files = series.write(tmp_path / "series")
    node = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc), quiet=5.0)
    result = storescu(files, NODE_AET, node_port, calling="SCANNER")
    assert result.stderr.count("Received Store Response (Success)") == len(files)
    node.stop(signal.SIGKILL)  # inside the quiet period: nothing was processed yet
    assert node.popen.returncode == -signal.SIGKILL
    assert not list(storescp.directory.iterdir())

    restarted = NodeProcess(tmp_path / "state", node_port, destinations(storescp, orthanc), quiet=5.0)
    try:
        wait_until(lambda: len(storescp.files()) >= 2 + KEY_IMAGES, 300, 1.0, "results after the restart")
        wait_until(lambda: restarted.status()["outbox"]["pending"] == 0, 60, 1.0, "the outbox to drain")
    finally:
        restarted.stop()
    assert set(results_by_series(storescp.directory)) >= {series.series_uid}
    assert len(storescp.files()) == 2 + KEY_IMAGES  # SEG, SR and the key images, once each

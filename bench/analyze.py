"""Time of the analysis per stage for one CT series, with warm models.

    .venv/bin/python bench/analyze.py [SERIES_DIR] [--repeat 3] [--threads N] [--device cuda] [--json out.json]
    .venv/bin/python bench/analyze.py --quick      # a small synthetic series, to prove it works

Stages: read (files -> volume, the node's own builder), lungs (U-Net on the coarse grid and
back), resample (the classifier's lung box), classifier (DeCoVNet and its CAM), localization
(candidates, R3dcc, mapping back, measuring), encode (SEG + SR), send (both written as files and
C-STOREd by the node's sender code to a dcmtk storescp). The models are loaded once before the
first run; medians over --repeat runs. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the packages first: tests/dicomnode must not shadow dicomnode
sys.path.append(str(ROOT / "tests"))

from dicomnode.encode import encode_results  # noqa: E402
from dicomnode.send.scu import send_files  # noqa: E402
from dicomnode.settings import DicomDestination, Settings  # noqa: E402
from dicomnode.volume import build_volume  # noqa: E402
from factories import PhantomSeries  # noqa: E402  (the tests' synthetic series factory)
from inference.api import Analyzer  # noqa: E402
from inference.options import AnalysisOptions  # noqa: E402
from peers import StoreSCP  # noqa: E402

DEFAULT_SERIES = ROOT.parent / "shared" / "data" / "ct" / "ricord1a-000082-covid"
STAGES = ("read", "lungs", "resample", "classifier", "localization", "encode", "send")


def run_once(paths: list[Path], analyzer: Analyzer, settings: Settings, destination: StoreSCP, work: Path) -> dict[str, float]:
    started = time.perf_counter()
    series = build_volume(paths)
    times = {"read": time.perf_counter() - started}
    findings = analyzer.analyze(series.volume)
    times.update(analyzer.timings)
    started = time.perf_counter()
    results = encode_results(series, findings, settings)
    times["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    files = []
    for index, dataset in enumerate(results):
        files.append(work / f"result-{index}.dcm")
        dataset.save_as(files[-1], enforce_file_format=True)
    peer = DicomDestination("bench", destination.aet, "127.0.0.1", destination.port)
    outcomes = send_files(peer, "DECOVNODE", files, timeout=60)
    times["send"] = time.perf_counter() - started
    if not all(outcome.delivered for outcome in outcomes):
        raise RuntimeError(f"the results were not all delivered: {outcomes}")
    times["total"] = sum(times.get(stage, 0.0) for stage in STAGES)
    return times


def analysis_figures(series_dir: Path | None, repeat: int, threads: int | None = None, device: str = "auto") -> dict:
    """Median seconds per stage over ``repeat`` runs (``series_dir`` None: a small synthetic phantom)."""
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        if series_dir is None:
            series_dir = work / "phantom"
            PhantomSeries().write(series_dir)
        paths = sorted(p for p in series_dir.rglob("*") if p.is_file() and p.suffix != ".xml")
        load_started = time.perf_counter()
        analyzer = Analyzer(AnalysisOptions(threads=threads, device=device, keep_cam=False))  # as the node runs it
        load_s = time.perf_counter() - load_started
        destination = StoreSCP(work / "received", aet="RESULTS")
        try:
            runs = [run_once(paths, analyzer, Settings(), destination, work) for _ in range(repeat)]
        finally:
            destination.stop()
    medians = {key: statistics.median(run.get(key, 0.0) for run in runs) for key in (*STAGES, "total")}
    return {
        "series": str(series_dir) if series_dir.parent != work else "synthetic phantom 40x96x96",
        "instances": len(paths),
        "device": str(analyzer.device),
        "model_load_s": round(load_s, 2),
        "repeat": repeat,
        "median_s": {key: round(value, 2) for key, value in medians.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("series", type=Path, nargs="?", default=DEFAULT_SERIES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="a small synthetic series, one run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"  # for the storescp destination
    figures = analysis_figures(None if args.quick else args.series, 1 if args.quick else args.repeat, args.threads, args.device)
    print(f"analysis of {figures['series']} ({figures['instances']} instances) on {figures['device']}, median of {figures['repeat']}")
    for key, value in figures["median_s"].items():
        print(f"  {key:<13} {value:7.2f} s")
    print(f"  (model load once: {figures['model_load_s']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

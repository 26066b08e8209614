"""Time of the analysis per stage for one CT series, with warm models.

    .venv/bin/python bench/analyze.py [SERIES_DIR] [--repeat 3] [--threads N] [--json out.json]
    .venv/bin/python bench/analyze.py --quick      # a small synthetic series, to prove it works

Stages: read (files -> volume, the node's own builder), lungs (U-Net on the coarse grid and
back), resample (the classifier's lung box), classifier (DeCoVNet and its CAM), localization
(candidates, R3dcc, mapping back, measuring), encode (SEG + SR). The models are loaded once
before the first run; medians over --repeat runs. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the packages first: tests/dicomnode must not shadow dicomnode
sys.path.append(str(ROOT / "tests"))

from dicomnode.encode import encode_results  # noqa: E402
from dicomnode.settings import Settings  # noqa: E402
from dicomnode.volume import build_volume  # noqa: E402
from factories import PhantomSeries  # noqa: E402  (the tests' synthetic series factory)
from inference.api import Analyzer  # noqa: E402
from inference.options import AnalysisOptions  # noqa: E402

DEFAULT_SERIES = ROOT.parent / "shared" / "data" / "ct" / "ricord1a-000082-covid"
STAGES = ("read", "lungs", "resample", "classifier", "localization", "encode")


def run_once(paths: list[Path], analyzer: Analyzer, settings: Settings) -> dict[str, float]:
    started = time.perf_counter()
    series = build_volume(paths)
    times = {"read": time.perf_counter() - started}
    findings = analyzer.analyze(series.volume)
    times.update(analyzer.timings)
    started = time.perf_counter()
    encode_results(series, findings, settings)
    times["encode"] = time.perf_counter() - started
    times["total"] = sum(times.get(stage, 0.0) for stage in STAGES)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("series", type=Path, nargs="?", default=DEFAULT_SERIES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quick", action="store_true", help="a small synthetic series, one run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if args.quick:
            args.series, args.repeat = Path(work), 1
            PhantomSeries().write(args.series)
        paths = sorted(p for p in args.series.rglob("*") if p.is_file() and p.suffix != ".xml")
        load_started = time.perf_counter()
        analyzer = Analyzer(AnalysisOptions(threads=args.threads))
        load_s = time.perf_counter() - load_started
        runs = [run_once(paths, analyzer, Settings()) for _ in range(args.repeat)]
    medians = {key: statistics.median(run.get(key, 0.0) for run in runs) for key in (*STAGES, "total")}
    figures = {
        "series": str(args.series) if not args.quick else "synthetic phantom 40x96x96",
        "instances": len(paths),
        "device": str(analyzer.device),
        "model_load_s": round(load_s, 2),
        "repeat": args.repeat,
        "median_s": {key: round(value, 2) for key, value in medians.items()},
    }
    print(f"analysis of {figures['series']} ({len(paths)} instances) on {figures['device']}, median of {args.repeat}")
    for key, value in figures["median_s"].items():
        print(f"  {key:<13} {value:7.2f} s")
    print(f"  (model load once: {figures['model_load_s']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m inference``: model work from the command line (predict, train, evaluate).

The DICOM node does not use this; it is for the engineer who retrains the models on local data
or checks a scan by hand. Every command returns an exit code instead of raising.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from inference.options import CLASSIFIER_NAMES

logger = logging.getLogger("inference")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description="DeCoVNet chest CT models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="analyse one CT (DICOM folder or NIfTI file)")
    predict.add_argument("source", type=Path, help="DICOM series folder or NIfTI file")
    predict.add_argument("--out", type=Path, required=True, help="folder for findings.json, masks and overview")
    predict.add_argument("--weights-dir", type=Path, help="weights folder (default: the shipped weights)")
    predict.add_argument("--threshold", type=float, default=0.5, help="probability of a positive call")
    predict.add_argument("--min-lesion-score", type=float, default=0.3, help="lowest lesion score reported")
    predict.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument(
        "--cam-levels", action=argparse.BooleanOptionalAction, default=True,
        help="also the CAMs of the stem and block 1 (Grad-CAM; one backward pass): cam-low/cam-mid.nii.gz, "
        "overview rows per level (default: on)",
    )

    lungs = commands.add_parser("train-lungs", help="train the lung U-Net on pseudo-labels")
    _training_arguments(lungs, steps=800)
    lungs.add_argument("--scans", type=Path, nargs="+", required=True, help="CT folders or NIfTI files")
    lungs.add_argument("--lesions", type=Path, help="folder of lesion masks (*_mask.nii.gz) to insert")
    lungs.add_argument("--lesion-variants", type=int, default=6, help="lesion-inserted copies per scan")

    classifier = commands.add_parser("train-classifier", help="train DeCoVNet (or the 2-D comparison network)")
    _training_arguments(classifier, steps=None)
    classifier.add_argument(
        "--model", choices=CLASSIFIER_NAMES, default="decovnet",
        help="decovnet (default) or 2dclfnet, the paper's 2-D comparison network (weights clfnet2d.pt)",
    )
    classifier.add_argument("--negatives", type=Path, nargs="+", required=True, help="COVID-19-negative CTs")
    classifier.add_argument("--positives", type=Path, nargs="*", default=[], help="COVID-19-positive CTs")
    classifier.add_argument("--lesions", type=Path, help="lesion masks: negatives with inserted lesions become positives")
    classifier.add_argument("--epochs", type=int, default=100)
    classifier.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (paper: 1e-5)")
    classifier.add_argument(
        "--lesion-count", type=int, nargs=2, default=(1, 5), metavar=("MIN", "MAX"),
        help="lesions per synthetic positive (default 1 5)",
    )
    classifier.add_argument("--min-lesion-ml", type=float, default=0.5, help="smallest lesion shape inserted")
    classifier.add_argument(
        "--easy-epochs", type=int, default=0,
        help="curriculum: first epochs on twins only, slice windows, consolidations only, no augmentation, ranked only",
    )
    classifier.add_argument("--easy-slices", type=int, default=32, help="slices of the easy stage's windows")
    classifier.add_argument(
        "--rank-weight", type=float, default=1.0, help="weight of the twins' ranking term (0: cross-entropy alone)"
    )
    classifier.add_argument(
        "--clip-grad-norm", type=float, default=1.0, help="largest gradient norm of a step (0: no clipping)"
    )
    classifier.add_argument("--validate-every", type=int, default=5, help="epochs between validations")
    scores = commands.add_parser(
        "evaluate", help="ROC/PR AUC with bootstrap CIs, operating points, calibration, lesion hits, lung Dice"
    )
    scores.add_argument(
        "--predictions", type=Path, required=True,
        help="the authors' released result file, a CSV (case,probability[,label]) or a folder of 'predict' outputs",
    )
    scores.add_argument(
        "--truth", type=Path,
        help="CSV case,label[,lesion_mask,lung_mask] (mask paths relative to it); its labels win",
    )
    scores.add_argument("--json", type=Path, help="write the figures and per-scan rows here")
    scores.add_argument("--report", type=Path, help="folder for report.html and the ROC, PR and reliability PNGs")
    scores.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.5], help="operating points (positive at >=; default 0.5)"
    )
    scores.add_argument(
        "--target-sensitivity", type=float, default=0.95, help="also report the highest threshold reaching it"
    )
    scores.add_argument("--bootstrap", type=int, default=2000, help="resamples for the 95 %% CIs (0: none)")
    scores.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")

    evaluate = commands.add_parser(
        "evaluate-inserted", help="evaluate on a held-out negative scan with and without inserted lesions"
    )
    evaluate.add_argument("scan", type=Path, help="a COVID-19-negative CT no model was trained on")
    evaluate.add_argument("--lesions", type=Path, required=True, help="folder of lesion masks (*_mask.nii.gz)")
    evaluate.add_argument("--cases", type=int, default=6, help="lesion cases (each with new lesions)")
    evaluate.add_argument("--seed", type=int, default=1000)
    evaluate.add_argument("--json", type=Path, help="write the results here")
    evaluate.add_argument(
        "--threshold", type=float, default=0.5,
        help="call threshold; a low one localizes lesions on every case (hit rate of the localization alone)",
    )
    evaluate.add_argument("--weights-dir", type=Path, help="weights folder (default: the shipped weights)")
    evaluate.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    heldout = commands.add_parser(
        "evaluate-heldout", help="the model card's evaluation: both classifiers on every scan they were not trained on"
    )
    heldout.add_argument("--data", type=Path, required=True, help="the shared data folder (ct/, lesion-masks/)")
    heldout.add_argument("--out", type=Path, required=True, help="folder for the per-case predict outputs and truth")
    heldout.add_argument("--cases", type=int, default=4, help="lesion cases of the held-out negative scan")
    heldout.add_argument("--seed", type=int, default=1000)
    heldout.add_argument("--weights-dir", type=Path, help="weights folder (default: the shipped weights)")
    heldout.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    heldout.add_argument(
        "--update", action="store_true",
        help="also write heldout-evaluation.json and the model card's section into the weights folder",
    )
    return parser


def _training_arguments(parser: argparse.ArgumentParser, steps: int | None) -> None:
    parser.add_argument("--out", type=Path, required=True, help="weights folder (checkpoints in out/checkpoints)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    if steps is not None:
        parser.add_argument("--steps", type=int, default=steps)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError, RuntimeError) as error:
        logger.error("%s failed: %s", args.command, error)
        return 1


def _train_lungs(args: argparse.Namespace) -> int:
    from inference.training.lungs import LungTrainingConfig, train_lungs

    config = LungTrainingConfig(
        scans=tuple(args.scans),
        lesions=args.lesions,
        out=args.out,
        seed=args.seed,
        steps=args.steps,
        lesion_variants=args.lesion_variants,
        device=args.device,
        threads=args.threads,
    )
    logger.info("weights written to %s", train_lungs(config))
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    from inference.training.classifier import ClassifierTrainingConfig, train_classifier

    config = ClassifierTrainingConfig(
        negatives=tuple(args.negatives),
        positives=tuple(args.positives),
        lesions=args.lesions,
        out=args.out,
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        lesion_count=tuple(args.lesion_count),
        min_lesion_ml=args.min_lesion_ml,
        easy_epochs=args.easy_epochs,
        easy_slices=args.easy_slices,
        rank_weight=args.rank_weight,
        clip_grad_norm=args.clip_grad_norm or None,
        validate_every=args.validate_every,
        device=args.device,
        threads=args.threads,
        model=args.model,
    )
    logger.info("weights written to %s", train_classifier(config))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from inference.predict import predict_command

    return predict_command(args)


def _evaluate(args: argparse.Namespace) -> int:
    from inference.evaluate_command import evaluate_command

    return evaluate_command(args)


def _evaluate_inserted(args: argparse.Namespace) -> int:
    import json

    from inference.api import Analyzer
    from inference.evaluation import evaluate_inserted
    from inference.options import SHIPPED_WEIGHTS, AnalysisOptions
    from inference.synth import LesionLibrary

    options = AnalysisOptions(
        threshold=args.threshold, threads=args.threads, weights_dir=args.weights_dir or SHIPPED_WEIGHTS
    )
    analyzer = Analyzer(options)
    report = evaluate_inserted(analyzer, args.scan, LesionLibrary.load(args.lesions), args.cases, args.seed)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def _evaluate_heldout(args: argparse.Namespace) -> int:
    import json

    from inference.heldout import CARD_FILE, RESULT_FILE, HeldOutSettings, run_heldout, update_card
    from inference.options import SHIPPED_WEIGHTS

    weights = args.weights_dir or SHIPPED_WEIGHTS
    settings = HeldOutSettings(
        data=args.data, out=args.out, cases=args.cases, seed=args.seed, weights_dir=weights, threads=args.threads
    )
    text = json.dumps(run_heldout(settings), indent=2) + "\n"
    (args.out / RESULT_FILE).write_text(text)
    if args.update:
        (weights / RESULT_FILE).write_text(text)
        update_card(weights / CARD_FILE, json.loads(text))
    print(text, end="")
    return 0


COMMANDS = {
    "predict": _predict,
    "train-lungs": _train_lungs,
    "train-classifier": _train_classifier,
    "evaluate": _evaluate,
    "evaluate-inserted": _evaluate_inserted,
    "evaluate-heldout": _evaluate_heldout,
}

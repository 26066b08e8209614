"""The ``dicomnode`` command: serve, echo, process, status, check-config.

Heavy imports (pynetdicom, torch, SimpleITK) happen inside the command that needs them, so
``--help`` and ``check-config`` answer at once. ``main(argv)`` returns an exit code so tests
call it in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from dicomnode import __version__
from dicomnode.memory import limit_malloc_arenas
from dicomnode.settings import ConfigError, Destination, DicomDestination, Settings, load_settings, with_overrides

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="TOML configuration file (default: config/dicomnode.toml)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description="DICOM node that analyses chest CT series.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="receive, analyse and send results until stopped")
    _add_config(serve)
    serve.add_argument("--aet", "--aetitle", dest="aet", help="called AE title of the node")
    serve.add_argument("--port", type=int, help="TCP port to listen on")
    serve.add_argument("--state-dir", type=Path, help="directory for spool, jobs and outbox")
    serve.add_argument("--quiet-seconds", type=float, help="a series is complete after this long without news")
    serve.add_argument(
        "--destination", action="append", metavar="AET@HOST:PORT", help="DICOM destination (repeatable; replaces the file's)"
    )
    serve.add_argument("--output-dir", type=Path, metavar="FOLDER", help="folder destination (replaces the file's)")

    echo = commands.add_parser("echo", help="C-ECHO a DICOM peer (default: this node)")
    _add_config(echo)
    echo.add_argument("peer", nargs="?", metavar="AET@HOST:PORT", help="peer to verify (default: the configured node)")
    echo.add_argument("--aet", "--aetitle", dest="aet", help="calling AE title (default: the node's)")

    process = commands.add_parser("process", help="analyse a folder of DICOM files offline; write SEG, SR and key images")
    _add_config(process)
    process.add_argument("folder", type=Path, help="folder with the DICOM files of one or more series")
    process.add_argument("--out", type=Path, required=True, help="folder for the result files")

    status = commands.add_parser("status", help="queued, running, done and failed series")
    _add_config(status)
    status.add_argument("--state-dir", type=Path, help="state directory (default: from the configuration)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=20, help="how many recent runs to list")

    check = commands.add_parser("check-config", help="validate the configuration and print it")
    _add_config(check)
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    limit_malloc_arenas()  # before any thread starts (dicomnode.memory says why)
    from dicomnode.node import Node
    from dicomnode.pipeline import AnalysisUnavailable

    settings = with_overrides(
        settings,
        ae_title=args.aet,
        port=args.port,
        state_dir=args.state_dir,
        quiet_seconds=args.quiet_seconds,
        destinations=args.destination,
        output_dir=args.output_dir,
    )
    try:
        node = Node(settings)
    except AnalysisUnavailable as error:
        print(f"error: the analysis cannot start: {error}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: node.request_stop())
    node.start()
    try:
        node.wait()
    finally:
        node.stop()
    return 0


def _echo(args: argparse.Namespace, settings: Settings) -> int:
    from dicomnode.send import DestinationUnavailable
    from dicomnode.send.scu import echo
    from dicomnode.settings import parse_destination

    peer = (
        parse_destination(args.peer)
        if args.peer
        else DicomDestination(name="this node", ae_title=settings.node.ae_title, host="127.0.0.1", port=settings.node.port)
    )
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        status = echo(peer, args.aet or settings.node.ae_title, settings.node.network_timeout_seconds)
    except DestinationUnavailable as error:
        print(f"C-ECHO {where}: {error.reason}")
        return 1
    print(f"C-ECHO {where}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def _process(args: argparse.Namespace, settings: Settings) -> int:
    from dicomnode.offline import process_folder
    from dicomnode.pipeline import AnalysisUnavailable

    try:
        results = process_folder(args.folder, args.out, settings)
    except AnalysisUnavailable as error:
        print(f"error: the analysis cannot start: {error}", file=sys.stderr)
        return 1
    for result in results:
        print(json.dumps(result))
    return 0 if results and all(r["state"] == "done" for r in results) else 1


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from dicomnode.pipeline import describe_summary
    from dicomnode.report import node_status

    state_dir = args.state_dir.resolve() if args.state_dir else settings.storage.state_dir
    report = node_status(state_dir, settings, args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    jobs = report["jobs"]
    print(f"state: {state_dir}")
    print("series runs: " + ", ".join(f"{state} {count}" for state, count in jobs.items()))
    print("outbox: " + ", ".join(f"{state} {count}" for state, count in report["outbox"].items()))
    print(f"instances in spool: {report['instances']}, series waiting for quiet: {report['series_waiting']}")
    for run in report["recent"]:
        detail = run["reason"] or describe_summary(run["summary"])
        print(f"  job {run['id']:>5} {run['state']:<8} {run['instances']:>4} inst  series {run['series_uid']}  {detail}")
    return 0


def _check_config(args: argparse.Namespace, settings: Settings) -> int:
    print(f"configuration OK: {args.config or 'default'}")
    print(f"  AE title {settings.node.ae_title}, listening on {settings.node.bind_address}:{settings.node.port}")
    print(f"  state directory {settings.storage.state_dir}")
    analysis = settings.analysis
    print(
        f"  analysis: threshold {analysis.threshold}, min lesion score {analysis.min_lesion_score}, "
        f"device {analysis.device}, threads {analysis.threads or 'auto'}, "
        f"weights {analysis.weights_dir or 'shipped with the package'}"
    )
    for destination in settings.destinations:
        print(f"  destination {describe_destination(destination)}")
    if not settings.destinations:
        print("  no destinations: results stay in the outbox")
    return 0


def describe_destination(destination: Destination) -> str:
    """One line for an operator: where a destination is and what it receives."""
    where = (
        f"DICOM {destination.ae_title}@{destination.host}:{destination.port}"
        if isinstance(destination, DicomDestination)
        else f"folder {destination.path}"
    )
    delivery = destination.delivery
    seg = f", SEG {delivery.seg_type}" if "seg" in delivery.objects or "sr" in delivery.objects else ""
    return f"{destination.name}: {where} ({', '.join(delivery.objects)}{seg})"


COMMANDS = {"serve": _serve, "echo": _echo, "process": _process, "status": _status, "check-config": _check_config}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    from dicomnode.logs import configure_logging

    configure_logging(settings.log_level)
    try:
        return COMMANDS[args.command](args, settings)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

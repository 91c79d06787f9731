"""Watching a command's job: the dashboard options of `run` and `run-batch`, and
`llmbatch report` (rebuilds a job's run report from its timeline)."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="serve a live dashboard of the job (and Prometheus metrics at /metrics); its "
        "address is printed once",
    )
    parser.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="the address the dashboard listens on (default 127.0.0.1: this machine only; "
        "0.0.0.0 exposes it to every machine that reaches this one)",
    )
    parser.add_argument(
        "--dashboard-port", type=int, default=0, help="the dashboard's port (default: a free one)"
    )


def dashboard_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The processor config's dashboard fields as the options give them."""
    return {
        "dashboard": args.dashboard,
        "dashboard_host": args.dashboard_host,
        "dashboard_port": args.dashboard_port,
    }


def add_report_command(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="rebuild the run report of a job's output from its timeline",
        description="Writes _llmbatch_report.html into an output folder (or OUTPUT"
        ".llmbatch_report.html next to a run-batch output file) from the timeline the job's "
        "runs kept there.",
    )
    report.add_argument("output", help="the job's output folder, or run-batch's output file")


def report_command(args: argparse.Namespace) -> int:
    from llmbatch.monitor.report import write_file_report, write_report

    output = os.path.expanduser(args.output)
    if os.path.isdir(output):
        path = write_report(output)
    elif os.path.isfile(output):
        path = write_file_report(output)
    else:
        raise FileNotFoundError(f"no output folder or file at {args.output!r}")
    print(f"wrote {path}")
    return 0


def keep_report(work: str, output: str) -> None:
    """Moves the timeline and report of run-batch's work folder next to its output file (an
    output URL keeps none: the work folder is deleted)."""
    from llmbatch.monitor import REPORT_NAME, TIMELINE_NAME
    from llmbatch.monitor.report import file_output_paths

    if output.startswith(("http://", "https://")):
        return
    timeline, report = file_output_paths(os.path.expanduser(output))
    for name, target in ((TIMELINE_NAME, timeline), (REPORT_NAME, report)):
        source = os.path.join(work, name)
        if os.path.exists(source):
            shutil.move(source, target)

"""The `llmbatch` command: `llmbatch run job.yaml`, `llmbatch run-batch` and `llmbatch demo`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

JOB_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmbatch", description="Fast offline LLM inference over datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a job described in a YAML file")
    run.add_argument("job", help="the job file (see README: input, processor, prompt, ...)")
    run.add_argument("--limit", type=_positive_int, help="process only the first N rows")
    run.add_argument("--output", help="write the results to this folder instead")
    run.add_argument(
        "--output-format", choices=("parquet", "csv", "json"), help="override output.format"
    )
    run.add_argument("--model", help="override processor.model_source")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--overwrite", action="store_true", help="replace another job's output in the folder"
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="re-run the error rows of a finished output"
    )
    run.add_argument(
        "--max-error-rate",
        type=float,
        help="stop when more than this fraction of the rows are error rows (e.g. 0.5)",
    )
    from llmbatch.cli.watching import add_dashboard_arguments, add_report_command

    add_dashboard_arguments(run)

    from llmbatch.cli.run_batch import add_arguments

    run_batch = commands.add_parser(
        "run-batch",
        help="run an OpenAI batch file (vLLM's run-batch), resumable",
        description="Runs the requests of an OpenAI batch file (JSON lines of {custom_id, "
        "method, url, body} for /v1/chat/completions and /v1/completions) and writes one "
        "answer line per request, in input order. A killed run continues when run again.",
    )
    add_arguments(run_batch)

    demo = commands.add_parser(
        "demo", help="the Ray Data LLM tutorial on SmolLM2 and generated customers"
    )
    demo.add_argument(
        "--rows", type=_positive_int, help="customers to process (default: 64 on CPU, 10000 on GPU)"
    )
    demo.add_argument(
        "--max-tokens",
        type=_positive_int,
        help="new tokens per row at most (default: 32 on CPU, 150 on GPU)",
    )
    demo.add_argument("--output", help="also write the results as Parquet to this folder")
    demo.add_argument("--model", help="another model instead of SmolLM2 (folder, .gguf or Hub id)")
    demo.add_argument(
        "--no-constraint",
        action="store_true",
        help="let answers take any form (by default they must match MM-DD-YYYY)",
    )
    add_report_command(commands)
    parser.commands = commands.choices  # type: ignore[attr-defined]
    return parser


def run_command(args: argparse.Namespace) -> int:
    from llmbatch.cli.job import JobSpec, run_job

    spec = JobSpec.from_yaml(args.job)
    if args.limit is not None:
        spec.input.limit = args.limit
    if args.output is not None:
        spec.output.path = args.output
    if args.output_format is not None:
        spec.output.format = args.output_format
    if args.model is not None:
        spec.processor = dataclasses.replace(spec.processor, model_source=args.model)
    if args.max_error_rate is not None:
        spec.processor = dataclasses.replace(spec.processor, max_error_rate=args.max_error_rate)
    if args.dashboard:
        from llmbatch.cli.watching import dashboard_fields

        spec.processor = dataclasses.replace(spec.processor, **dashboard_fields(args))
    try:
        result = run_job(
            spec,
            show_progress=not args.no_progress,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
        )
    except KeyboardInterrupt:
        print(
            f"llmbatch run: interrupted; the finished rows are committed in {spec.output.path}. "
            f"Run the same command again to finish the others.",
            file=sys.stderr,
        )
        return 130
    report = result.report
    print(
        f"wrote {report.rows_written} rows to {spec.output.path} ({spec.output.format}); "
        f"{report.rows_already_committed} were already there, {report.rows_retried} retried; "
        f"{report.total_rows} rows in all, {report.error_rows} error rows"
    )
    print(result.summary.format())
    return 0


def demo_command(args: argparse.Namespace) -> int:
    import torch

    from llmbatch.cli.demo import DATE_REGEX, DemoSettings, run_demo

    settings = DemoSettings.for_device(on_gpu=torch.cuda.is_available())
    settings.num_rows = args.rows or settings.num_rows
    settings.max_tokens = args.max_tokens or settings.max_tokens
    settings.constrain = not args.no_constraint
    if settings.constrain:
        print(
            "answers are constrained to the asked format MM-DD-YYYY (structured outputs, "
            f"regex {DATE_REGEX}); --no-constraint lets them take any form"
        )
    result = run_demo(settings, output=args.output, model_source=args.model)
    for i, row in enumerate(result.rows):
        print(f"--- row {i}")
        for name, value in row.items():
            print(f"{name}: {value!r}" if isinstance(value, str) else f"{name}: {value}")
    print("---")
    if args.output is not None:
        print(f"wrote {result.summary.rows} rows to {args.output} (parquet)")
    print(result.summary.format())
    return 0


def run_batch_command(args: argparse.Namespace) -> int:
    from llmbatch.cli.run_batch import run_batch_command as run

    return run(args)


def report_command(args: argparse.Namespace) -> int:
    from llmbatch.cli.watching import report_command as report

    return report(args)


_COMMANDS = {
    "run": run_command,
    "run-batch": run_batch_command,
    "demo": demo_command,
    "report": report_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmbatch` command; returns the exit status."""
    from llmbatch.cli.run_batch import check_unknown, normalize_argv

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run-batch"]:
        argv = normalize_argv(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        check_unknown(parser.commands[args.command], extras)  # type: ignore[attr-defined]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    command = _COMMANDS[args.command]
    if args.command != "report":
        from llmbatch.cli.progress import quiet_library_progress_bars

        quiet_library_progress_bars()
    try:
        return command(args)
    except JOB_ERRORS as exc:
        print(f"llmbatch {args.command}: error: {exc}", file=sys.stderr)
        return 1

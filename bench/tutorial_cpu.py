"""The tutorial on this CPU: examples/tutorial_text.py over 96 generated customers, 32 new tokens
each, on SmolLM2-135M-Instruct, timed as a whole process (start-up included).

    .venv/bin/python bench/tutorial_cpu.py

The model is converted (cached) before the clock starts. Prints a table last and appends the
result to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import commit, record

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tutorial_text.py"
TARGET_SECONDS = 30.0


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, no GPU"


def run_timed(csv_path: str, rows: int, max_tokens: int, summary_path: str) -> float:
    command = [
        sys.executable,
        str(EXAMPLE),
        f"--csv={csv_path}",
        f"--rows={rows}",
        f"--max-tokens={max_tokens}",
        "--ignore-eos",
        f"--summary-json={summary_path}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from llmbatch._fixtures import customers
    from llmbatch._fixtures.smollm2 import smollm2_dir

    smollm2_dir()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        csv_path = os.path.join(folder, "customers.csv")
        customers.write_customers_csv(csv_path, num_rows=1000, seed=0)
        summary_path = os.path.join(folder, "summary.json")
        seconds = run_timed(csv_path, args.rows, args.max_tokens, summary_path)
        summary = json.loads(Path(summary_path).read_text())

    rows = [
        ("rows", f"{summary['rows']}"),
        ("error rows", f"{summary['error_rows']}"),
        ("output tokens", f"{summary['output_tokens']}"),
        ("process wall time (s)", f"{seconds:.2f}"),
        ("engine start-up (s)", f"{summary['engine_startup_s']:.2f}"),
        ("rows/s (whole process)", f"{summary['rows'] / seconds:.2f}"),
        ("output tok/s (processing)", f"{summary['output_tokens_per_s']:.1f}"),
        ("target", f"< {TARGET_SECONDS:.0f} s: {'met' if seconds < TARGET_SECONDS else 'missed'}"),
    ]
    table = "\n".join(
        ["| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    )
    command = f"{Path(sys.executable).name} bench/tutorial_cpu.py " + " ".join(sys.argv[1:])
    entry = (
        f"\n## tutorial_cpu: {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"- machine: {machine()}; load average {load_before:.1f} at start "
        "(other work on the cores slows every number)\n"
        f"- commit: {commit()}\n- command: `{command.strip()}`\n"
        f"- workload: the tutorial (examples/tutorial_text.py), {args.rows} rows, "
        f"max_tokens={args.max_tokens} (ignore_eos), SmolLM2-135M-Instruct, float32\n\n{table}\n"
    )
    record(entry)
    print(table)


if __name__ == "__main__":
    main()

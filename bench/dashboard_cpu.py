"""What watching a job costs: the CPU tutorial (examples/tutorial_text.py's processor over
generated customers, SmolLM2-135M-Instruct) with and without the dashboard, in the same run.

    .venv/bin/python bench/dashboard_cpu.py [--rows 96] [--max-tokens 32] [--repeats 3]

Each run is a fresh process that writes its output as Parquet (so the timeline file and the
run report are written either way, as for every job that writes output). With the dashboard
on, a client polls the page's state and /metrics once a second, as an open browser tab and a
Prometheus scraper would. Runs alternate (off, on, off, on, ...) so that drifting load on the
machine hits both alike. Prints a table last and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from report import commit, record
from tutorial_cpu import machine

ROOT = Path(__file__).resolve().parent.parent


def one_run(csv: str, rows: int, max_tokens: int, dashboard: bool, output: str) -> dict:
    """The tutorial's processor in this process; returns its timings as JSON on stdout."""
    import llmbatch.data as data
    from llmbatch._fixtures.smollm2 import smollm2_gguf_path
    from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=smollm2_gguf_path(),
        engine_kwargs=dict(max_model_len=4096, max_num_batched_tokens=1024),
        batch_size=256,
        concurrency=4,
        dashboard=dashboard,
    )

    def preprocess(row):
        return dict(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Convert this date:\n{row['Subscription Date']}\n\n"
                    " as the format:MM-DD-YYYY",
                },
            ],
            sampling_params=dict(
                temperature=0.3, max_tokens=max_tokens, detokenize=False, ignore_eos=True
            ),
        )

    processor = build_llm_processor(config, preprocess=preprocess)
    stop = threading.Event()
    polls = [0]

    def poll() -> None:
        while processor.dashboard_url is None and not stop.is_set():
            time.sleep(0.05)
        while not stop.wait(1.0):
            for path in ("api/state", "metrics"):
                with urllib.request.urlopen(processor.dashboard_url + path, timeout=10) as r:
                    r.read()
            polls[0] += 1

    poller = threading.Thread(target=poll, daemon=True)
    if dashboard:
        poller.start()
    started = time.perf_counter()
    processor(data.read_csv(csv).limit(rows)).write_parquet(output)
    seconds = time.perf_counter() - started
    stop.set()
    summary = processor.summary()
    return {
        "seconds": seconds,
        "processing_s": summary.wall_time_s - summary.engine_startup_s,
        "output_tokens_per_s": summary.output_tokens_per_s,
        "rows": summary.rows,
        "polls": polls[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-run", help=argparse.SUPPRESS)  # internal: off|on
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run is not None:
        result = one_run(args.csv, args.rows, args.max_tokens, args.one_run == "on", args.output)
        print(json.dumps(result))
        return

    from llmbatch._fixtures import customers
    from llmbatch._fixtures.smollm2 import smollm2_dir

    smollm2_dir()  # converted (cached) before any clock starts
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        csv = os.path.join(folder, "customers.csv")
        customers.write_customers_csv(csv, num_rows=max(args.rows, 1000), seed=0)
        for repeat in range(args.repeats):
            for mode in ("off", "on"):
                output = os.path.join(folder, f"out-{mode}-{repeat}")
                command = [sys.executable, __file__, f"--one-run={mode}", f"--csv={csv}"]
                command += [f"--rows={args.rows}", f"--max-tokens={args.max_tokens}"]
                command += [f"--output={output}"]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                results[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def spread(mode: str, key: str) -> str:
        values = [r[key] for r in results[mode]]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    rows = [
        (
            "processing seconds, median (min-max)",
            spread("off", "processing_s"),
            spread("on", "processing_s"),
        ),
        (
            "output tok/s, median (min-max)",
            spread("off", "output_tokens_per_s"),
            spread("on", "output_tokens_per_s"),
        ),
        (
            "whole write seconds (report included)",
            spread("off", "seconds"),
            spread("on", "seconds"),
        ),
        (
            "dashboard polls (state + /metrics) per run",
            "-",
            f"{statistics.median(r['polls'] for r in results['on']):.0f}",
        ),
    ]
    off = statistics.median(r["processing_s"] for r in results["off"])
    on = statistics.median(r["processing_s"] for r in results["on"])
    table = "\n".join(
        [
            "| measure | dashboard off | dashboard on |",
            "| --- | --- | --- |",
            *(f"| {name} | {a} | {b} |" for name, a, b in rows),
            f"| on / off, processing | | {on / off:.3f} |",
        ]
    )
    command = f"{Path(sys.executable).name} bench/dashboard_cpu.py " + " ".join(sys.argv[1:])
    entry = (
        f"\n## dashboard_cpu: {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"- machine: {machine()}; load average {load_before:.1f} at start\n"
        f"- commit: {commit()}\n- command: `{command.strip()}`\n"
        f"- workload: the tutorial's processor, {args.rows} rows, max_tokens={args.max_tokens} "
        f"(ignore_eos), SmolLM2-135M-Instruct, written as Parquet; {args.repeats} runs of each, "
        "alternating\n\n"
        f"{table}\n"
    )
    record(entry)
    print(table)


if __name__ == "__main__":
    main()

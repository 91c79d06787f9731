"""The tutorial's two parts run, one after the other, in one process (examples/tutorial_both.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_text_then_vision_part_in_one_process(tiny_vl_dir, smollm2_dir):
    command = [sys.executable, "tutorial_both.py", "--vision-model", tiny_vl_dir, "--generated"]
    command += ["--rows", "3", "--max-tokens", "4"]
    done = subprocess.run(command, cwd=EXAMPLES, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.index("== text part ==") < done.stdout.index("== vision part ==")
    summaries = [line.split() for line in done.stdout.splitlines() if line.startswith("rows ")]
    errors = [line.split() for line in done.stdout.splitlines() if line.startswith("error rows")]
    assert summaries == [["rows", "3"], ["rows", "3"]]
    assert errors == [["error", "rows", "0"], ["error", "rows", "0"]]


def test_the_structured_output_example_prints_dates_and_parsed_records(smollm2_dir):
    import re

    command = [sys.executable, "structured_output.py", "--model", smollm2_dir, "--rows", "3"]
    done = subprocess.run(command, cwd=EXAMPLES, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    answers = [line.split(" -> ")[1].rsplit("  [", 1)[0] for line in lines if " -> " in line]
    assert len(answers) == 6
    assert all(re.fullmatch(r"\d{2}-\d{2}-\d{4}", answer) for answer in answers[:3])
    assert all(answer.startswith("{") for answer in answers[3:])

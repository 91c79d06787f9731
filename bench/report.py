"""What every benchmark's recorded result names: the commit it ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The short hash of HEAD, or "unknown" outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


RESULTS = ROOT / "bench" / "RESULTS.md"


def record(entry: str) -> None:
    """Appends a result's entry to bench/RESULTS.md; what is there is never rewritten."""
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n"
        )
    with RESULTS.open("a") as results:
        results.write(entry if entry.startswith("\n") else "\n" + entry)

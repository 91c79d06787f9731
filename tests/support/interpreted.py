"""Triton kernels checked on a CPU: a test file runs its cases as a script in a child process
under ``TRITON_INTERPRET=1`` (Triton reads it once, when it is imported, so the test process
cannot switch it on) and the tests read the results the child printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any


def print_results(cases: Mapping[str, Callable[[], dict[str, Any]]]) -> None:
    """In the child: runs every case and prints their results (or tracebacks) as one JSON line."""
    results = {}
    for name, run in cases.items():
        try:
            results[name] = run()
        except Exception:
            results[name] = {"failure": traceback.format_exc()}
    print(json.dumps(results))


def interpreted_results(test_file: str) -> dict[str, dict[str, Any]]:
    """Runs ``test_file`` as a script under the Triton interpreter; the results it printed."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run(
        [sys.executable, test_file], env=env, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1])

"""What the rows leaving a stage say: their prompt and output lengths in tokens (in buckets,
and as Prometheus histograms), finish reasons, and error reasons with a few examples."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# error examples kept per reason
EXAMPLES_PER_REASON = 3


def length_bucket(values: np.ndarray) -> np.ndarray:
    """Each length's bucket (its lower bound): exact below 32, then 16 buckets per doubling
    (a width of at most 1/16 of the value), so a few hundred buckets cover any length."""
    values = values.astype(np.int64)
    shift = np.zeros_like(values)
    large = values >= 32
    shift[large] = np.floor(np.log2(values[large])).astype(np.int64) - 4
    return (values >> shift) << shift


# Prometheus histogram bounds of request token counts (1-2-5 steps, as vLLM's)
PROMETHEUS_BUCKETS = [m * 10**e for e in range(7) for m in (1, 2, 5)]


def bucket_width(lower: int) -> int:
    return 1 if lower < 32 else 1 << (int(lower).bit_length() - 5)


class TokenLengths:
    """Prompt and output token lengths of the rows that left the engine, in buckets (see
    `length_bucket`), and their finish reasons. `take_new` hands the counts added since its
    last call (for the timeline file)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prompt: Counter[int] = Counter()
        self.output: Counter[int] = Counter()
        self.finish_reasons: Counter[str] = Counter()
        # per kind: counts per PROMETHEUS_BUCKETS bound (and one above all), and the sum
        self.histograms: dict[str, tuple[np.ndarray, list[int]]] = {}
        self._new: dict[str, Counter[Any]] = {"prompt": Counter(), "output": Counter()}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.prompt.clear()
            self.output.clear()
            self.finish_reasons.clear()
            for counter in self._new.values():
                counter.clear()
            self.histograms = {
                key: (np.zeros(len(PROMETHEUS_BUCKETS) + 1, dtype=np.int64), [0])
                for key in ("prompt", "output")
            }

    def observe(self, table: pa.Table) -> None:
        found = {}
        values = {}
        for name, key in (("num_input_tokens", "prompt"), ("num_generated_tokens", "output")):
            if name in table.column_names:
                values[key] = _flat_ints(table.column(name))
                found[key] = _counts(values[key])
        reasons: Counter[str] = Counter()
        if "finish_reason" in table.column_names:
            column = table.column("finish_reason")
            if pa.types.is_list(column.type):
                column = pc.list_flatten(column)
            reasons.update(r for r in column.to_pylist() if r)
        with self._lock:
            for key, counts in found.items():
                getattr(self, key).update(counts)
                self._new[key].update(counts)
                bins, total = self.histograms[key]
                places = np.searchsorted(PROMETHEUS_BUCKETS, values[key], side="left")
                bins += np.bincount(places, minlength=len(bins))
                total[0] += int(values[key].sum())
            self.finish_reasons.update(reasons)

    def take_new(self) -> dict[str, dict[int, int]]:
        with self._lock:
            new = {key: dict(counter) for key, counter in self._new.items() if counter}
            for counter in self._new.values():
                counter.clear()
        return new


def _flat_ints(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_list(column.type):
        column = pc.list_flatten(column)
    column = column.drop_null() if hasattr(column, "drop_null") else pc.drop_null(column)
    if len(column) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(column.to_numpy(), dtype=np.int64)


def _counts(values: np.ndarray) -> dict[int, int]:
    if values.size == 0:
        return {}
    buckets, counts = np.unique(length_bucket(values), return_counts=True)
    return dict(zip(buckets.tolist(), counts.tolist()))


def error_reason(error: str) -> str:
    """An error row's reason: its stage and exception type (``"engine: RequestRejected"``)."""
    return ": ".join(error.split(": ", 2)[:2])


class ErrorLog:
    """Error rows of the output by reason, with the first few of each as examples; `take_new`
    hands the examples found since its last call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_reason: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._new: list[tuple[str, str]] = []

    def reset(self) -> None:
        with self._lock:
            self.by_reason.clear()
            self.examples.clear()
            self._new.clear()

    def observe(self, table: pa.Table) -> None:
        if "error" not in table.column_names:
            return
        column = table.column("error")
        if column.null_count == len(column):
            return
        errors = [e for e in column.to_pylist() if e]
        if not errors:
            return
        with self._lock:
            for error in errors:
                reason = error_reason(error)
                self.by_reason[reason] += 1
                examples = self.examples.setdefault(reason, [])
                if len(examples) < EXAMPLES_PER_REASON:
                    examples.append(error)
                    self._new.append((reason, error))

    def take_new(self) -> list[tuple[str, str]]:
        with self._lock:
            new, self._new = self._new, []
        return new

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_reason)

"""The timeline file: a small append-only file of JSON lines next to a job's output, one
segment per run of the job (a resumed job appends a segment), with a sample of the job's
state every few seconds, the token lengths and error examples seen since the previous sample,
and how the run ended. A run killed mid-write leaves at worst a torn last line, which reading
skips."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llmbatch.monitor.state import Sample

TIMELINE_NAME = "_llmbatch_timeline.jsonl"
TIMELINE_VERSION = 1


@dataclass(slots=True)
class Segment:
    """One run of a job, as its timeline records it."""

    number: int
    kind: str
    started: float
    description: dict[str, Any]
    committed_before: int
    total_rows: int | None
    engine_config: dict[str, Any] | None = None
    samples: list[Sample] = field(default_factory=list)
    prompt_lengths: Counter[int] = field(default_factory=Counter)
    output_lengths: Counter[int] = field(default_factory=Counter)
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    end: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """``finished``, ``interrupted``, ``failed`` (said by the run), or ``killed`` when it
        ended without saying (SIGKILL, power loss)."""
        return self.end["status"] if self.end is not None else "killed"

    @property
    def ended(self) -> float:
        if self.end is not None:
            return self.end["time"]
        return self.samples[-1].time if self.samples else self.started

    @property
    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


@dataclass(slots=True)
class Timeline:
    job: str | None
    segments: list[Segment]


def read_timeline(path: str) -> Timeline:
    """The segments of the timeline file at ``path`` (none when it does not exist)."""
    segments: list[Segment] = []
    job = None
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.readlines()
    except FileNotFoundError:
        return Timeline(None, [])
    by_number: dict[int, Segment] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the torn last line of a killed run
        kind = record.get("type")
        if kind == "segment":
            job = record["job"]
            segment = Segment(
                number=record["segment"],
                kind=record.get("kind", "run"),
                started=record["started"],
                description=record.get("description", {}),
                committed_before=record.get("committed_before", 0),
                total_rows=record.get("total_rows"),
            )
            segments.append(segment)
            by_number[segment.number] = segment
            continue
        segment = by_number.get(record.get("segment"))
        if segment is None:
            continue
        if kind == "engine":
            segment.engine_config = record.get("config")
        elif kind == "sample":
            segment.samples.append(Sample.from_record(record))
            lengths = record.get("lengths", {})
            segment.prompt_lengths.update({int(k): v for k, v in lengths.get("prompt", {}).items()})
            segment.output_lengths.update({int(k): v for k, v in lengths.get("output", {}).items()})
            for reason, example in record.get("error_examples", []):
                segment.error_examples.setdefault(reason, []).append(example)
        elif kind == "end":
            segment.end = record
    return Timeline(job, segments)


class TimelineWriter:
    """Appends one segment's records to the timeline file in ``folder`` (a local path),
    starting the file over when it belongs to another job."""

    def __init__(
        self,
        folder: str,
        job: str,
        kind: str,
        description: dict[str, Any],
        committed_before: int,
        total_rows: int | None,
    ) -> None:
        self.path = os.path.join(folder, TIMELINE_NAME)
        existing = read_timeline(self.path)
        mode = "a"
        if existing.job != job:
            mode = "w"
            existing.segments = []
        self.segment = existing.segments[-1].number + 1 if existing.segments else 1
        self._file = open(self.path, mode, encoding="utf-8")
        if mode == "a" and _ends_mid_line(self.path):
            self._file.write("\n")  # after the torn line of a killed run
        self.append(
            {
                "type": "segment",
                "version": TIMELINE_VERSION,
                "job": job,
                "kind": kind,
                "started": time.time(),
                "pid": os.getpid(),
                "description": description,
                "committed_before": committed_before,
                "total_rows": total_rows,
            }
        )

    def append(self, record: dict[str, Any]) -> None:
        record = {**record, "segment": self.segment}
        self._file.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self, status: str, detail: str = "") -> None:
        self.append({"type": "end", "time": time.time(), "status": status, "detail": detail})
        self._file.close()


def _ends_mid_line(path: str) -> bool:
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() == 0:
            return False
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"

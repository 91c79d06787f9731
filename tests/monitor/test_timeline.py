"""The timeline file keeps every run of a job, survives a torn last line, starts over for
another job; the report is one self-contained file drawn from it."""

from __future__ import annotations

import re

import pytest

from llmbatch.monitor.report import REPORT_NAME, write_report
from llmbatch.monitor.state import EngineState, RunCounts, Sample, StageState
from llmbatch.monitor.timeline import TIMELINE_NAME, TimelineWriter, read_timeline


def sample(t: float, rows: int, errors: dict[str, int] | None = None) -> Sample:
    return Sample(
        time=1_700_000_000 + t,
        elapsed=t,
        counts=RunCounts(rows=rows, output_tokens=10 * rows, input_tokens=30 * rows),
        stages=(StageState("engine", rows + 4, rows, 0.8 * t),),
        engines=(EngineState(0, 4, 2, 0.5, 30 * rows, 10 * rows, 10 * rows, 0, rows, 5, t),),
        errors_by_reason=errors or {},
    )


def write_segment(folder, job, rows, end=True, errors=None):
    writer = TimelineWriter(str(folder), job, "run", {"model": "m"}, 0, 100)
    for t in range(1, 4):
        record = {"type": "sample", **sample(t, rows * t, errors).to_record()}
        record["lengths"] = {"prompt": {"30": rows}, "output": {"10": rows}}
        writer.append(record)
    if end:
        writer.close("finished")
    else:
        writer._file.close()  # a killed run says nothing more
    return writer.segment


def test_segments_follow_each_other_and_a_killed_one_reads_as_killed(tmp_path):
    assert write_segment(tmp_path, "job-a", 2, end=False) == 1
    with open(tmp_path / TIMELINE_NAME, "a") as file:
        file.write('{"type": "sample", "segm')  # torn by the kill
    assert write_segment(tmp_path, "job-a", 3) == 2
    timeline = read_timeline(str(tmp_path / TIMELINE_NAME))
    first, second = timeline.segments
    assert (first.status, second.status) == ("killed", "finished")
    assert [s.counts.rows for s in second.samples] == [3, 6, 9]
    assert first.prompt_lengths == {30: 6} and second.output_lengths == {10: 9}


def test_another_job_starts_the_timeline_over(tmp_path):
    write_segment(tmp_path, "job-a", 2)
    assert write_segment(tmp_path, "job-b", 2) == 1
    timeline = read_timeline(str(tmp_path / TIMELINE_NAME))
    assert timeline.job == "job-b" and len(timeline.segments) == 1


def test_report_is_one_self_contained_file(tmp_path):
    write_segment(tmp_path, "job-a", 2, end=False)
    write_segment(tmp_path, "job-a", 3, errors={"engine: RequestRejected": 2})
    assert write_report(str(tmp_path)) == str(tmp_path / REPORT_NAME)
    page = (tmp_path / REPORT_NAME).read_text()
    sources = re.findall(r"<script[^>]*\bsrc=", page) + re.findall(r"<link[^>]*href=\"?http", page)
    assert not sources  # plotly.js is inline, nothing is fetched
    assert "Plotly.newPlot" in page and page.count('class="plotly-graph-div"') >= 5
    assert "killed" in page and "finished" in page and "engine: RequestRejected" in page


def test_report_needs_a_timeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="timeline"):
        write_report(str(tmp_path))

"""The run report: one self-contained HTML file next to a job's output, drawn with plotly from
the timeline file (every run of the job, a resumed job's included) and the output's manifest:
configuration and model, totals, throughput over time with each run as a segment, time per
stage, token-length distributions, and error rows by reason."""

from __future__ import annotations

import datetime
import html
import json
import os
from collections import Counter
from typing import Any

from llmbatch.data.checkpoint import MANIFEST_NAME
from llmbatch.data.files import OutputFolder
from llmbatch.monitor.report_figures import (
    engines_figure,
    error_counts,
    errors_figure,
    gpus_figure,
    lengths_figure,
    rows_figure,
    stages_figure,
    throughput_figure,
    when,
)
from llmbatch.monitor.timeline import TIMELINE_NAME, Segment, read_timeline

REPORT_NAME = "_llmbatch_report.html"
FILE_REPORT_SUFFIX = ".llmbatch_report.html"
FILE_TIMELINE_SUFFIX = ".llmbatch_timeline.jsonl"
_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
  margin: 0 auto; max-width: 1200px; padding: 20px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ea; text-align: left; vertical-align: top; }
td.n { text-align: right; } code { font-size: 12px; white-space: pre-wrap; color: #862e9c; }
.muted { color: #6b7380; } .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
"""


def write_report(folder: str) -> str:
    """Writes (or rewrites) the report of the job whose output is in ``folder`` from its
    timeline file and manifest; returns the report's path."""
    return _write(
        os.path.join(folder, TIMELINE_NAME),
        _manifest(folder),
        os.path.join(folder, REPORT_NAME),
    )


def file_output_paths(output: str) -> tuple[str, str]:
    """The timeline and report kept next to a single output file (``llmbatch run-batch``)."""
    return f"{output}{FILE_TIMELINE_SUFFIX}", f"{output}{FILE_REPORT_SUFFIX}"


def write_file_report(output: str) -> str:
    """Rewrites the report kept next to the output file ``output`` from its timeline."""
    timeline, report = file_output_paths(output)
    return _write(timeline, None, report)


def _write(timeline_path: str, manifest: dict[str, Any] | None, report_path: str) -> str:
    timeline = read_timeline(timeline_path)
    if not timeline.segments:
        raise FileNotFoundError(
            f"{timeline_path} does not exist or holds no run: the report is built from the "
            "timeline that a run keeps next to its output"
        )
    page = render_report(timeline.segments, manifest)
    folder, name = os.path.split(report_path)
    with OutputFolder.create(folder or ".").atomic_file(name) as stream:
        stream.write(page.encode())
    return report_path


def _manifest(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def render_report(segments: list[Segment], manifest: dict[str, Any] | None) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    figures = [
        ("Throughput over time", throughput_figure(segments)),
        ("Rows done over time", rows_figure(segments)),
        ("Time per stage", stages_figure(segments)),
        ("Prompt and output lengths", lengths_figure(segments)),
    ]
    engines = engines_figure(segments)
    if engines is not None:
        figures.append(("Engine: requests and KV cache", engines))
    gpus = gpus_figure(segments)
    if gpus is not None:
        figures.append(("GPU memory", gpus))
    errors = errors_figure(segments)
    parts = [
        f"<h1>llmbatch run report</h1><p class=muted>{html.escape(_model(segments))}</p>",
        _totals_table(segments, manifest),
        "<h2>Runs</h2>",
        _segments_table(segments),
    ]
    for title, figure in figures:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_figure_html(pio, figure))
    parts.append("<h2>Error rows by reason</h2>")
    if errors is None:
        parts.append("<p class=muted>No error rows.</p>")
    else:
        parts.append(_figure_html(pio, errors))
        parts.append(_errors_table(segments))
    parts.append("<h2>Configuration</h2>")
    parts.append(_config_html(segments[-1]))
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    parts.append(f"<p class=muted>Written {generated} from {TIMELINE_NAME}.</p>")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>llmbatch run report</title><link rel=icon href='data:,'>"
        f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )


def _figure_html(pio: Any, figure: Any) -> str:
    return pio.to_html(
        figure, include_plotlyjs=False, full_html=False, config={"displayModeBar": False}
    )


def _model(segments: list[Segment]) -> str:
    return str(segments[-1].description.get("model", ""))


def _totals(segments: list[Segment]) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for segment in segments:
        last = segment.last
        totals["wall_s"] += segment.ended - segment.started
        if last is None:
            continue
        totals["rows"] += last.counts.rows
        totals["input_tokens"] += last.counts.input_tokens
        totals["output_tokens"] += last.counts.output_tokens
        totals["cached_input_tokens"] += last.counts.cached_input_tokens
        totals["engine_startup_s"] += last.counts.engine_startup_s
    return dict(totals)


def _totals_table(segments: list[Segment], manifest: dict[str, Any] | None) -> str:
    totals = _totals(segments)
    rows: list[tuple[str, str]] = []
    if manifest is not None:
        committed = sum(s["stop"] - s["start"] for s in manifest.get("shards", []))
        errors = sum(len(s.get("errors", [])) for s in manifest.get("shards", []))
        total = manifest.get("total_rows")
        state = "complete" if manifest.get("complete") else "not complete"
        rows.append(("rows in the output", f"{committed:,}" + (f" of {total:,}" if total else "")))
        rows.append(("output", state))
        rows.append(("error rows in the output", f"{errors:,}"))
    wall = totals.get("wall_s", 0.0)
    busy = max(wall - totals.get("engine_startup_s", 0.0), 1e-9)
    rows += [
        ("runs", f"{len(segments)}"),
        ("rows processed (all runs)", f"{int(totals.get('rows', 0)):,}"),
        (
            "input tokens",
            f"{int(totals.get('input_tokens', 0)):,} "
            f"({int(totals.get('cached_input_tokens', 0)):,} from the prefix cache)",
        ),
        ("output tokens", f"{int(totals.get('output_tokens', 0)):,}"),
        (
            "wall time",
            f"{wall:,.1f} s (engine start-up {totals.get('engine_startup_s', 0.0):,.1f} s)",
        ),
        ("rows/s", f"{totals.get('rows', 0) / busy:,.2f}"),
        ("output tokens/s", f"{totals.get('output_tokens', 0) / busy:,.1f}"),
    ]
    return _table(["", ""], rows)


def _segments_table(segments: list[Segment]) -> str:
    rows = []
    for segment in segments:
        last = segment.last
        rows.append(
            (
                f"{segment.number}",
                segment.kind,
                when(segment.started).strftime("%Y-%m-%d %H:%M:%S"),
                f"{segment.ended - segment.started:,.1f} s",
                f"{segment.committed_before:,}",
                f"{last.counts.rows if last else 0:,}",
                segment.status
                + (
                    f": {segment.end['detail']}"
                    if segment.end and segment.end.get("detail")
                    else ""
                ),
            )
        )
    header = [
        "run",
        "kind",
        "started",
        "lasted",
        "rows committed before",
        "rows processed",
        "ended",
    ]
    return _table(header, rows)


def _table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if any(header) else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _errors_table(segments: list[Segment]) -> str:
    counts = error_counts(segments)
    examples: dict[str, list[str]] = {}
    for segment in segments:
        for reason, found in segment.error_examples.items():
            kept = examples.setdefault(reason, [])
            kept.extend(e for e in found if e not in kept and len(kept) < 3)
    body = "".join(
        f"<tr><td>{html.escape(reason)}</td><td class=n>{count:,}</td><td>"
        + "".join(f"<code>{html.escape(e)}</code><br>" for e in examples.get(reason, []))
        + "</td></tr>"
        for reason, count in counts.most_common()
    )
    return f"<table><tr><th>reason</th><th>rows</th><th>examples</th></tr>{body}</table>"


def _config_html(segment: Segment) -> str:
    parts = [_table(["setting", "value"], _flat(segment.description))]
    if segment.engine_config:
        parts.append("<h3>Engine, as resolved</h3>")
        parts.append(_table(["setting", "value"], _flat(segment.engine_config)))
    return "".join(parts)


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "engine":
            rows += _flat(value, f"{name}.")
        elif key != "engine":
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((name, shown))
    return rows

"""The run report's figures (plotly), each over every run of the job: a run is a shaded
segment of the time axis, with a gap in the lines between runs."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

from llmbatch.monitor.rows import bucket_width
from llmbatch.monitor.state import Sample
from llmbatch.monitor.timeline import Segment
from llmbatch.monitor.view import generated_tokens, prompt_tokens, rate

COLORS = ["#2f6fde", "#e8590c", "#2b8a3e", "#862e9c", "#c2255c", "#1098ad"]


def when(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds)


def _segment_shapes(figure: Any, segments: list[Segment]) -> None:
    for i, segment in enumerate(segments):
        figure.add_vrect(
            x0=when(segment.started),
            x1=when(segment.ended),
            fillcolor=COLORS[i % len(COLORS)],
            opacity=0.06,
            line_width=0,
            annotation_text=f"run {segment.number} ({segment.status})",
            annotation_position="top left",
        )


def _layout(figure: Any, y_title: str) -> Any:
    figure.update_layout(
        height=320,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        yaxis_title=y_title,
        legend={"orientation": "h", "y": 1.2, "x": 1, "xanchor": "right"},
        plot_bgcolor="#fff",
    )
    return figure


def _broken(segments: list[Segment], value: Any) -> tuple[list[Any], list[Any]]:
    """x and y over all segments, with a gap between segments."""
    xs: list[Any] = []
    ys: list[Any] = []
    for segment in segments:
        for previous, sample in zip(segment.samples, segment.samples[1:]):
            xs.append(when(sample.time))
            ys.append(value(segment, previous, sample))
        xs.append(None)
        ys.append(None)
    return xs, ys


def throughput_figure(segments: list[Segment]) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    for name, value, color in (
        ("output tokens/s", generated_tokens, COLORS[0]),
        ("input tokens/s", prompt_tokens, COLORS[1]),
    ):
        xs, ys = _broken(segments, lambda _seg, a, b, v=value: rate(a, b, v))
        figure.add_scatter(x=xs, y=ys, name=name, mode="lines", line={"color": color})
    xs, ys = _broken(segments, lambda _seg, a, b: rate(a, b, lambda s: s.counts.rows))
    figure.add_scatter(
        x=xs, y=ys, name="rows/s", mode="lines", yaxis="y2", line={"color": COLORS[2]}
    )
    figure.update_layout(yaxis2={"title": "rows/s", "overlaying": "y", "side": "right"})
    _segment_shapes(figure, segments)
    return _layout(figure, "tokens/s")


def rows_figure(segments: list[Segment]) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    xs, ys = _broken(segments, lambda seg, _a, b: seg.committed_before + b.counts.rows)
    figure.add_scatter(x=xs, y=ys, name="rows done", mode="lines", line={"color": COLORS[2]})
    _segment_shapes(figure, segments)
    return _layout(figure, "rows")


def stages_figure(segments: list[Segment]) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    for i, segment in enumerate(segments):
        last = segment.last
        if last is None or not last.stages:
            continue
        figure.add_bar(
            x=[s.busy_s for s in last.stages],
            y=[s.name for s in last.stages],
            orientation="h",
            name=f"run {segment.number}",
            marker_color=COLORS[i % len(COLORS)],
        )
    figure.update_layout(barmode="stack", yaxis={"autorange": "reversed"}, xaxis_title="seconds")
    return _layout(figure, "")


def lengths_figure(segments: list[Segment]) -> Any:
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("prompt tokens", "output tokens"))
    for col, attr, color in ((1, "prompt_lengths", COLORS[0]), (2, "output_lengths", COLORS[1])):
        counts: Counter[int] = Counter()
        for segment in segments:
            counts.update(getattr(segment, attr))
        lowers = sorted(counts)
        figure.add_bar(
            x=[low + bucket_width(low) / 2 - 0.5 for low in lowers],
            y=[counts[low] for low in lowers],
            width=[bucket_width(low) for low in lowers],
            marker_color=color,
            showlegend=False,
            row=1,
            col=col,
        )
        figure.update_xaxes(title_text="tokens", row=1, col=col)
        figure.update_yaxes(title_text="rows", row=1, col=col)
    return _layout(figure, "rows")


def engines_figure(segments: list[Segment]) -> Any:
    import plotly.graph_objects as go

    replicas = sorted({e.replica for seg in segments for s in seg.samples for e in s.engines})
    if not replicas:
        return None
    figure = go.Figure()
    for i, replica in enumerate(replicas):
        color = COLORS[i % len(COLORS)]

        def value(
            _seg: Segment, _a: Sample, b: Sample, attr: str, scale: float, replica: int = replica
        ) -> Any:
            engine = next((e for e in b.engines if e.replica == replica), None)
            return None if engine is None else getattr(engine, attr) * scale

        for attr, name, dash, axis, scale in (
            ("running", "running", "solid", "y", 1.0),
            ("waiting", "waiting", "dot", "y", 1.0),
            ("kv_cache_usage", "KV cache %", "dash", "y2", 100.0),
        ):
            xs, ys = _broken(segments, lambda s, a, b, t=attr, k=scale: value(s, a, b, t, k))
            figure.add_scatter(
                x=xs,
                y=ys,
                name=f"{name} (replica {replica})",
                mode="lines",
                yaxis=axis,
                line={"color": color, "dash": dash},
            )
    figure.update_layout(
        yaxis2={"title": "KV cache, %", "overlaying": "y", "side": "right", "range": [0, 100]}
    )
    _segment_shapes(figure, segments)
    return _layout(figure, "requests")


def gpus_figure(segments: list[Segment]) -> Any:
    import plotly.graph_objects as go

    indices = sorted({g.index for seg in segments for s in seg.samples for g in s.gpus})
    if not indices:
        return None
    figure = go.Figure()
    for i, index in enumerate(indices):

        def used(_seg: Segment, _a: Sample, b: Sample, index: int = index) -> Any:
            gpu = next((g for g in b.gpus if g.index == index), None)
            return None if gpu is None else gpu.memory_used / 2**30

        xs, ys = _broken(segments, used)
        figure.add_scatter(
            x=xs, y=ys, name=f"GPU {index}", mode="lines", line={"color": COLORS[i % 6]}
        )
    _segment_shapes(figure, segments)
    return _layout(figure, "GiB")


def error_counts(segments: list[Segment]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for segment in segments:
        if segment.last is not None:
            counts.update(segment.last.errors_by_reason)
    return counts


def errors_figure(segments: list[Segment]) -> Any:
    import plotly.graph_objects as go

    counts = error_counts(segments)
    if not counts:
        return None
    reasons = [reason for reason, _ in counts.most_common()]
    figure = go.Figure(
        go.Bar(x=[counts[r] for r in reasons], y=reasons, orientation="h", marker_color="#d9480f")
    )
    figure.update_layout(yaxis={"autorange": "reversed"}, xaxis_title="error rows")
    return _layout(figure, "")

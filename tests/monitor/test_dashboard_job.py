"""A real job on SmolLM2 with the dashboard on: the page, its scripts and /metrics are served
while it runs and their values move; the output folder then holds the run report, which
nothing mistakes for output."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import llmbatch.data as data
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig
from llmbatch.monitor import REPORT_NAME, TIMELINE_NAME
from llmbatch.monitor.timeline import read_timeline

pytestmark = pytest.mark.slow

NUM_ROWS = 16
BAD_ROW = 5  # its preprocess fails: an error row
GOOD_ROWS = NUM_ROWS - 1
ENGINE_KWARGS = {"max_model_len": 256, "kv_cache_memory_bytes": 32 << 20, "max_num_seqs": 4}
VLLM_NAMES = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:request_success",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
]


def preprocess(row):
    if row["id"] == BAD_ROW:
        raise ValueError(f"row {BAD_ROW} has no poem")
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Write a short poem about the number {row['id']}."},
        ],
        sampling_params=dict(temperature=0, max_tokens=16, ignore_eos=True),
    )


def processor_for(model: str, dashboard: bool):
    config = vLLMEngineProcessorConfig(
        model_source=model, engine_kwargs=ENGINE_KWARGS, batch_size=4, dashboard=dashboard
    )
    return build_llm_processor(config, preprocess=preprocess)


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), response.headers["Content-Type"]


def scrape(url: str) -> dict[str, list]:
    text, _ = fetch(url + "metrics")
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def value(families, name, sample=None, **labels):
    return sum(
        s.value
        for s in families[name]
        if (sample is None or s.name == sample)
        and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def watched_job(smollm2_dir, tmp_path_factory):
    """The job run in a thread, with what the test saw of its dashboard while it ran."""
    out = tmp_path_factory.mktemp("dashboard") / "out"
    processor = processor_for(smollm2_dir, dashboard=True)
    dataset = data.from_items([{"id": i} for i in range(NUM_ROWS)])
    failure: list[BaseException] = []

    def job():
        try:
            processor(dataset).write_parquet(out)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + 120
    while processor.dashboard_url is None:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    url = processor.dashboard_url
    seen = {"page": fetch(url), "plotly": fetch(url + "static/plotly.min.js"), "scrapes": []}
    seen["script"] = fetch(url + "static/dashboard.js")
    states = []
    while worker.is_alive():
        seen["scrapes"].append(scrape(url))
        states.append(json.loads(fetch(url + "api/state")[0]))
        time.sleep(0.5)
    worker.join()
    assert not failure, failure
    seen["states"] = states
    seen["final"] = scrape(url)
    processor.close()
    return processor, out, url, seen


def test_page_and_its_scripts_come_from_the_server(watched_job):
    _, _, url, seen = watched_job
    page, kind = seen["page"]
    assert kind.startswith("text/html")
    sources = re.findall(rb'src="([^"]+)"', page) + re.findall(rb'href="([^"]+)"', page)
    assert all(s.startswith((b"/", b"data:")) for s in sources), sources  # nothing from a CDN
    plotly, kind = seen["plotly"]
    assert kind.startswith("text/javascript") and len(plotly) > 1_000_000
    assert b"plotly.js" in plotly[:2000]
    assert b"/api/state" in seen["script"][0]


def test_metrics_use_vllms_names_and_move_while_the_job_runs(watched_job, smollm2_dir):
    _, _, _, seen = watched_job
    scrapes = [s for s in seen["scrapes"] if s["vllm:generation_tokens"]]
    assert len(scrapes) >= 3
    for name in VLLM_NAMES:
        assert name in scrapes[-1], name
    first, last = scrapes[0], seen["final"]
    model = {"model_name": smollm2_dir}
    generated = [value(s, "vllm:generation_tokens", engine="0", **model) for s in scrapes]
    assert generated == sorted(generated) and generated[-1] > generated[0]
    assert value(last, "vllm:generation_tokens", "vllm:generation_tokens_total") == 16 * GOOD_ROWS
    assert max(value(s, "vllm:num_requests_running") for s in scrapes) > 0
    assert max(value(s, "vllm:kv_cache_usage_perc") for s in scrapes) > 0
    # every row shares the system prompt: the prefix cache serves part of the prompts
    assert 0 < value(last, "vllm:prefix_cache_hits") < value(last, "vllm:prefix_cache_queries")
    assert value(last, "vllm:request_success", finished_reason="length") == GOOD_ROWS
    count = value(last, "vllm:request_generation_tokens", "vllm:request_generation_tokens_count")
    assert count == GOOD_ROWS
    assert value(last, "llmbatch_error_rows", reason="preprocess: ValueError") == 1
    assert (
        value(last, "llmbatch_job_rows_done") == NUM_ROWS > value(first, "llmbatch_job_rows_done")
    )
    assert value(last, "llmbatch_job_rows") == NUM_ROWS
    stages = {s.labels["stage"]: s.value for s in last["llmbatch_stage_rows_out"]}
    assert list(stages) == [
        "read",
        "preprocess",
        "chat_template",
        "tokenize",
        "engine",
        "detokenize",
        "postprocess",
        "write",
    ]
    assert set(stages.values()) == {NUM_ROWS}
    busy = {s.labels["stage"]: s.value for s in last["llmbatch_stage_busy_seconds"]}
    assert max(busy, key=busy.get) == "engine"  # the model is this job's bottleneck


def test_state_shows_progress_engine_and_stages(watched_job):
    _, _, _, seen = watched_job
    states = seen["states"]
    done = [s["now"]["rows_done"] for s in states]
    assert done == sorted(done) and done[-1] > done[0]
    running = [s for s in states if s["now"]["engines"]]
    assert running and running[-1]["now"]["rows_total"] == NUM_ROWS
    engine = running[-1]["now"]["engines"][0]
    assert engine["step_ms"] is None or engine["step_ms"] > 0
    assert any(s["now"]["eta_s"] is not None for s in running)
    assert len(running[-1]["series"]["output_tokens_per_s"]) == len(
        running[-1]["series"]["elapsed_s"]
    )
    assert running[-1]["job"]["engine"]["max_num_seqs"] == 4
    (error,) = states[-1]["now"]["errors"]
    assert (error["reason"], error["count"]) == ("preprocess: ValueError", 1)
    assert error["examples"] == [f"preprocess: ValueError: row {BAD_ROW} has no poem"]


def test_report_is_written_next_to_the_output_and_not_read_as_output(watched_job):
    _, out, _, _ = watched_job
    report = (out / REPORT_NAME).read_text()
    assert "Plotly.newPlot" in report and not re.search(r"<script[^>]*\bsrc=", report)
    timeline = read_timeline(str(out / TIMELINE_NAME))
    (segment,) = timeline.segments
    assert segment.status == "finished" and segment.last.counts.rows == NUM_ROWS
    assert sum(segment.output_lengths.values()) == GOOD_ROWS and set(segment.output_lengths) == {16}
    assert segment.error_examples == {
        "preprocess: ValueError": [f"preprocess: ValueError: row {BAD_ROW} has no poem"]
    }
    assert "preprocess: ValueError" in report
    assert data.read_parquet(str(out)).count() == NUM_ROWS


def test_the_dashboard_is_no_part_of_the_job(watched_job, smollm2_dir):
    """The same job without the dashboard finds its output complete: nothing runs again, and
    the report and timeline stay."""
    _, out, _, _ = watched_job
    before = (out / TIMELINE_NAME).read_text()
    processor = processor_for(smollm2_dir, dashboard=False)
    processor(data.from_items([{"id": i} for i in range(NUM_ROWS)])).write_parquet(out)
    assert processor.summary() is None  # no run: every row was committed
    assert (out / TIMELINE_NAME).read_text() == before
    assert (out / REPORT_NAME).exists()

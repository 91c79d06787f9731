"""The dashboard and the report in a real headless browser (Debian's Chromium, driven by
Playwright): the live page loads with no console error, its charts render and update while a
real job runs, and the report opens with the network cut off and renders its plots. The
screenshots are kept as test artifacts (``$LLMBATCH_TEST_ARTIFACTS``, default
``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import llmbatch.data as data
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig
from llmbatch.monitor import REPORT_NAME

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get(
        "LLMBATCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"
    )
)
NUM_ROWS = 24


def chromium_or_skip() -> str:
    """Chromium from the OS packages (`make install` installs it as root on Debian). Skipped
    only where it cannot be installed: not on CI, and not as root on a Debian system."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    installable = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if os.environ.get("CI") or installable:
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=FLAGS)
        yield browser
        browser.close()


def open_page(browser, **context_options):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, **context_options)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return context, page, errors


def chart_points(page, chart: str) -> int:
    return page.evaluate(f"(document.getElementById('{chart}').data || [{{x: []}}])[0].x.length")


@pytest.fixture(scope="module")
def finished_job(smollm2_dir, tmp_path_factory, browser):
    """A job watched in the browser while it runs; what the page showed, and its output."""
    out = tmp_path_factory.mktemp("browser") / "out"
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={"max_model_len": 256, "kv_cache_memory_bytes": 32 << 20, "max_num_seqs": 4},
        batch_size=4,
        dashboard=True,
    )
    processor = build_llm_processor(
        config,
        preprocess=lambda row: dict(
            messages=[{"role": "user", "content": f"Tell a story about the number {row['id']}."}],
            sampling_params=dict(temperature=0, max_tokens=24, ignore_eos=True),
        ),
    )
    worker = threading.Thread(
        target=lambda: processor(
            data.from_items([{"id": i} for i in range(NUM_ROWS)])
        ).write_parquet(out)
    )
    worker.start()
    while processor.dashboard_url is None:
        assert worker.is_alive()
        time.sleep(0.05)
    context, page, errors = open_page(browser)
    page.goto(processor.dashboard_url)
    page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1", timeout=60_000)
    page.wait_for_function(
        "document.getElementById('chart-tokens').data[0].x.length >= 3", timeout=120_000
    )
    seen = {
        "points": chart_points(page, "chart-tokens"),
        "updates": int(page.evaluate("document.body.dataset.updates")),
        "rendered": page.evaluate(
            "[...document.querySelectorAll('.chart')].filter(c => c.querySelector('.main-svg')).length"
        ),
        "engine_rows": page.locator("#engines tbody tr").count(),
        "stage_rows": page.locator("#stages tbody tr").count(),
    }
    page.wait_for_timeout(3000)
    seen["points_later"] = chart_points(page, "chart-tokens")
    seen["updates_later"] = int(page.evaluate("document.body.dataset.updates"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    worker.join()
    page.wait_for_function(
        "document.getElementById('status').textContent === 'finished'", timeout=30_000
    )
    seen["rows_text"] = page.locator("#rows").inner_text()
    context.close()
    seen["errors"] = errors
    processor.close()
    return out, seen


def test_live_page_renders_and_updates_without_errors(finished_job):
    _, seen = finished_job
    assert seen["errors"] == []
    assert seen["rendered"] == 4  # tokens, rows, stages, engine (this machine has no GPU)
    assert seen["stage_rows"] == 8 and seen["engine_rows"] == 1
    assert seen["updates_later"] > seen["updates"]
    assert seen["points_later"] > seen["points"]
    assert seen["rows_text"].replace(",", "") == f"{NUM_ROWS} / {NUM_ROWS}"
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_report_opens_offline_and_renders_its_plots(finished_job, browser):
    out, _ = finished_job
    context, page, errors = open_page(browser, offline=True)
    requested: list[str] = []

    def only_files(route):
        requested.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_files)
    page.goto((out / REPORT_NAME).as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5")
    plots = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
    traces = page.evaluate(
        "[...document.querySelectorAll('.js-plotly-plot')].map(p => p.data.length)"
    )
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    context.close()
    assert errors == []
    assert [url for url in requested if not url.startswith("file://")] == []
    assert plots >= 5 and all(n >= 1 for n in traces)

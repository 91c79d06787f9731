"""`JobMonitor`: watches one processor's runs. It meters the stages, samples the job's state
once a second in a thread of its own (rows, tokens, stages, engine replicas, GPUs), serves the
dashboard and /metrics when asked, and while a run writes output keeps the timeline file next
to it and writes the run report when the run ends."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from llmbatch.monitor.engines import GpuReader, engine_states
from llmbatch.monitor.meters import WRITE, StageMeters, meter_chain
from llmbatch.monitor.rows import ErrorLog, TokenLengths
from llmbatch.monitor.state import EngineState, RunCounts, Sample
from llmbatch.monitor.timeline import TimelineWriter
from llmbatch.monitor.view import dashboard_view, progress

if TYPE_CHECKING:
    from llmbatch.data.files import OutputFolder
    from llmbatch.monitor.server import DashboardServer

logger = logging.getLogger("llmbatch")

SAMPLE_INTERVAL_S = 1.0
TIMELINE_INTERVAL_S = 5.0
# samples kept for the live charts; beyond this every other older one is dropped
MAX_HISTORY = 1800

Probe = Callable[[], tuple[RunCounts, Any]]


class JobMonitor:
    """The monitor of one processor. ``probe()`` returns the current run's counters and the
    engine (None while none is loaded); ``describe()`` the configuration and model shown on the
    page and in the report."""

    def __init__(self, probe: Probe, describe: Callable[[], dict[str, Any]]) -> None:
        self._probe = probe
        self._describe = describe
        self.meters = StageMeters()
        self.lengths = TokenLengths()
        self.errors = ErrorLog()
        self._gpus = GpuReader()
        self._lock = threading.Lock()
        self._history: deque[Sample] = deque()
        self._run_start = time.perf_counter()
        self._committed_before = 0
        self._total_rows: int | None = None
        self._expected_rows: Callable[[], int | None] | None = None
        self._timeline: TimelineWriter | None = None
        self._timeline_at = 0.0
        self._engine_written = False
        self._server: DashboardServer | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # what the last engine showed before it closed, and its resolved config
        self._closed_engines: tuple[EngineState, ...] = ()
        self._engine_description: Any = None

    # The run

    def wrap(self, stages: list[Any], shown: tuple[str, ...], token_stage: str) -> list[Any]:
        """``stages`` metered (see `meter_chain`); the rows leaving ``token_stage`` are counted
        by token length, the chain's output rows by error reason."""
        observers = {token_stage: self.lengths.observe, WRITE: self.errors.observe}
        return meter_chain(stages, self.meters, shown, observers)

    def start_run(self, expected_rows: Callable[[], int | None] | None = None) -> None:
        """A run starts: the meters start from zero. ``expected_rows`` counts the rows it will
        process (asked once, in the sampler's thread, only while the dashboard is served)."""
        self.meters.reset()
        self.lengths.reset()
        self.errors.reset()
        self._closed_engines = ()
        with self._lock:
            self._history.clear()
            self._run_start = time.perf_counter()
            if self._timeline is None:
                self._committed_before, self._total_rows = 0, None
            self._expected_rows = expected_rows

    def engine_closing(self, engine: Any) -> None:
        """The engine is about to close: its last counters stay on show (nothing runs in it
        any more)."""
        self._closed_engines = tuple(
            dataclasses.replace(state, running=0, waiting=0, kv_cache_usage=0.0)
            for state in engine_states(engine)
        )

    def description(self) -> dict[str, Any]:
        """The configuration and model (with the last loaded engine's resolved config)."""
        description = self._describe()
        if "engine" in description:
            self._engine_description = description["engine"]
        elif self._engine_description is not None:
            description["engine"] = self._engine_description
        return description

    def sample(self) -> Sample:
        counts, engine = self._probe()
        return Sample(
            time=time.time(),
            elapsed=time.perf_counter() - self._run_start,
            counts=counts,
            stages=self.meters.states(),
            engines=self._closed_engines if engine is None else engine_states(engine),
            gpus=self._gpus.read(),
            errors_by_reason=self.errors.counts(),
        )

    # The dashboard

    def serve(self, host: str, port: int) -> str:
        """Serves the dashboard and /metrics (once; later calls return the same address) and
        prints its address once."""
        from llmbatch.monitor.server import DashboardServer

        with self._lock:
            if self._server is None:
                self._server = DashboardServer(self, host, port)
                print(f"llmbatch dashboard: {self._server.url}", file=sys.stderr, flush=True)
                if host not in ("127.0.0.1", "localhost", "::1"):
                    logger.warning(
                        "the dashboard listens on %s: anyone who can reach this machine on port "
                        "%d sees the job's configuration, progress and error rows",
                        host,
                        self._server.port,
                    )
        self._ensure_sampling()
        return self._server.url

    @property
    def url(self) -> str | None:
        return None if self._server is None else self._server.url

    def view(self) -> dict[str, Any]:
        """What the dashboard page shows now (JSON-ready)."""
        with self._lock:
            history = list(self._history)
            committed, total = self._committed_before, self._total_rows
        if not history:
            history = [self.sample()]
        return dashboard_view(
            self.description(), history, committed, total, self.errors.examples, self._running()
        )

    def latest(self) -> tuple[Sample, int, int | None, float | None]:
        """A fresh sample, the rows done in the whole job, its total and the seconds left (for
        /metrics)."""
        sample = self.sample()
        with self._lock:
            history = [*self._history, sample]
            committed, total = self._committed_before, self._total_rows
        done, _, eta = progress(history, committed, total)
        return sample, done, total, eta

    @property
    def model_name(self) -> str:
        return str(self.description().get("model", ""))

    # Writing output

    @contextlib.contextmanager
    def watch_write(self, folder: OutputFolder, job: str) -> Iterator[None]:
        """Around a resumable write into ``folder``: keeps its timeline file and writes the run
        report when the write ends, however it ends (a killed run's segment ends without a
        word, and the next run's report shows it so)."""
        if not folder.is_local():
            logger.info("no timeline or report for %s: only local folders keep them", folder)
            yield
            return
        from llmbatch.data.checkpoint import Manifest

        manifest = Manifest.load(folder)
        retry = manifest is not None and manifest.complete
        committed = 0 if manifest is None or retry else manifest.committed_rows()
        total = None if manifest is None else manifest.total_rows
        if retry:
            total = sum(len(shard.errors) for shard in manifest.shards)  # type: ignore[union-attr]
        writer = TimelineWriter(
            folder.fs_path, job, "retry" if retry else "run", self.description(), committed, total
        )
        with self._lock:
            self._timeline, self._timeline_at = writer, 0.0
            self._committed_before, self._total_rows = committed, total
            self._engine_written = False
        self._ensure_sampling()
        status, detail = "finished", ""
        try:
            yield
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException as exc:
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with self._lock:
                self._timeline = None
            self._record(writer, self.sample())
            writer.close(status, detail)
            self._write_report(folder.fs_path)

    def _write_report(self, folder: str) -> None:
        from llmbatch.monitor.report import write_report

        try:
            write_report(folder)
        except Exception:  # the output is committed; a report that fails must not fail the job
            logger.warning("could not write the run report into %s", folder, exc_info=True)

    # The sampler

    def close(self) -> None:
        """Stops the dashboard and the sampler."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()
        self._wake.set()

    def _running(self) -> bool:
        return self._timeline is not None or self._server is not None

    def _ensure_sampling(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._wake.clear()
            self._thread = threading.Thread(target=self._loop, name="llmbatch-monitor", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while self._running():
            try:
                self._tick()
            except Exception:  # a reading that fails is skipped; the job goes on
                logger.debug("monitor sample failed", exc_info=True)
            self._wake.wait(SAMPLE_INTERVAL_S)

    def _tick(self) -> None:
        if self._server is not None:
            self._count_expected_rows()
        sample = self.sample()
        with self._lock:
            self._history.append(sample)
            if len(self._history) > MAX_HISTORY:
                kept = list(self._history)
                self._history = deque(kept[: len(kept) // 2 : 2] + kept[len(kept) // 2 :])
            writer = self._timeline
            due = writer is not None and sample.time - self._timeline_at >= TIMELINE_INTERVAL_S
            if due:
                self._timeline_at = sample.time
        if due:
            self._record(writer, sample)  # type: ignore[arg-type]

    def _record(self, writer: TimelineWriter, sample: Sample) -> None:
        if not self._engine_written:
            engine = self.description().get("engine")
            if engine:
                writer.append({"type": "engine", "config": engine})
                self._engine_written = True
        record = {"type": "sample", **sample.to_record()}
        lengths = self.lengths.take_new()
        if lengths:
            record["lengths"] = lengths
        examples = self.errors.take_new()
        if examples:
            record["error_examples"] = examples
        writer.append(record)

    def _count_expected_rows(self) -> None:
        with self._lock:
            count, self._expected_rows = self._expected_rows, None
            known = self._total_rows
        if count is None or known is not None:
            return
        try:
            total = count()
        except Exception:  # an input that cannot be counted has no ETA
            total = None
        with self._lock:
            if self._total_rows is None:
                self._total_rows = total

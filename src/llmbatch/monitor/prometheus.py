"""The Prometheus exposition of a job: vLLM's metric names (and labels: ``model_name``,
``engine``) where vLLM has one, so a board made for vLLM works, and llmbatch's rows, stages and
GPUs. Built on each scrape from a fresh sample by a custom collector of `prometheus_client`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from llmbatch.monitor.rows import PROMETHEUS_BUCKETS

if TYPE_CHECKING:
    from llmbatch.monitor.source import JobSource


class JobCollector:
    """Collects a `JobSource`'s metrics at scrape time."""

    def __init__(self, monitor: JobSource) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        monitor = self._monitor
        sample, done, total, eta = monitor.latest()
        model = monitor.model_name
        engine_labels = ["model_name", "engine"]

        def per_engine(kind: type, name: str, doc: str, attr: str) -> Metric:
            family = kind(name, doc, labels=engine_labels)
            for engine in sample.engines:
                family.add_metric([model, str(engine.replica)], getattr(engine, attr))
            return family

        yield per_engine(
            GaugeMetricFamily,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            "running",
        )
        yield per_engine(
            GaugeMetricFamily,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            "waiting",
        )
        yield per_engine(
            GaugeMetricFamily,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            "kv_cache_usage",
        )
        yield per_engine(
            CounterMetricFamily,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed (of finished requests).",
            "prompt_tokens",
        )
        yield per_engine(
            CounterMetricFamily,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            "generated_tokens",
        )
        yield per_engine(
            CounterMetricFamily,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            "preemptions",
        )
        yield per_engine(
            CounterMetricFamily,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            "prompt_tokens",
        )
        yield per_engine(
            CounterMetricFamily,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            "cached_prompt_tokens",
        )
        yield per_engine(
            CounterMetricFamily,
            "llmbatch_engine_steps",
            "Engine steps run.",
            "steps",
        )
        yield per_engine(
            CounterMetricFamily,
            "llmbatch_engine_step_seconds",
            "Seconds the engine spent in its steps.",
            "step_s",
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["model_name", "finished_reason"],
        )
        for reason, count in sorted(monitor.lengths.finish_reasons.items()):
            success.add_metric([model, reason], count)
        yield success
        for key, name, doc in (
            ("prompt", "vllm:request_prompt_tokens", "Number of prefill tokens processed."),
            ("output", "vllm:request_generation_tokens", "Number of generation tokens processed."),
        ):
            bins, total_tokens = monitor.lengths.histograms[key]
            cumulative = bins.cumsum().tolist()
            buckets = [(str(float(b)), c) for b, c in zip(PROMETHEUS_BUCKETS, cumulative)]
            buckets.append(("+Inf", cumulative[-1]))
            family = HistogramMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([model], buckets, sum_value=total_tokens[0])
            yield family
        yield from self._job(sample, done, total, eta, model)

    def _job(self, sample, done, total, eta, model):  # type: ignore[no-untyped-def]
        counts = sample.counts
        rows = CounterMetricFamily(
            "llmbatch_rows", "Rows this run handed on.", labels=["model_name"]
        )
        rows.add_metric([model], counts.rows)
        yield rows
        errors = CounterMetricFamily(
            "llmbatch_error_rows", "Error rows this run handed on, by reason.", labels=["reason"]
        )
        for reason, count in sorted(sample.errors_by_reason.items()):
            errors.add_metric([reason], count)
        yield errors
        for name, doc, value in (
            (
                "llmbatch_input_tokens",
                "Prompt tokens of this run's finished rows.",
                counts.input_tokens,
            ),
            (
                "llmbatch_output_tokens",
                "Output tokens of this run's finished rows.",
                counts.output_tokens,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([model], value)
            yield family
        yield GaugeMetricFamily(
            "llmbatch_job_rows_done", "Rows of the job done (earlier runs included).", value=done
        )
        if total is not None:
            yield GaugeMetricFamily("llmbatch_job_rows", "Rows of the whole job.", value=total)
        if eta is not None:
            yield GaugeMetricFamily(
                "llmbatch_job_eta_seconds", "Seconds left at the recent rate.", value=eta
            )
        stage_metrics = (
            (CounterMetricFamily, "llmbatch_stage_rows_in", "Rows a stage took in.", "rows_in"),
            (CounterMetricFamily, "llmbatch_stage_rows_out", "Rows a stage handed on.", "rows_out"),
            (GaugeMetricFamily, "llmbatch_stage_queued_rows", "Rows inside a stage.", "queued"),
            (
                CounterMetricFamily,
                "llmbatch_stage_busy_seconds",
                "Seconds a stage spent on its own work.",
                "busy_s",
            ),
        )
        for kind, name, doc, attr in stage_metrics:
            family = kind(name, doc, labels=["stage"])
            for stage in sample.stages:
                family.add_metric([stage.name], getattr(stage, attr))
            yield family
        gpu_metrics = (
            ("llmbatch_gpu_memory_used_bytes", "GPU memory in use.", "memory_used"),
            ("llmbatch_gpu_memory_total_bytes", "GPU memory in all.", "memory_total"),
            ("llmbatch_gpu_utilization_ratio", "Share of time the GPU was busy.", "utilization"),
        )
        for name, doc, attr in gpu_metrics:
            family = GaugeMetricFamily(name, doc, labels=["gpu", "name"])
            for gpu in sample.gpus:
                value = getattr(gpu, attr)
                if value is not None:
                    family.add_metric([str(gpu.index), gpu.name], value)
            yield family


def job_registry(monitor: JobSource) -> CollectorRegistry:
    """A registry holding the job's metrics and this process's (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(monitor))
    ProcessCollector(registry=registry)
    return registry

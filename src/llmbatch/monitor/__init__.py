"""Watching a job: meters on the stages, a sampler of the job's state, the live dashboard with
Prometheus metrics, the timeline file kept next to an output and the run report built from it."""

from llmbatch.monitor.job import JobMonitor
from llmbatch.monitor.report import REPORT_NAME, write_report
from llmbatch.monitor.timeline import TIMELINE_NAME

__all__ = ["REPORT_NAME", "TIMELINE_NAME", "JobMonitor", "write_report"]

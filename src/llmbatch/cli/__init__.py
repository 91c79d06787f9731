"""The `llmbatch` command: `llmbatch run job.yaml` (a job file, `job`) and `llmbatch demo`, with
a progress bar over the run (`progress`)."""

from llmbatch.cli.main import main

__all__ = ["main"]

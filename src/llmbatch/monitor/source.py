"""What the dashboard server and the Prometheus collector read from a job's monitor."""

from __future__ import annotations

from typing import Any, Protocol

from llmbatch.monitor.rows import TokenLengths
from llmbatch.monitor.state import Sample


class JobSource(Protocol):
    lengths: TokenLengths

    @property
    def model_name(self) -> str: ...

    def view(self) -> dict[str, Any]:
        """What the dashboard page shows now."""
        ...

    def latest(self) -> tuple[Sample, int, int | None, float | None]:
        """A fresh sample, the rows done in the whole job, its total and the seconds left."""
        ...

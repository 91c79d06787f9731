"""`HttpRequestProcessorConfig`: rows sent to an HTTP endpoint (any OpenAI-compatible server, or
any JSON API) instead of a local engine, as Ray Data LLM's HTTP processor sends them."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from llmbatch.llm.config import ProcessorConfig
from llmbatch.llm.config_fields import DASHBOARD_FIELD_TYPES, NOT_IDENTITY
from llmbatch.llm.stage_configs import HttpRequestStageConfig, resolve_stage_config

_NONE = type(None)
# Shorter values are too common in other text to scrub from messages.
_MIN_SECRET_LENGTH = 4


@dataclass(slots=True, kw_only=True)
class HttpRequestProcessorConfig(ProcessorConfig):
    """Each row's ``payload`` (a JSON object) is POSTed to ``url``; the JSON answer becomes the
    row's ``http_response``.

    Args:
        url: the endpoint, e.g. ``https://api.openai.com/v1/chat/completions``.
        headers: sent with every request (``Content-Type: application/json`` is added). Give
            credentials here, e.g. ``{"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}``:
            header values never appear in logs, summaries, error rows or the config's repr.
        qps: at most this many requests (retries included) are started per second; None: no
            limit.
        max_retries: how often a request is retried after a 408, 429 or 5xx answer, a timeout
            or a dropped connection; it waits ``base_retry_wait_time_in_s * 2**attempt``
            seconds first (or what a ``Retry-After`` header asks, when longer). A row whose
            request still fails becomes an error row with the status and the answer's body.
        base_retry_wait_time_in_s: the first retry's wait.
        batch_size: rows per table the stages read and emit.
        concurrency: ``batch_size * concurrency`` requests are in flight at once (on a Ray
            cluster: the size of the actor pool, each actor sending ``batch_size`` at once).
        session_factory: makes the ``aiohttp.ClientSession`` the requests go through (e.g. to
            set ``timeout=aiohttp.ClientTimeout(total=30)``, a proxy or TLS settings); called
            inside the stage's event loop. Default: a session with aiohttp's defaults (a
            request times out after 300 s).
        http_request_stage: Ray's stage config; it cannot be disabled.
        max_error_rate: stop a run once more than this fraction of its rows are error rows.
        dashboard, dashboard_host, dashboard_port: a live dashboard, as for
            `vLLMEngineProcessorConfig`.
    """

    url: str
    headers: dict[str, str] | None = None
    qps: float | None = None
    max_retries: int = 0
    base_retry_wait_time_in_s: float = 1
    session_factory: Callable[[], Any] | None = None
    batch_size: int = 64
    concurrency: int | tuple[int, int] = 1
    accelerator_type: str | None = None
    http_request_stage: Any = True
    max_error_rate: float | None = None
    dashboard: bool = field(default=False, metadata=NOT_IDENTITY)
    dashboard_host: str = field(default="127.0.0.1", metadata=NOT_IDENTITY)
    dashboard_port: int = field(default=0, metadata=NOT_IDENTITY)

    _REQUIRED: ClassVar[dict[str, str]] = {"url": "the endpoint to POST each row's payload to"}
    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "url": (str,),
        "headers": (dict, _NONE),
        "qps": (int, float, _NONE),
        "max_retries": (int,),
        "base_retry_wait_time_in_s": (int, float),
        "batch_size": (int,),
        "concurrency": (int, tuple, list),
        "accelerator_type": (str, _NONE),
        "http_request_stage": (bool, dict, HttpRequestStageConfig),
        "max_error_rate": (float, int, _NONE),
        **DASHBOARD_FIELD_TYPES,
    }

    def __post_init__(self) -> None:
        self.check_types()
        name = type(self).__name__
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{name}.url must be an http(s) URL, got {self._public_url()!r}")
        for key, value in (self.headers or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"{name}.headers must map str names to str values; {key!r} has a "
                    f"{type(value).__name__}"
                )
        if self.qps is not None and self.qps <= 0:
            raise ValueError(f"{name}.qps must be > 0 (or None for no limit), got {self.qps}")
        if self.max_retries < 0:
            raise ValueError(f"{name}.max_retries must be >= 0, got {self.max_retries}")
        if self.base_retry_wait_time_in_s < 0:
            raise ValueError(
                f"{name}.base_retry_wait_time_in_s must be >= 0, got "
                f"{self.base_retry_wait_time_in_s}"
            )
        if self.session_factory is not None and not callable(self.session_factory):
            raise TypeError(f"{name}.session_factory must be a function returning a session")
        self.check_positive("batch_size", self.batch_size)
        self.check_concurrency()
        self.check_dashboard()
        rate = self.max_error_rate
        if rate is not None and not 0 <= rate <= 1:
            raise ValueError(f"{name}.max_error_rate must be in [0, 1], got {rate!r}")
        stage = resolve_stage_config(self.http_request_stage, HttpRequestStageConfig, name)
        if not stage.enabled:
            raise ValueError(
                f"{name}.http_request_stage: the HTTP request stage is the processor's work and "
                "cannot be disabled"
            )

    @property
    def max_in_flight(self) -> int:
        """Requests in flight at once in one process."""
        return self.batch_size * self.num_replicas

    def secrets(self) -> list[str]:
        """What must never be shown: header values (and their token after a scheme such as
        ``Bearer``), the URL's password and query values; longest first."""
        values = set()
        for value in (self.headers or {}).values():
            values.add(value)
            values.add(value.split(maxsplit=1)[-1] if value.strip() else value)
        parts = urllib.parse.urlsplit(self.url)
        if parts.password:
            values.add(parts.password)
        values.update(v for _, v in urllib.parse.parse_qsl(parts.query))
        return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by ``***``."""
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text

    def identity(self) -> dict[str, Any]:
        """What decides the output, for resumable writes: header values left out, so a rotated
        key continues the same job."""
        values = self.identity_values()
        values["url"] = self._public_url()
        values["headers"] = sorted(self.headers or {})
        return values

    def _public_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query))
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def __repr__(self) -> str:
        shown = {
            **self.field_values(),
            "url": self._public_url(),
            "headers": None if self.headers is None else dict.fromkeys(self.headers, "***"),
        }
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

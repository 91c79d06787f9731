"""The dashboard's HTTP server, in a thread of its own: the page and its script and style
(shipped in this package), Plotly's script (shipped in the plotly package), the job's state as
JSON, and /metrics in Prometheus' text format. Nothing is loaded from anywhere else."""

from __future__ import annotations

import json
import logging
import threading
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmbatch.monitor.prometheus import job_registry

if TYPE_CHECKING:
    from llmbatch.monitor.source import JobSource

logger = logging.getLogger("llmbatch")

_STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


@cache
def static_file(name: str) -> bytes:
    return resources.files("llmbatch.monitor").joinpath("static", name).read_bytes()


@cache
def plotly_js() -> bytes:
    """plotly.js, minified, as the plotly package ships it."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


class DashboardServer:
    """Serves `monitor` on ``host:port`` (port 0: a free one) until `close`."""

    def __init__(self, monitor: JobSource, host: str, port: int) -> None:
        registry = job_registry(monitor)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = urlsplit(self.path).path
                try:
                    if path in _STATIC:
                        name, kind = _STATIC[path]
                        self._send(static_file(name), kind)
                    elif path == "/static/plotly.min.js":
                        self._send(plotly_js(), "text/javascript; charset=utf-8", cache=True)
                    elif path == "/api/state":
                        body = json.dumps(monitor.view(), default=str).encode()
                        self._send(body, "application/json")
                    elif path == "/metrics":
                        self._send(generate_latest(registry), CONTENT_TYPE_LATEST)
                    else:
                        self.send_error(HTTPStatus.NOT_FOUND)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser went away

            def _send(self, body: bytes, kind: str, cache: bool = False) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("dashboard: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(
                f"cannot serve the dashboard on {host}:{port}: {exc}; choose another "
                "dashboard_port (0 picks a free one)"
            ) from exc
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="llmbatch-dashboard", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""HTTP endpoints for operators: ``/metrics``, ``/health`` and ``/ready``.

A small WSGI app served by the standard library in a daemon thread, so a
scrape never waits on the event loop and a busy loop never hides the metrics.
``/health`` answers 200 while the process is up; ``/ready`` answers 200 only
when every readiness condition holds and lists them as JSON either way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from sidecar.telemetry import Telemetry

StartResponse = Callable[..., Any]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def make_app(telemetry: Telemetry) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(telemetry.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/health":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/ready":
            ready = telemetry.health.ready()
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable",
                         {"ready": ready, "conditions": telemetry.health.conditions()})
        return _json(start_response, "404 Not Found", {"error": "not found"})

    return app


class StatusServer:
    def __init__(self, host: str, port: int, telemetry: Telemetry):
        self._host, self._port, self._telemetry = host, port, telemetry
        self._server: _ThreadingWSGIServer | None = None
        self.port: int | None = None

    def start(self) -> None:
        try:
            self._server = make_server(self._host, self._port, make_app(self._telemetry),
                                       server_class=_ThreadingWSGIServer,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise OSError(f"HTTP endpoints cannot listen on {self._host}:{self._port}: "
                          f"{exc.strerror or exc}") from None
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, name="status-http",
                         daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

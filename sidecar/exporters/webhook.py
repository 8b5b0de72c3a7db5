"""Alert webhook exporter: anomaly alerts as JSON over HTTP(S) POST, rate limited.

Per exported batch with anomalies, one ``POST <url>`` with
``{"sidecar": {...}, "alerts": [...], "suppressed_alerts": n}``: the same metadata
the SIEM gets (``sidecar.exporters.siem.Alert``: template id, sanitized template,
session key, score, model; never a body or attributes), an
``Authorization: Bearer <token>`` header (the token comes from
``LOGMINER_WEBHOOK_TOKEN[_FILE]``, read by the config, never from YAML), and no
redirects followed (the token must not travel to another host).

Rate limit: a token bucket of ``max_alerts_per_minute`` alerts, refilled
continuously. Alerts beyond it are not posted but counted; the count goes out as
``suppressed_alerts`` in the next post (which, for a batch without alerts, costs
one token), so nothing is dropped silently. The count lives in memory; shutdown
posts what is left.

Results (the pipeline owns retries): 2xx is SUCCESS; 408, 429, 5xx, a connection
error or a timeout is RETRY; any other status is FAILURE (logged, and the batch is
counted as dropped by the pipeline). Bucket and count change only when a post
succeeds, so a retried batch is judged afresh. The HTTP exchange (``http.client``,
one connection per post) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from sidecar import __version__, defaults
from sidecar.exporters.alerts import Alert, ModelInfo, alerts_in
from sidecar.exporters.base import ExportResult
from sidecar.exporters.siem import timestamp
from sidecar.record import Batch
from sidecar.tls import ClientTlsSettings, client_context

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 65536
_BEARER_TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 section 2.1 b64token


@dataclass(frozen=True)
class WebhookExporterSettings:
    type: Literal["webhook"] = field(
        default="webhook", metadata={"doc": "Anomaly alerts as JSON POSTs to an HTTP(S) "
                                            "endpoint (no record bodies)."})
    url: str = field(default="", metadata={"doc": "Endpoint, http:// or https:// (required)."})
    timeout_seconds: float = field(
        default=10.0, metadata={"doc": "Connect and response timeout of one POST.", "min": 0.1})
    max_alerts_per_minute: int = field(
        default=60, metadata={"doc": "Rate limit (token bucket, bursts up to this many); "
                                     "alerts beyond it are posted as a count.",
                              "min": 1, "max": 1_000_000})
    use_token: bool = field(
        default=True, metadata={"doc": "Send Authorization: Bearer with the token from "
                                       f"{defaults.WEBHOOK_TOKEN_ENV}[_FILE]."})
    hostname: str = field(
        default="", metadata={"doc": "This sidecar's name in the payload (default: the host "
                                     "name)."})
    tls: ClientTlsSettings = field(
        default_factory=ClientTlsSettings,
        metadata={"doc": "CA, server name and client certificate for https URLs "
                         "(tls.enabled is implied by the scheme)."})

    def __post_init__(self) -> None:
        if not self.url:
            return  # the exporter refuses to start without one; defaults must construct
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook: url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("webhook: url must not hold credentials "
                             f"(use {defaults.WEBHOOK_TOKEN_ENV})")
        if self.tls.enabled and parts.scheme != "https":
            raise ValueError("webhook: tls.enabled is set but the url is not https://")

    @property
    def name(self) -> str:
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"webhook:{parts.hostname}:{port}"  # no path: it may hold a secret


class TokenBucket:
    """``capacity`` tokens refilled at ``capacity`` per minute; reading never takes any."""

    def __init__(self, capacity: int, clock: Callable[[], float]):
        self._capacity = float(capacity)
        self._rate = capacity / 60.0
        self._clock = clock
        self._tokens = float(capacity)
        self._at = clock()

    def available(self) -> int:
        """Whole tokens available now."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        return int(self._tokens)

    def take(self, count: int) -> None:
        """Spend ``count`` tokens (at most what ``available`` just returned)."""
        self._tokens -= count


def payload(alerts: list[Alert], suppressed: int, sidecar: dict[str, str]) -> bytes:
    """The JSON body: sidecar identity, alerts (with an RFC 3339 ``time``), suppressed count."""
    return json.dumps({
        "sidecar": sidecar,
        "alerts": [{**dataclasses.asdict(a), "time": timestamp(a.time_ns)} for a in alerts],
        "suppressed_alerts": suppressed,
    }, ensure_ascii=False, separators=(",", ":")).encode()


def result_of(status: int) -> ExportResult:
    """2xx SUCCESS; 408, 429 and 5xx RETRY; anything else (3xx, other 4xx) FAILURE."""
    if 200 <= status < 300:
        return ExportResult.SUCCESS
    if status in (408, 429) or status >= 500:
        return ExportResult.RETRY
    return ExportResult.FAILURE


class WebhookExporter:
    """Posts each batch's anomaly alerts (see the module docstring)."""

    def __init__(self, settings: WebhookExporterSettings, *, token: bytes | None = None,
                 model: ModelInfo | None = None, clock: Callable[[], float] = time.monotonic):
        if not settings.url:
            raise ValueError("webhook exporter: url is not set")
        if settings.use_token and not token:
            raise ValueError(f"exporter {settings.name}: use_token is set but "
                             f"{defaults.WEBHOOK_TOKEN_ENV} is not")
        if settings.use_token and token and not _BEARER_TOKEN.fullmatch(token):
            raise ValueError(f"{defaults.WEBHOOK_TOKEN_ENV}: not a valid bearer token (RFC 6750 "
                             "characters only)")
        self.name = settings.name
        self._settings = settings
        self._model = model
        parts = urlsplit(settings.url)
        self._host, self._https = parts.hostname or "", parts.scheme == "https"
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._context = (client_context(replace(settings.tls, enabled=True), self.name)
                         if self._https else None)
        self._headers = {"Content-Type": "application/json",
                         "User-Agent": f"logminer-sidecar/{__version__}"}
        if settings.use_token and token:
            self._headers["Authorization"] = "Bearer " + token.decode("ascii")
        self._sidecar = {"host": settings.hostname or socket.gethostname(),
                         "version": __version__}
        self._bucket = TokenBucket(settings.max_alerts_per_minute, clock)
        self._suppressed = 0

    async def start(self) -> None:
        return None

    async def export(self, batch: Batch) -> ExportResult:
        alerts = alerts_in(batch, self._model)
        tokens = self._bucket.available()
        sent = alerts[:tokens]
        pending = self._suppressed + len(alerts) - len(sent)
        if not sent and not (pending and tokens):
            self._suppressed = pending  # nothing to post, or no token left for it
            return ExportResult.SUCCESS
        result = await self._post(sent, pending)
        if result is ExportResult.SUCCESS:
            self._bucket.take(max(len(sent), 1))
            self._suppressed = 0
        return result

    async def _post(self, alerts: list[Alert], suppressed: int) -> ExportResult:
        body = payload(alerts, suppressed, self._sidecar)
        try:
            status = await asyncio.to_thread(self._exchange, body)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("%s: %s; will retry", self.name, type(exc).__name__)
            return ExportResult.RETRY
        result = result_of(status)
        if result is ExportResult.RETRY:
            log.warning("%s: HTTP %d; will retry", self.name, status)
        elif result is ExportResult.FAILURE:
            log.error("%s: HTTP %d; %d alerts not delivered", self.name, status, len(alerts))
        return result

    def _exchange(self, body: bytes) -> int:
        """POST ``body`` on a fresh connection; the response status (its body is discarded)."""
        timeout = self._settings.timeout_seconds
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            if self._context is not None:
                sock = self._context.wrap_socket(
                    sock, server_hostname=self._settings.tls.server_name or self._host)
            conn.sock = sock  # connected here so that TLS can verify tls.server_name
            conn.request("POST", self._target, body, self._headers)
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return response.status
        finally:
            conn.close()
            sock.close()

    async def shutdown(self) -> None:
        """Post the count of alerts still held back by the rate limit, if any."""
        if self._suppressed and await self._post([], self._suppressed) is ExportResult.SUCCESS:
            self._suppressed = 0
        if self._suppressed:
            log.warning("%s: %d rate-limited alerts were not reported", self.name,
                        self._suppressed)

"""SIEM exporter: sanitization metadata as RFC 5424 syslog over TCP or TLS, optionally CEF.

The SIEM gets metadata only, never a record's body or attributes (sanitized as
they are) and never anything from the token store. Per exported batch it gets:

- one summary message (MSGID ``batch``): how many records, how many anomalies and
  flagged session ends, and the batch's redaction counts per detector type;
- one message per anomaly (MSGID ``anomaly``: a record flagged ``anomaly``;
  ``session-end``: an alert record from the scoring stage, tag ``logminer.alert``)
  with the template id, the sanitized template (templates hold ``<TYPE>``, never a
  token), the session key (sanitized: a token or a key from sanitized text), the
  score and the model name and version.

``format: rfc5424`` puts the data in STRUCTURED-DATA (RFC 5424 section 6.3, SD-IDs
``name@<enterprise_id>``, PARAM-VALUEs escaped per 6.3.3) with a short UTF-8 MSG;
``format: cef`` sends a NILVALUE STRUCTURED-DATA and an ArcSight CEF:0 event as the
MSG (header fields escape ``\\`` and ``|``; extension values ``\\``, ``=`` and line
breaks; custom data in the labelled ``cs``/``cn``/``cfp`` keys).

Transport: RFC 6587 octet-counted framing (section 3.4.1, ``MSG-LEN SP SYSLOG-MSG``)
on one TCP connection (``tcp``, port 601) or on TLS (``tls``, RFC 5425, port 6514),
opened lazily and kept between batches. A whole batch is written and drained at
once. Syslog has no acknowledgement: the export succeeds once the kernel took the
bytes. A connection the peer closed is noticed before the next write and reopened;
a connect, TLS or write error (or timeout) closes it and returns RETRY, so the
pipeline resends the whole batch (at-least-once; the SIEM may see duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from sidecar import __version__, defaults
from sidecar.exporters.alerts import Alert, BatchSummary, ModelInfo, alerts_in, summarize
from sidecar.exporters.base import ExportResult
from sidecar.record import Batch
from sidecar.tls import ClientTlsSettings, client_context

log = logging.getLogger(__name__)

DOCUMENTATION_PEN = 32473  # RFC 5612: the IANA Private Enterprise Number for examples
@dataclass(frozen=True)
class SiemExporterSettings:
    type: Literal["syslog"] = field(
        default="syslog", metadata={"doc": "Sanitization metadata and anomaly alerts to a SIEM "
                                           "as RFC 5424 syslog (no record bodies)."})
    host: str = field(default="127.0.0.1", metadata={"doc": "Syslog receiver address."})
    port: int = field(
        default=0, metadata={"doc": "Receiver port (0 = the transport's standard port: "
                                    f"{defaults.SYSLOG_TLS_PORT} for tls, "
                                    f"{defaults.SYSLOG_TCP_PORT} for tcp).",
                             "min": 0, "max": 65535})
    transport: Literal["tls", "tcp"] = field(
        default="tls", metadata={"doc": "tls (RFC 5425) or plain tcp (RFC 6587); both use "
                                        "octet-counted framing."})
    tls: ClientTlsSettings = field(
        default_factory=ClientTlsSettings,
        metadata={"doc": "CA, server name and client certificate for transport tls "
                         "(tls.enabled is implied by the transport)."})
    format: Literal["rfc5424", "cef"] = field(
        default="rfc5424", metadata={"doc": "rfc5424: data in STRUCTURED-DATA; cef: an "
                                            "ArcSight CEF event as the syslog MSG."})
    app_name: str = field(default="logminer", metadata={"doc": "RFC 5424 APP-NAME."})
    hostname: str = field(
        default="", metadata={"doc": "RFC 5424 HOSTNAME (default: this host's name)."})
    facility: int = field(
        default=13, metadata={"doc": "Syslog facility (13 = log audit).", "min": 0, "max": 23})
    enterprise_id: int = field(
        default=DOCUMENTATION_PEN,
        metadata={"doc": "IANA Private Enterprise Number in the SD-IDs (name@number); 32473 "
                         "is the example number of RFC 5612.", "min": 1})
    max_field_chars: int = field(
        default=2048, metadata={"doc": "Longer values (templates, session keys) are cut to "
                                       "this many characters.", "min": 16, "max": 65536})
    connect_timeout_seconds: float = field(
        default=10.0, metadata={"doc": "TCP/TLS connect timeout.", "min": 0.1})
    send_timeout_seconds: float = field(
        default=30.0, metadata={"doc": "Longest time to write one batch's messages.",
                                "min": 0.1})

    def __post_init__(self) -> None:
        if self.tls.enabled and self.transport != "tls":
            raise ValueError("syslog: tls.enabled is set but transport is tcp "
                             "(set transport: tls)")

    @property
    def target_port(self) -> int:
        """``port``, or the standard port of the transport."""
        if self.port:
            return self.port
        return defaults.SYSLOG_TLS_PORT if self.transport == "tls" else defaults.SYSLOG_TCP_PORT

    @property
    def name(self) -> str:
        return f"syslog:{self.host}:{self.target_port}"


# --------------------------------------------------------------------------- RFC 5424

SEVERITY_INFO = 6
SEVERITY_WARNING = 4
_NOT_SD_NAME = re.compile(r'[^!-~]|[=\]"]')
_NOT_PRINTUSASCII = re.compile(r"[^!-~]")


def sd_escape(value: str) -> str:
    """A PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped with a backslash (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def sd_name(name: str) -> str:
    """An SD-NAME (1-32 printable US-ASCII characters but ``= ] "``); others become ``_``."""
    return _NOT_SD_NAME.sub("_", name)[:32] or "_"


def sd_element(sd_id: str, params: list[tuple[str, str]]) -> str:
    """``[sd_id name="value" ...]`` with names made valid and values escaped."""
    return "[" + " ".join([sd_id, *(f'{sd_name(k)}="{sd_escape(v)}"' for k, v in params)]) + "]"


def header_field(value: str, max_len: int) -> str:
    """A header field (HOSTNAME, APP-NAME, ...): printable US-ASCII, cut, or ``-`` (NILVALUE)."""
    return _NOT_PRINTUSASCII.sub("_", value)[:max_len] or "-"


def timestamp(time_ns: int) -> str:
    """RFC 5424 TIMESTAMP in UTC with microseconds, e.g. ``2024-01-02T03:04:05.000006Z``."""
    seconds, ns = divmod(time_ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=ns // 1000)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 section 3.4.1 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


# --------------------------------------------------------------------------- CEF

CEF_ALERT_KEYS = {"template_id": ("cn1", "templateId"), "template": ("cs1", "template"),
                  "session": ("cs2", "session"), "score": ("cfp1", "score"),
                  "model": ("cs3", "model"), "model_version": ("cn2", "modelVersion"),
                  "tag": ("cs4", "tag"), "reason": ("cs5", "reason")}


def cef_header_escape(value: str) -> str:
    """A CEF header field: ``\\`` and ``|`` escaped, line breaks as spaces."""
    return (value.replace("\\", "\\\\").replace("|", "\\|")
            .replace("\r", " ").replace("\n", " "))


def cef_value_escape(value: str) -> str:
    """A CEF extension value: ``\\``, ``=`` escaped, line breaks as ``\\n`` / ``\\r``."""
    return (value.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r", "\\r").replace("\n", "\\n"))


def cef_event(signature: str, name: str, severity: int, ext: list[tuple[str, str]]) -> str:
    """``CEF:0|LogMiner|Sidecar|<version>|signature|name|severity|k=v ...``."""
    header = "|".join(cef_header_escape(v) for v in
                      ("LogMiner", "Sidecar", __version__, signature, name, str(severity)))
    return f"CEF:0|{header}|" + " ".join(f"{k}={cef_value_escape(v)}" for k, v in ext)


def cef_labelled(key: str, label: str, value: str) -> list[tuple[str, str]]:
    """A custom CEF field and its label (``cs1=... cs1Label=...``)."""
    return [(key, value), (f"{key}Label", label)]


# --------------------------------------------------------------------------- the exporter


class SyslogExporter:
    """Sends each batch's summary and anomaly messages (see the module docstring)."""

    def __init__(self, settings: SiemExporterSettings, *, model: ModelInfo | None = None):
        self.name = settings.name
        self._settings = settings
        self._model = model
        self._context = (client_context(replace(settings.tls, enabled=True), self.name)
                         if settings.transport == "tls" else None)
        self._hostname = header_field(settings.hostname or socket.gethostname(), 255)
        self._app_name = header_field(settings.app_name, 48)
        self._procid = str(os.getpid())
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def start(self) -> None:
        return None  # connect lazily: a down SIEM must not stop the sidecar starting

    def encode(self, batch: Batch) -> bytes:
        """The batch's framed messages: the summary, then one per anomaly."""
        now = time.time_ns()
        messages = [self._summary(summarize(batch), now)]
        messages += [self._alert(alert) for alert in alerts_in(batch, self._model)]
        return b"".join(octet_counted(m) for m in messages)

    def _message(self, severity: int, time_ns: int, msgid: str, sd: str, msg: str) -> bytes:
        pri = self._settings.facility * 8 + severity
        head = (f"<{pri}>1 {timestamp(time_ns)} {self._hostname} {self._app_name} "
                f"{self._procid} {msgid} {sd}")
        if self._settings.format == "rfc5424":
            return f"{head} \ufeff{msg}".encode()  # MSG-UTF8 starts with a BOM (6.4)
        return f"{head} {msg}".encode()

    def _sd_id(self, name: str) -> str:
        return f"{name}@{self._settings.enterprise_id}"

    def _summary(self, s: BatchSummary, now: int) -> bytes:
        counts = [("records", s.records), ("anomalies", s.anomalies),
                  ("session_ends", s.session_ends), ("redactions", s.redacted)]
        if self._settings.format == "cef":
            ext = [("rt", str(now // 1_000_000)), ("cnt", str(s.records)),
                   *cef_labelled("cn1", "anomalies", str(s.anomalies)),
                   *cef_labelled("cn2", "sessionEnds", str(s.session_ends)),
                   *cef_labelled("cn3", "redactions", str(s.redacted))]
            if s.redactions:
                ext += cef_labelled("cs1", "redactionsByType",
                                    ",".join(f"{k}:{v}" for k, v in s.redactions))
            return self._message(SEVERITY_INFO, now, "batch", "-",
                                 cef_event("batch", "Sanitized batch", 1, ext))
        sd = sd_element(self._sd_id("logminer"), [(k, str(v)) for k, v in counts])
        if s.redactions:
            sd += sd_element(self._sd_id("redactions"), [(k, str(v)) for k, v in s.redactions])
        text = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts)
        return self._message(SEVERITY_INFO, now, "batch", sd, f"sanitized batch: {text}")

    def _alert(self, alert: Alert) -> bytes:
        limit = self._settings.max_field_chars
        fields = [(k, v[:limit]) for k, v in alert.fields()]
        msgid = "anomaly" if alert.kind == "record" else "session-end"
        title = "Anomalous log record" if alert.kind == "record" else "Session ended early"
        if self._settings.format == "cef":
            ext = [("rt", str(alert.time_ns // 1_000_000))]
            for key, value in fields:
                if key in CEF_ALERT_KEYS:
                    ext += cef_labelled(*CEF_ALERT_KEYS[key], value)
            return self._message(SEVERITY_WARNING, alert.time_ns, msgid, "-",
                                 cef_event(msgid, title, 5, ext))
        sd = sd_element(self._sd_id("anomaly"), fields)
        score = "" if alert.score is None else f", score {alert.score:.6g}"
        return self._message(SEVERITY_WARNING, alert.time_ns, msgid, sd, f"{title}{score}")

    async def export(self, batch: Batch) -> ExportResult:
        if not batch.records:
            return ExportResult.SUCCESS
        data = self.encode(batch)
        try:
            writer = await self._connection()
            async with asyncio.timeout(self._settings.send_timeout_seconds):
                writer.write(data)
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.warning("%s: %s; will retry", self.name, type(exc).__name__)
            await self._close()
            return ExportResult.RETRY
        return ExportResult.SUCCESS

    async def _connection(self) -> asyncio.StreamWriter:
        if self._stream is not None:
            reader, writer = self._stream
            if not (reader.at_eof() or reader.exception() or writer.is_closing()):
                return writer
            await self._close()  # the SIEM closed it between batches: reopen before writing
        s = self._settings
        async with asyncio.timeout(s.connect_timeout_seconds):
            self._stream = await asyncio.open_connection(
                s.host, s.target_port, ssl=self._context,
                server_hostname=(s.tls.server_name or s.host) if self._context else None)
        return self._stream[1]

    async def _close(self) -> None:
        if self._stream is not None:
            writer = self._stream[1]
            self._stream = None
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self._settings.connect_timeout_seconds):
                    await writer.wait_closed()

    async def shutdown(self) -> None:
        await self._close()

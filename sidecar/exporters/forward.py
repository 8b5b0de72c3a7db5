"""Forward exporter: sanitized records to a downstream Fluentd / Fluent Bit aggregator.

Two modes, with different guarantees (README: "Delivery guarantees"):

- ``ack`` (default, at-least-once): our forward codec in the client
  direction. Each batch is sent as PackedForward (one message per tag,
  optionally gzip-compressed) with a fresh ``chunk`` id; the export succeeds
  only when the aggregator has answered every chunk with its ``ack``. No ack
  within ``ack_timeout_seconds``, a refused connection or a reset gives
  RETRY: the pipeline backs off and resends from the spool, so the
  aggregator may see a batch twice, never zero times.
- ``fluent-logger`` (at-most-once): the ``fluent-logger`` library's sender, in
  Message mode without ``chunk``. It cannot learn whether a record was
  accepted, so a record written to a socket that then breaks is lost.

Each record travels as a map: ``message`` (the sanitized body), its
attributes, and the sidecar's verdicts (``template_id``, ``template``,
``session``, ``score``, ``flags``, ``redactions``). The connection is opened
lazily and reused; TLS and the shared_key handshake are optional.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from fluent import sender as fluent_sender

from sidecar import defaults
from sidecar.codecs import forward as codec
from sidecar.codecs.errors import LocalProtocolError, ProtocolError
from sidecar.exporters.base import ExportResult
from sidecar.record import Batch, Record
from sidecar.tls import ClientTlsSettings, client_context

log = logging.getLogger(__name__)

MAX_EVENT_TIME_NS = (2**32 - 1) * 10**9  # EventTime carries unsigned 32-bit seconds


@dataclass(frozen=True)
class ForwardExporterSettings:
    type: Literal["forward"] = field(
        default="forward", metadata={"doc": "Forward protocol to a Fluentd/Fluent Bit "
                                            "aggregator."})
    host: str = field(default="127.0.0.1", metadata={"doc": "Aggregator address."})
    port: int = field(default=defaults.AGGREGATOR_PORT,
                      metadata={"doc": "Aggregator port.", "min": 1, "max": 65535})
    mode: Literal["ack", "fluent-logger"] = field(
        default="ack", metadata={"doc": "ack: at-least-once with chunk acks; fluent-logger: "
                                        "at-most-once."})
    compress: bool = field(default=True, metadata={"doc": "gzip (CompressedPackedForward)."})
    tag_prefix: str = field(default="", metadata={"doc": "Prepended to every record's tag."})
    ack_timeout_seconds: float = field(
        default=30.0, metadata={"doc": "How long to wait for an ack before resending.",
                                "min": 0.1})
    connect_timeout_seconds: float = field(
        default=10.0, metadata={"doc": "TCP/TLS connect timeout.", "min": 0.1})
    use_shared_key: bool = field(
        default=False,
        metadata={"doc": "Authenticate with the key from "
                         f"{defaults.DOWNSTREAM_SHARED_KEY_ENV}[_FILE]."})
    tls: ClientTlsSettings = field(default_factory=ClientTlsSettings,
                                   metadata={"doc": "TLS to the aggregator."})

    @property
    def name(self) -> str:
        return f"forward:{self.host}:{self.port}"


def to_forward_record(record: Record) -> dict[str, Any]:
    """The map sent downstream: sanitized body and attributes plus the sidecar's verdicts."""
    out: dict[str, Any] = dict(record.attributes)
    out["message"] = record.body
    if record.severity:
        out["severity"] = record.severity
    if record.resource:
        out["resource"] = record.resource
    out["logminer"] = {
        "template_id": record.template_id, "template": record.template,
        "session": record.session, "score": record.score,
        "flags": sorted(flag.value for flag in record.flags),
        "redactions": dict(record.redactions),
    }
    return out


class ForwardAckExporter:
    """At-least-once forward exporter (see the module docstring)."""

    def __init__(self, settings: ForwardExporterSettings, *, shared_key: bytes | None = None):
        if settings.use_shared_key and not shared_key:
            raise ValueError(f"exporter {settings.name}: use_shared_key is set but "
                             f"{defaults.DOWNSTREAM_SHARED_KEY_ENV} is not")
        self.name = settings.name
        self._settings = settings
        self._shared_key = shared_key if settings.use_shared_key else None
        self._context = client_context(settings.tls, self.name)
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._conn: codec.ClientConnection | None = None

    async def start(self) -> None:
        return None  # connect lazily: a down aggregator must not stop the sidecar starting

    async def export(self, batch: Batch) -> ExportResult:
        try:
            async with asyncio.timeout(self._settings.ack_timeout_seconds):
                await self._send(batch)
        except LocalProtocolError:
            log.error("%s: a record cannot be encoded for the forward protocol", self.name)
            return ExportResult.FAILURE  # resending cannot help: the pipeline counts the drop
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
            log.warning("%s: %s; will retry", self.name, type(exc).__name__)
            await self._close()
            return ExportResult.RETRY
        return ExportResult.SUCCESS

    async def _send(self, batch: Batch) -> None:
        reader, writer, conn = await self._connection()
        by_tag: dict[str, list[codec.Entry]] = defaultdict(list)
        for record in batch:
            time_ns = min(max(record.time_ns, 0), MAX_EVENT_TIME_NS)  # EventTime's range
            by_tag[self._settings.tag_prefix + record.tag].append(
                codec.Entry(time_ns, to_forward_record(record)))
        waiting = set()
        for tag, entries in by_tag.items():
            chunk = codec.new_chunk_id()
            waiting.add(chunk)
            writer.write(conn.pack_forward(tag, entries, chunk=chunk,
                                           compress=self._settings.compress))
        await writer.drain()
        while waiting:
            event = await self._next_event(reader, writer, conn)
            if isinstance(event, codec.AckReceived):
                waiting.discard(event.chunk)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                         codec.ClientConnection]:
        if self._stream is not None and self._conn is not None:
            return (*self._stream, self._conn)
        s = self._settings
        async with asyncio.timeout(s.connect_timeout_seconds):
            reader, writer = await asyncio.open_connection(
                s.host, s.port, ssl=self._context,
                server_hostname=(s.tls.server_name or s.host) if self._context else None)
        conn = codec.ClientConnection(shared_key=self._shared_key)
        self._stream, self._conn = (reader, writer), conn
        if self._shared_key is not None:
            while not isinstance(await self._next_event(reader, writer, conn),
                                 codec.AuthenticationSucceeded):
                pass
        return reader, writer, conn

    @staticmethod
    async def _next_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          conn: codec.ClientConnection) -> codec.ClientEvent:
        while True:
            event = conn.next_event()
            outgoing = conn.data_to_send()
            if outgoing:
                writer.write(outgoing)
                await writer.drain()
            if event is not codec.NEED_DATA:
                if isinstance(event, codec.ConnectionClosed):
                    raise ConnectionResetError("aggregator closed the connection")
                return event
            conn.receive_data(await reader.read(65536))

    async def _close(self) -> None:
        if self._stream is not None:
            writer = self._stream[1]
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self._stream = self._conn = None

    async def shutdown(self) -> None:
        await self._close()


class FluentLoggerExporter:
    """At-most-once exporter through the ``fluent-logger`` library (see the module docstring)."""

    def __init__(self, settings: ForwardExporterSettings):
        self.name = settings.name
        self._settings = settings
        self._sender: fluent_sender.FluentSender | None = None

    async def start(self) -> None:
        s = self._settings
        self._sender = fluent_sender.FluentSender(
            s.tag_prefix.rstrip("."), host=s.host, port=s.port, nanosecond_precision=True,
            timeout=s.connect_timeout_seconds)

    async def export(self, batch: Batch) -> ExportResult:
        assert self._sender is not None, "start() was not awaited"
        ok = await asyncio.to_thread(self._emit_all, batch)
        return ExportResult.SUCCESS if ok else ExportResult.RETRY

    def _emit_all(self, batch: Batch) -> bool:
        assert self._sender is not None
        ok = True
        for record in batch:
            ok = self._sender.emit_with_time(
                record.tag, record.time_ns / 1e9, to_forward_record(record)) and ok
        return ok

    async def shutdown(self) -> None:
        if self._sender is not None:
            await asyncio.to_thread(self._sender.close)
            self._sender = None

"""Fluentd forward protocol listener: a thin asyncio shell over ``codecs.forward``.

Spec: https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1

Per connection: read bytes, feed the sans-IO codec, turn each entries event
into one Batch and ``submit`` it. While ``submit`` waits (the pipeline is
full) the connection is not read, so TCP flow control slows the sender; the
``ack`` for a ``chunk`` is written only after ``submit`` returned. If the
pipeline stays full past its admission timeout the connection is closed
without an ack, so the sender resends the chunk; nothing is dropped silently.
A peer that sends invalid data has its connection closed and counted by
error kind; every other connection flows on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import typing
from dataclasses import dataclass, field
from typing import Any

from sidecar import defaults
from sidecar.codecs import forward as codec
from sidecar.codecs.errors import RemoteProtocolError
from sidecar.pipeline import Submit
from sidecar.receivers.listener import ListenerSettings, port_field
from sidecar.receivers.tcp import READ_SIZE, TcpReceiver
from sidecar.record import Batch, Record
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForwardSettings(ListenerSettings):
    port: int = port_field(defaults.FORWARD_PORT)
    body_keys: tuple[str, ...] = field(
        default=("message", "log", "msg"),
        metadata={"doc": "Record keys holding the message text; the first present wins."})
    max_buffer_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"doc": "Largest accepted message (keep Fluentd's chunk_limit_size below it).",
                  "min": 1024})
    max_record_bytes: int = field(
        default=1024 * 1024, metadata={"doc": "Largest accepted record.", "min": 64})
    max_decompressed_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={"doc": "Largest accepted gzip chunk after inflation.", "min": 1024})
    require_shared_key: bool = field(
        default=False,
        metadata={"doc": "Require the shared_key handshake (key from "
                         "LOGMINER_FORWARD_SHARED_KEY[_FILE])."})


_FLAT = (str, int, float, bool, type(None))


def _plain(value: Any) -> Any:
    """Make msgpack values JSON-safe: bytes become text (invalid UTF-8 replaced)."""
    if isinstance(value, dict) and all(
            type(k) is str and isinstance(v, _FLAT) for k, v in value.items()):
        return dict(value)  # the common flat record: nothing to convert
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_record(tag: str, entry: codec.Entry, body_keys: tuple[str, ...]) -> Record:
    """Map one forward entry to a Record: the first body key found is the body.

    A record with none of the body keys keeps all its fields as attributes and
    gets its compact JSON as the body, so there is always text to redact,
    template and score.
    """
    fields = _plain(entry.record)
    body = None
    for key in body_keys:
        if isinstance(fields.get(key), str):
            body = fields.pop(key)
            break
    if body is None:
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        fields = {}
    severity = fields.get("level") or fields.get("severity") or ""
    # Like Fluentd's in_forward, a zero time means "now".
    return Record(body=body, time_ns=entry.time_ns or time.time_ns(), tag=tag, attributes=fields,
                  severity=severity if isinstance(severity, str) else str(severity))


class _HeartbeatProtocol(asyncio.DatagramProtocol):
    """Answers each UDP heartbeat datagram as in_forward does (spec: Heartbeat Message)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._transport.sendto(codec.heartbeat_reply(data), addr)


class ForwardReceiver(TcpReceiver):
    name = "forward"

    def __init__(self, settings: ForwardSettings, submit: Submit, telemetry: Telemetry,
                 *, shared_key: bytes | None = None):
        if settings.require_shared_key and not shared_key:
            raise ValueError("receivers.forward.require_shared_key is set but "
                             f"{defaults.FORWARD_SHARED_KEY_ENV} is not")
        super().__init__(settings.host, settings.port, settings.tls, submit, telemetry)
        self._settings = settings
        self._shared_key = shared_key if settings.require_shared_key else None
        self._heartbeat: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        """Listen on TCP, and on UDP at the same port for out_forward's heartbeats."""
        await super().start()
        loop = asyncio.get_running_loop()
        try:
            self._heartbeat, _ = await loop.create_datagram_endpoint(
                _HeartbeatProtocol, local_addr=(self._host, self.port))
        except OSError as exc:
            await super().stop(0)
            raise OSError(f"forward heartbeat cannot listen on udp {self._host}:{self.port}: "
                          f"{exc.strerror or exc}") from None

    async def stop(self, grace: float) -> None:
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
        await super().stop(grace)

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self._settings
        conn = codec.ServerConnection(
            shared_key=self._shared_key, max_buffer_bytes=s.max_buffer_bytes,
            max_record_bytes=s.max_record_bytes, max_decompressed_bytes=s.max_decompressed_bytes)
        writer.write(conn.initial_bytes())
        unacked: list[Record] = []  # records of messages without `chunk`: nobody awaits an ack
        while True:
            conn.receive_data(await reader.read(READ_SIZE))
            while True:
                try:
                    event = conn.next_event()
                except RemoteProtocolError as exc:
                    writer.write(conn.data_to_send())
                    self._telemetry.count_receiver_error(self.name, exc.error_kind)
                    log.warning("forward: closing connection: %s", exc)
                    event = codec.ConnectionClosed()
                writer.write(conn.data_to_send())
                if event is codec.NEED_DATA or isinstance(event, codec.ConnectionClosed):
                    # Everything read so far goes in as one batch; it waits only for room.
                    if unacked and not await self.submit(Batch(unacked, source=self.name),
                                                         durable=False):
                        return
                    unacked = []
                    if event is codec.NEED_DATA:
                        break
                    return
                if isinstance(event, codec.EntriesReceived):
                    records = [to_record(event.tag, e, s.body_keys) for e in event.entries]
                    if event.chunk is None:
                        unacked.extend(records)
                        continue
                    # Acked entries go in durably, after any unacked ones read before them.
                    if not await self.submit(Batch(unacked + records, source=self.name)):
                        return
                    unacked = []
                    writer.write(conn.ack(event.chunk))
            await writer.drain()

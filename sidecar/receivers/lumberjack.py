"""Lumberjack v2 listener (Filebeat ``output.logstash``): an asyncio shell over the codec.

One window is one Batch. When the window's last data frame arrives, the batch
is submitted and the window's last sequence number is acknowledged only after
``submit`` returned; while it waits on a full pipeline the connection is not
read and a keepalive ``ack(0)`` goes out every few seconds so Filebeat keeps
waiting instead of timing out and resending. Filebeat events map to Records:
``message`` is the body, ``@timestamp`` the time, ``host.name`` goes to the
resource, the remaining fields stay as attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar import defaults
from sidecar.codecs import lumberjack as codec
from sidecar.codecs.errors import RemoteProtocolError
from sidecar.pipeline import Submit
from sidecar.receivers.listener import ListenerSettings, port_field
from sidecar.receivers.tcp import READ_SIZE, TcpReceiver
from sidecar.record import Batch, Record
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LumberjackSettings(ListenerSettings):
    port: int = port_field(defaults.LUMBERJACK_PORT)
    tag: str = field(default="filebeat", metadata={"doc": "Tag given to Filebeat records."})
    max_frame_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"doc": "Largest accepted frame.", "min": 1024})
    max_decompressed_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={"doc": "Largest accepted compressed frame after inflation.", "min": 1024})
    keepalive_seconds: float = field(
        default=5.0,
        metadata={"doc": "Keepalive ack interval while a window waits for the pipeline.",
                  "min": 0.1})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _time_ns(event: dict[str, Any]) -> int:
    """``@timestamp`` (ISO 8601, as Filebeat writes it) in integer nanoseconds; now if it is
    missing, unparsable or outside 1970..2262."""
    stamp = event.get("@timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(stamp)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            time_ns = (parsed - _EPOCH) // _MICROSECOND * 1000
            if 0 <= time_ns < 2**63:
                return time_ns
    return time.time_ns()


def to_record(tag: str, event: dict[str, Any]) -> Record:
    """Map one Filebeat event to a Record (the input dict is not modified)."""
    fields = dict(event)
    time_ns = _time_ns(fields)
    fields.pop("@timestamp", None)
    message = fields.pop("message", "")
    resource = {}
    host = fields.get("host")
    if isinstance(host, dict) and isinstance(host.get("name"), str):
        resource["host.name"] = host["name"]
    level = fields.get("log", {}).get("level") if isinstance(fields.get("log"), dict) else None
    return Record(body=message if isinstance(message, str) else str(message), time_ns=time_ns,
                  tag=tag, attributes=fields, resource=resource,
                  severity=level if isinstance(level, str) else "")


class LumberjackReceiver(TcpReceiver):
    name = "lumberjack"

    def __init__(self, settings: LumberjackSettings, submit: Submit, telemetry: Telemetry):
        super().__init__(settings.host, settings.port, settings.tls, submit, telemetry)
        self._settings = settings

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self._settings
        conn = codec.ServerConnection(max_frame_bytes=s.max_frame_bytes,
                                      max_decompressed_bytes=s.max_decompressed_bytes)
        window: list[Record] = []
        expected = 0
        while True:
            conn.receive_data(await reader.read(READ_SIZE))
            while True:
                try:
                    event = conn.next_event()
                except RemoteProtocolError as exc:
                    self._telemetry.count_receiver_error(self.name, exc.error_kind)
                    log.warning("lumberjack: closing connection: %s", exc)
                    return
                if event is codec.NEED_DATA:
                    break
                if isinstance(event, codec.ConnectionClosed):
                    return
                if isinstance(event, codec.WindowSize):
                    expected, window = event.size, []
                    if expected == 0:
                        writer.write(conn.ack(0))
                    continue
                window.append(to_record(s.tag, event.event))
                if event.seq >= expected:
                    if not await self._submit_window(Batch(window, source=self.name), conn,
                                                     writer):
                        return
                    writer.write(conn.ack(event.seq))
                    window = []
            await writer.drain()

    async def _submit_window(self, batch: Batch, conn: codec.ServerConnection,
                             writer: asyncio.StreamWriter) -> bool:
        """Submit while sending keepalive acks, so Filebeat waits rather than resends."""
        async def keepalive() -> None:
            while True:
                await asyncio.sleep(self._settings.keepalive_seconds)
                writer.write(conn.ack(0))

        pinger = asyncio.create_task(keepalive())
        try:
            return await self.submit(batch)
        finally:
            pinger.cancel()

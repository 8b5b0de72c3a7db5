"""The shared shell of the stream-socket receivers (forward, Lumberjack).

Owns what every TCP listener needs: binding with a clear error on a port in
use, optional TLS, the set of live connections, counting resets, and a stop
that lets connections finish within a grace period before cancelling them.
A subclass implements only ``converse``: the protocol loop for one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

from sidecar.pipeline import BatchRejected, PipelineClosed, PipelineFull, Submit
from sidecar.record import Batch
from sidecar.telemetry import Telemetry
from sidecar.tls import TlsSettings, server_context

READ_SIZE = 256 * 1024


class TcpReceiver(ABC):
    name: str

    def __init__(self, host: str, port: int, tls: TlsSettings, submit: Submit,
                 telemetry: Telemetry):
        self._host, self._port, self._tls = host, port, tls
        self._submit = submit
        self._telemetry = telemetry
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, ssl=server_context(self._tls),
                limit=READ_SIZE)
        except OSError as exc:
            raise OSError(f"{self.name} receiver cannot listen on {self._host}:{self._port}: "
                          f"{exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop listening, give open connections ``grace`` seconds, then cancel them."""
        if self._server is None:
            return
        self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._server = None

    async def submit(self, batch: Batch, *, durable: bool = True) -> bool:
        """Hand ``batch`` to the pipeline; False means: close without acknowledging."""
        try:
            await self._submit(batch, durable=durable)
        except PipelineFull:
            self._telemetry.count_receiver_error(self.name, "backpressure")
            return False
        except BatchRejected:
            self._telemetry.count_receiver_error(self.name, "rejected")
            return False
        except PipelineClosed:
            return False
        self._telemetry.count_received(self.name, batch)
        return True

    @abstractmethod
    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run the protocol on one connection until it ends."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self._telemetry.count_receiver_error(self.name, "connection_reset")
        except asyncio.CancelledError:
            pass  # stop() ended a connection still open after the grace period: expected
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

"""The exporter contract, and an in-memory exporter for tests and embedding.

An exporter delivers one batch and reports how it went; it never retries on
its own. The pipeline calling it owns retries, backoff and drop accounting
(it is the responsibility of the pipeline to handle RETRY and FAILURE).
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Protocol

from sidecar.record import Batch, Record


class ExportResult(Enum):
    SUCCESS = "success"
    RETRY = "retry"  # transient: the same batch may succeed later
    FAILURE = "failure"  # permanent: retrying this batch cannot help


class Exporter(Protocol):
    """What the pipeline needs from an exporter."""

    name: str

    async def start(self) -> None:
        """Open connections or files; raise OSError with a clear message on failure."""

    async def export(self, batch: Batch) -> ExportResult:
        """Deliver ``batch`` (already sanitized); must not raise for delivery errors."""

    async def shutdown(self) -> None:
        """Flush and release resources; safe without ``start`` and when called twice."""


class InMemoryExporter:
    """Keeps every exported record in a list; ``wait_for`` lets tests await arrivals."""

    def __init__(self, name: str = "memory"):
        self.name = name
        self.records: list[Record] = []
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        return None

    async def export(self, batch: Batch) -> ExportResult:
        self.records.extend(batch.records)
        self._arrived.set()
        return ExportResult.SUCCESS

    async def wait_for(self, count: int, timeout: float) -> None:
        """Wait until at least ``count`` records arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.records) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def shutdown(self) -> None:
        return None

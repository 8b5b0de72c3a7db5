"""Receivers -> bounded queue -> stages over batches -> exporters.

Strategy: receivers ``submit`` batches into a queue bounded in *records*. When
it is full, ``submit`` waits (the receiver stops reading and holds its acks)
and gives up with ``PipelineFull`` after the admission timeout, so senders see
backpressure, never a silent drop. One worker coalesces queued batches up to
``max_records`` (waiting at most ``max_delay_ms`` for more), runs the stages
- plain synchronous functions over a batch - in a worker thread so receivers
stay responsive, then hands the batch to every exporter. Exporters report a
result; the pipeline retries ``RETRY`` with capped exponential backoff until
it succeeds or shutdown's grace period ends, and counts every record it drops
with a reason. A stage that raises drops its batch (counted): a half-processed
batch may still hold raw data, so passing it on is never an option.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sidecar.exporters.base import Exporter, ExportResult
from sidecar.record import Batch
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

Submit = Callable[[Batch], Awaitable[None]]


class PipelineFull(Exception):
    """No room in the queue within the admission timeout: the sender should retry later."""


class PipelineClosed(Exception):
    """The pipeline is shutting down and accepts no more batches."""


@dataclass(frozen=True)
class BatchSettings:
    max_records: int = field(
        default=512, metadata={"doc": "Records per processed batch.", "min": 1, "max": 65536})
    max_delay_ms: int = field(
        default=20,
        metadata={"doc": "Longest wait to fill a batch before processing it.", "min": 0,
                  "max": 10_000})


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff_ms: int = field(
        default=100, metadata={"doc": "First wait after a failed export.", "min": 1})
    max_backoff_ms: int = field(
        default=10_000, metadata={"doc": "Longest wait between export attempts.", "min": 1})


@dataclass(frozen=True)
class PipelineSettings:
    batch: BatchSettings = field(
        default_factory=BatchSettings, metadata={"doc": "How records are grouped for processing."})
    max_queued_records: int = field(
        default=50_000,
        metadata={"doc": "Queue bound; beyond it receivers apply backpressure.", "min": 1})
    admission_timeout_seconds: float = field(
        default=5.0,
        metadata={"doc": "How long a sender waits for queue room before it is refused.",
                  "min": 0.0})
    shutdown_grace_seconds: float = field(
        default=10.0,
        metadata={"doc": "Time allowed on SIGTERM to drain queued batches.", "min": 0.0})
    retry: RetrySettings = field(
        default_factory=RetrySettings, metadata={"doc": "Export retry backoff."})


@dataclass(frozen=True)
class Stage:
    """A named processing step: mutates the batch in place."""

    name: str
    process: Callable[[Batch], None]


class Pipeline:
    """Owns the queue, the worker, stage and exporter accounting, and shutdown."""

    def __init__(
        self,
        settings: PipelineSettings,
        stages: Sequence[Stage],
        exporters: Sequence[Exporter],
        telemetry: Telemetry,
    ):
        self._settings = settings
        self._stages = tuple(stages)
        self._exporters = tuple(exporters)
        self._telemetry = telemetry
        self._queue: deque[Batch] = deque()
        self._queued_records = 0
        self._changed: asyncio.Condition | None = None
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self._in_flight = 0  # records taken from the queue and not yet delivered

    @property
    def queued_records(self) -> int:
        return self._queued_records

    async def start(self) -> None:
        """Start exporters, then the worker."""
        self._changed = asyncio.Condition()
        for exporter in self._exporters:
            await exporter.start()
        self._worker = asyncio.create_task(self._run(), name="pipeline-worker")

    async def submit(self, batch: Batch) -> None:
        """Queue ``batch``; return once it is accepted.

        Waits while the queue is full. Raises ``PipelineFull`` if no room
        appears within the admission timeout and ``PipelineClosed`` once
        shutdown has begun. A batch larger than the bound is admitted into an
        empty queue, so no batch size can deadlock.
        """
        assert self._changed is not None, "Pipeline.start() was not awaited"
        size = len(batch)
        bound = self._settings.max_queued_records

        def has_room() -> bool:
            return self._closing or self._queued_records == 0 or (
                self._queued_records + size <= bound)

        async with self._changed:
            if not has_room():
                try:
                    async with asyncio.timeout(self._settings.admission_timeout_seconds):
                        await self._changed.wait_for(has_room)
                except TimeoutError:
                    raise PipelineFull("pipeline queue is full") from None
            if self._closing:
                raise PipelineClosed("pipeline is shutting down")
            self._queue.append(batch)
            self._queued_records += size
            self._telemetry.queue_depth.set(self._queued_records)
            self._changed.notify_all()

    async def stop(self) -> int:
        """Stop accepting, drain within the grace period, shut exporters down.

        Returns the number of records that could not be delivered in time
        (each counted as dropped with reason ``shutdown``).
        """
        if self._changed is None:
            return 0
        self._deadline = time.monotonic() + self._settings.shutdown_grace_seconds
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._worker is not None:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._worker), self._settings.shutdown_grace_seconds)
            except TimeoutError:
                self._worker.cancel()
                try:
                    await self._worker
                except asyncio.CancelledError:
                    pass
        lost = self._queued_records + self._in_flight
        if lost:
            self._telemetry.dropped.labels(reason="shutdown").inc(lost)
            log.error("shutdown grace period ended with %d records undelivered", lost)
        self._queue.clear()
        self._queued_records = 0
        for exporter in self._exporters:
            await exporter.shutdown()
        return lost

    async def _take(self) -> Batch | None:
        """Wait for work and coalesce queued batches into one; None when drained."""
        assert self._changed is not None
        limit = self._settings.batch.max_records
        async with self._changed:
            await self._changed.wait_for(lambda: self._queue or self._closing)
            if not self._queue:
                return None
            if self._queued_records < limit and not self._closing:
                delay = self._settings.batch.max_delay_ms / 1000
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait_for(
                            lambda: self._queued_records >= limit or self._closing)
                except TimeoutError:
                    pass
            records = []
            while self._queue and (not records or len(records) + len(self._queue[0]) <= limit):
                records.extend(self._queue.popleft().records)
            self._queued_records -= len(records)
            self._in_flight = len(records)
            self._telemetry.queue_depth.set(self._queued_records)
            self._changed.notify_all()
        return Batch(records)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self._take()) is not None:
            processed = await loop.run_in_executor(None, self._process, batch)
            if processed and not await self._export(batch):
                return  # shutdown grace ended mid-retry: stop() counts the in-flight records
            self._in_flight = 0

    def _process(self, batch: Batch) -> bool:
        """Run every stage; on an exception drop the batch (counted) and return False."""
        for stage in self._stages:
            self._telemetry.stage_in.labels(stage=stage.name).inc(len(batch))
            try:
                stage.process(batch)
            except Exception as exc:  # any stage bug: never pass raw data on
                self._telemetry.stage_errors.labels(stage=stage.name).inc()
                self._telemetry.dropped.labels(reason="stage_error").inc(len(batch))
                # Only the type: a third-party message may quote record content.
                log.error("stage %s failed (%s); dropped %d records",
                          stage.name, type(exc).__name__, len(batch))
                return False
            self._telemetry.stage_out.labels(stage=stage.name).inc(len(batch))
        return True

    async def _export(self, batch: Batch) -> bool:
        """Deliver to every exporter, retrying transient failures with backoff.

        Returns False only when shutdown's grace period ended before delivery.
        """
        retry = self._settings.retry
        for exporter in self._exporters:
            backoff = retry.initial_backoff_ms / 1000
            while True:
                try:
                    result = await exporter.export(batch)
                except Exception as exc:  # an exporter bug is a failed attempt
                    log.error("exporter %s raised %s", exporter.name, type(exc).__name__)
                    result = ExportResult.RETRY
                if result is ExportResult.SUCCESS:
                    self._telemetry.exported.labels(exporter=exporter.name).inc(len(batch))
                    break
                self._telemetry.export_errors.labels(
                    exporter=exporter.name, kind=result.value).inc()
                if result is ExportResult.FAILURE:
                    self._telemetry.dropped.labels(reason="export_failed").inc(len(batch))
                    break
                if self._deadline is not None and time.monotonic() + backoff > self._deadline:
                    return False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, retry.max_backoff_ms / 1000)
        return True

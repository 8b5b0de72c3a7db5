"""Receivers -> bounded queue -> stages -> spool -> one delivery loop per exporter.

Admission: receivers ``submit`` batches into a queue bounded in *records*.
When it is full, ``submit`` waits (the receiver stops reading and holds its
acks) and gives up with ``PipelineFull`` after the admission timeout, so
senders see backpressure, never a silent drop.

Processing: one worker coalesces queued batches up to ``max_records``
(waiting at most ``max_delay_ms`` for more) and runs the stages - plain
synchronous functions over a batch - in a worker thread so receivers stay
responsive. If a stage raises, each submitted batch is retried alone, so only
the sender whose batch fails is refused (``BatchRejected``, counted): a
half-processed batch may still hold raw data and is never passed on.

Commit point: the processed (sanitized) batch is appended to the spool, and
only then does ``submit`` return, so a sender is acknowledged once its records
are durable. A full spool blocks the append, which fills the queue, which
slows the receivers.

Delivery: each exporter has its own loop reading the spool from its cursor.
``RETRY`` is retried with capped exponential backoff for as long as it takes
(the spool absorbs the backlog); the cursor advances only after ``SUCCESS``
(or a counted permanent ``FAILURE``), so delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from sidecar.exporters.base import Exporter, ExportResult
from sidecar.record import Batch, Record
from sidecar.spool import MemorySpool, Spool, SpoolError
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

class Submit(Protocol):
    def __call__(self, batch: Batch, *, durable: bool = True) -> Awaitable[None]: ...

READ_ENTRIES = 16
APPEND_POLL_SECONDS = 0.5


class PipelineFull(Exception):
    """No room in the queue within the admission timeout: the sender should retry later."""


class PipelineClosed(Exception):
    """The pipeline is shutting down and accepts no more batches."""


class BatchRejected(Exception):
    """This batch could not be processed or made durable; it was not accepted."""


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
        metadata={"doc": "Time allowed on SIGTERM to process and deliver what is held.",
                  "min": 0.0})
    retry: RetrySettings = field(
        default_factory=RetrySettings, metadata={"doc": "Export retry backoff."})
    idle_tick_seconds: float = field(
        default=1.0,
        metadata={"doc": "With no input for this long, stages run on an empty batch (ends idle "
                         "sessions; what they emit is spooled).", "min": 0.01})


@dataclass(frozen=True)
class Stage:
    """A named processing step: mutates the batch in place."""

    name: str
    process: Callable[[Batch], None]


@dataclass
class _Pending:
    batch: Batch
    accepted: asyncio.Future[None] | None  # None: the sender does not wait for durability


def encode(batch: Batch) -> bytes:
    """A processed batch as spool payload.

    Values msgpack cannot carry (integers beyond 64 bits, odd types) become text, so
    one peculiar attribute never stops a batch.
    """
    records = [r.to_dict() for r in batch]
    try:
        return msgpack.packb(records, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return msgpack.packb(_packable(records), use_bin_type=True)


def _packable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _packable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_packable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes, float)):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return str(value)


def decode(payload: bytes) -> Batch:
    return Batch([Record.from_dict(d) for d in msgpack.unpackb(payload, raw=False)])


class Pipeline:
    """Owns the queue, the worker, the delivery loops, their accounting, and shutdown."""

    def __init__(
        self,
        settings: PipelineSettings,
        stages: Sequence[Stage],
        exporters: Sequence[Exporter],
        telemetry: Telemetry,
        spool: Spool | None = None,
    ):
        self._settings = settings
        self._stages = tuple(stages)
        self._exporters = tuple(exporters)
        self._telemetry = telemetry
        self._spool = spool if spool is not None else MemorySpool([e.name for e in exporters])
        self._queue: deque[_Pending] = deque()
        self._queued_records = 0
        self._changed: asyncio.Condition | None = None
        self._spooled: dict[str, asyncio.Event] = {}
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._deliveries: list[asyncio.Task[None]] = []
        self._deadline: float | None = None
        self._export_ok = {e.name: True for e in self._exporters}
        self._expired_counted = 0

    @property
    def queued_records(self) -> int:
        return self._queued_records

    @property
    def spool(self) -> Spool:
        return self._spool

    @property
    def exports_ok(self) -> bool:
        """Whether every exporter's last export attempt succeeded (True before the first)."""
        return all(self._export_ok.values())

    async def start(self) -> None:
        """Start exporters, the worker and the delivery loops."""
        self._changed = asyncio.Condition()
        self._spooled = {e.name: asyncio.Event() for e in self._exporters}
        self._telemetry.spool_torn_bytes.inc(self._spool.torn_bytes)
        for exporter in self._exporters:
            await exporter.start()
        self._worker = asyncio.create_task(self._run(), name="pipeline-worker")
        self._deliveries = [asyncio.create_task(self._deliver(e), name=f"deliver-{e.name}")
                            for e in self._exporters]

    async def submit(self, batch: Batch, *, durable: bool = True) -> None:
        """Queue ``batch`` and return once it is processed and durable in the spool.

        With ``durable=False`` return once it is queued: for senders that get
        no acknowledgement anyway (forward Message mode without ``chunk``),
        so they are not held to one batch per processing round. Waits while
        the queue is full, either way. Raises ``PipelineFull`` if no room
        appears within the admission timeout, ``PipelineClosed`` once shutdown
        has begun, ``BatchRejected`` if the batch failed processing or could
        not be written. A batch larger than the bound is admitted into an
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
            accepted = asyncio.get_running_loop().create_future() if durable else None
            self._queue.append(_Pending(batch, accepted))
            self._queued_records += size
            self._telemetry.queue_depth.set(self._queued_records)
            self._changed.notify_all()
        if accepted is not None:
            started = time.monotonic()
            await accepted
            self._telemetry.ingest_latency.observe(time.monotonic() - started)

    async def stop(self, grace: float | None = None) -> int:
        """Stop accepting; process, spool and deliver what is held within the grace period.

        ``grace`` overrides ``shutdown_grace_seconds`` (the app passes what is left of
        its own shutdown budget).

        Returns the number of records lost: those not yet durable when the
        grace period ended (counted as dropped, reason ``shutdown``). What is
        in a file spool is not lost: the next start delivers it.
        """
        if self._changed is None:
            return 0
        self._deadline = time.monotonic() + (
            self._settings.shutdown_grace_seconds if grace is None else grace)
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
        lost = 0
        if self._worker is not None and not await _finish(self._worker, self._remaining()):
            lost += self._queued_records
            for pending in self._queue:
                _settle(pending.accepted, PipelineClosed("shutdown grace period ended"))
            self._queue.clear()
            self._queued_records = 0
        self._wake_deliveries()
        for task in self._deliveries:
            await _finish(task, self._remaining())
        if isinstance(self._spool, MemorySpool):
            lost += max((sum(len(decode(entry.payload)) for entry in
                             self._spool.read(e.name, sys.maxsize))
                         for e in self._exporters), default=0)
        if lost:
            self._telemetry.dropped.labels(reason="shutdown").inc(lost)
            log.error("shutdown grace period ended with %d records undelivered", lost)
        for exporter in self._exporters:
            await exporter.shutdown()
        self._spool.close()
        return lost

    def _remaining(self) -> float:
        assert self._deadline is not None
        return max(0.0, self._deadline - time.monotonic())

    # ------------------------------------------------------------------ processing

    async def _take(self) -> list[_Pending] | None:
        """Wait for work and take queued batches up to ``max_records``.

        Returns None when drained at shutdown, and an empty list when nothing
        arrived for ``idle_tick_seconds`` (the stages then run on an empty batch).
        """
        assert self._changed is not None
        limit = self._settings.batch.max_records
        async with self._changed:
            try:
                async with asyncio.timeout(self._settings.idle_tick_seconds):
                    await self._changed.wait_for(lambda: self._queue or self._closing)
            except TimeoutError:
                return []
            if not self._queue:
                return None
            if self._queued_records < limit and not self._closing:
                try:
                    async with asyncio.timeout(self._settings.batch.max_delay_ms / 1000):
                        await self._changed.wait_for(
                            lambda: self._queued_records >= limit or self._closing)
                except TimeoutError:
                    pass
            taken: list[_Pending] = []
            count = 0
            while self._queue and (not taken or count + len(self._queue[0].batch) <= limit):
                taken.append(self._queue.popleft())
                count += len(taken[-1].batch)
            self._queued_records -= count
            self._telemetry.queue_depth.set(self._queued_records)
            self._changed.notify_all()
        return taken

    def _wake_deliveries(self) -> None:
        for event in self._spooled.values():
            event.set()

    async def _run(self) -> None:
        while (taken := await self._take()) is not None:
            try:
                outcomes = await asyncio.to_thread(self._process_and_spool, taken)
            except asyncio.CancelledError:
                for pending in taken:
                    _settle(pending.accepted, PipelineClosed("shutdown grace period ended"))
                raise
            except Exception as exc:  # a bug must refuse these senders, not stop the worker
                log.error("processing failed (%s); %d batches refused",
                          type(exc).__name__, len(taken))
                self._telemetry.count_pipeline_error("worker")
                outcomes = [BatchRejected("processing failed")] * len(taken)
            for pending, error in zip(taken, outcomes, strict=True):
                _settle(pending.accepted, error)
            self._wake_deliveries()

    def _process_and_spool(self, taken: list[_Pending]) -> list[Exception | None]:
        """Process the batches (together, or one by one if a stage fails) and spool them.

        An idle tick (nothing taken) runs the stages on an empty batch and spools
        whatever they added to it (e.g. alerts for sessions that went idle).
        """
        merged = Batch([r for p in taken for r in p.batch])
        if not taken:
            if self._process(merged) and merged.records and self._append(merged) is not None:
                self._telemetry.dropped.labels(reason="spool_write").inc(len(merged))
            return []
        if self._process(merged):
            outcomes: list[Exception | None] = [self._append(merged)] * len(taken)
            return outcomes
        if len(taken) == 1:
            return [BatchRejected("processing failed")]
        return [self._append(p.batch) if self._process(p.batch)
                else BatchRejected("processing failed") for p in taken]

    def _process(self, batch: Batch) -> bool:
        """Run every stage; on an exception count it and return False."""
        for stage in self._stages:
            self._telemetry.stage_in.labels(stage=stage.name).inc(len(batch))
            try:
                stage.process(batch)
            except Exception as exc:  # any stage bug: never pass raw data on
                self._telemetry.stage_errors.labels(stage=stage.name).inc()
                # Only the type: a third-party message may quote record content.
                log.error("stage %s failed (%s) on %d records",
                          stage.name, type(exc).__name__, len(batch))
                return False
            self._telemetry.stage_out.labels(stage=stage.name).inc(len(batch))
        return True

    def _append(self, batch: Batch) -> Exception | None:
        """Make the batch durable; waits while the spool is full. None on success.

        Gives up (the senders are refused) on a disk error, or when shutdown begins
        while the spool is still full - a blocked thread would keep the process alive.
        """
        payload = encode(batch)
        try:
            while not self._spool.append(payload, timeout=APPEND_POLL_SECONDS):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._telemetry.dropped.labels(reason="shutdown").inc(len(batch))
                    return PipelineClosed("spool still full when the shutdown grace ended")
        except SpoolError as exc:
            self._telemetry.count_pipeline_error("spool_write")
            log.error("%s", exc)
            return BatchRejected("spool write failed")
        self._telemetry.spool_bytes.set(self._spool.bytes_used)
        return None

    # ------------------------------------------------------------------ delivery

    async def _deliver(self, exporter: Exporter) -> None:
        """Deliver spooled batches to one exporter, in order, until stopped and drained.

        A spool error (e.g. a cursor that cannot be written) is logged, marks the
        exporter as failing for readiness, and is retried after a backoff.
        """
        backoff = self._settings.retry.initial_backoff_ms / 1000
        while True:
            try:
                if await self._deliver_available(exporter):
                    return
                backoff = self._settings.retry.initial_backoff_ms / 1000
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("delivery to %s failed (%s); retrying", exporter.name,
                          type(exc).__name__)
                self._telemetry.count_pipeline_error("delivery")
                self._export_ok[exporter.name] = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.retry.max_backoff_ms / 1000)

    async def _deliver_available(self, exporter: Exporter) -> bool:
        """Deliver what the spool holds for ``exporter``; True when it is time to stop."""
        spooled = self._spooled[exporter.name]
        while True:
            spooled.clear()  # before reading: an append after the read sets it again
            entries = await asyncio.to_thread(self._spool.read, exporter.name, READ_ENTRIES)
            # The first unread entry is the oldest this exporter has not delivered.
            age = (time.time_ns() - entries[0].appended_ns) / 1e9 if entries else 0.0
            self._telemetry.spool_backlog_seconds.labels(exporter=exporter.name).set(age)
            self._count_expired()
            if not entries:
                if self._closing and (self._worker is None or self._worker.done()):
                    return True
                await spooled.wait()
                continue
            for entry in entries:
                batch = decode(entry.payload)
                if not await self._export(exporter, batch):
                    return True
                await asyncio.to_thread(self._spool.commit, exporter.name, entry.end)
                self._telemetry.delivery_latency.labels(exporter=exporter.name).observe(
                    max(0.0, (time.time_ns() - entry.appended_ns) / 1e9))
            self._telemetry.spool_bytes.set(self._spool.bytes_used)

    def _count_expired(self) -> None:
        """Entries the spool skipped for age are drops: count them (entries, not records)."""
        expired = self._spool.expired
        if expired > self._expired_counted:
            self._telemetry.dropped.labels(reason="expired").inc(expired - self._expired_counted)
            self._expired_counted = expired

    async def _export(self, exporter: Exporter, batch: Batch) -> bool:
        """Export one batch, retrying transient failures; False if shutdown's grace ended."""
        retry = self._settings.retry
        backoff = retry.initial_backoff_ms / 1000
        while True:
            try:
                result = await exporter.export(batch)
            except Exception as exc:  # an exporter bug is a failed attempt
                log.error("exporter %s raised %s", exporter.name, type(exc).__name__)
                result = ExportResult.RETRY
            self._export_ok[exporter.name] = result is ExportResult.SUCCESS
            if result is ExportResult.SUCCESS:
                self._telemetry.exported.labels(exporter=exporter.name).inc(len(batch))
                return True
            self._telemetry.export_errors.labels(exporter=exporter.name, kind=result.value).inc()
            if result is ExportResult.FAILURE:
                self._telemetry.dropped.labels(reason="export_failed").inc(len(batch))
                return True
            if self._deadline is not None and self._remaining() < backoff:
                return False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, retry.max_backoff_ms / 1000)


def _settle(future: asyncio.Future[None] | None, error: Exception | None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def _finish(task: asyncio.Task[None], timeout: float) -> bool:
    """Wait up to ``timeout`` for ``task``; cancel it if still running. True if it finished."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
        return True
    except TimeoutError:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return False

"""Pipeline: backpressure, draining on shutdown, retries and error accounting."""

import asyncio

import pytest

from sidecar.exporters.base import ExportResult, InMemoryExporter
from sidecar.pipeline import (
    BatchRejected,
    BatchSettings,
    Pipeline,
    PipelineClosed,
    PipelineFull,
    PipelineSettings,
    RetrySettings,
    Stage,
    encode,
)
from sidecar.record import Batch, Record
from sidecar.spool import MemorySpool
from sidecar.telemetry import Telemetry


def batch_of(n, prefix="r"):
    return Batch([Record(body=f"{prefix}{i}") for i in range(n)])


def settings(**kw):
    base = dict(batch=BatchSettings(max_records=10, max_delay_ms=0), max_queued_records=20,
                admission_timeout_seconds=0.2, shutdown_grace_seconds=2.0,
                retry=RetrySettings(initial_backoff_ms=1, max_backoff_ms=5))
    base.update(kw)
    return PipelineSettings(**base)


def sample(telemetry, name, **labels):
    return telemetry.registry.get_sample_value(name, labels) or 0


class GatedExporter(InMemoryExporter):
    """Blocks every export until the gate opens: a downstream that is stuck."""

    def __init__(self):
        super().__init__("gated")
        self.gate = asyncio.Event()

    async def export(self, batch):
        await self.gate.wait()
        return await super().export(batch)


class FlakyExporter(InMemoryExporter):
    """Fails the first ``failures`` attempts with RETRY."""

    def __init__(self, failures):
        super().__init__("flaky")
        self.failures = failures

    async def export(self, batch):
        if self.failures:
            self.failures -= 1
            return ExportResult.RETRY
        return await super().export(batch)


def test_records_flow_through_stages_to_exporter_in_order():
    async def main():
        telemetry = Telemetry()
        seen = []
        stage = Stage("upper", lambda b: [setattr(r, "body", r.body.upper()) for r in b])
        out = InMemoryExporter()
        pipeline = Pipeline(settings(), [stage, Stage("spy", lambda b: seen.append(len(b)))],
                            [out], telemetry)
        await pipeline.start()
        for i in range(5):
            await pipeline.submit(batch_of(3, prefix=f"b{i}-"))
        await out.wait_for(15, timeout=5)
        assert await pipeline.stop() == 0
        assert [r.body for r in out.records] == [f"B{i}-{j}" for i in range(5) for j in range(3)]
        assert all(n <= 10 for n in seen)  # coalesced up to max_records
        assert sample(telemetry, "logminer_pipeline_records_in_total", stage="upper") == 15
        assert sample(telemetry, "logminer_pipeline_records_out_total", stage="spy") == 15
        assert sample(telemetry, "logminer_exporter_records_total", exporter="memory") == 15
    asyncio.run(main())


def test_full_spool_then_full_queue_block_senders_then_refuse_them():
    async def main():
        telemetry = Telemetry()
        out = GatedExporter()  # downstream stuck: the spool absorbs, then fills
        one_batch = len(encode(batch_of(10)))
        spool = MemorySpool(["gated"], max_bytes=2 * one_batch)
        pipeline = Pipeline(settings(), [], [out], telemetry, spool=spool)
        await pipeline.start()
        senders = [asyncio.create_task(pipeline.submit(batch_of(10))) for _ in range(2)]
        await asyncio.gather(*senders)  # durable in the spool, though not delivered
        assert spool.bytes_used == 2 * one_batch
        blocked = [asyncio.create_task(pipeline.submit(batch_of(10))) for _ in range(3)]
        await asyncio.sleep(0.1)
        # One batch waits in the worker for spool room, two fill the queue (bound 20).
        assert not any(t.done() for t in blocked)
        assert pipeline.queued_records == 20
        assert sample(telemetry, "logminer_pipeline_queue_records") == 20
        with pytest.raises(PipelineFull):
            await pipeline.submit(batch_of(1))
        assert sample(telemetry, "logminer_exporter_records_total", exporter="gated") == 0
        out.gate.set()  # downstream is back: everything drains, nothing was dropped
        await asyncio.gather(*blocked)
        await out.wait_for(50, timeout=5)
        assert await pipeline.stop() == 0
        assert len(out.records) == 50
    asyncio.run(main())


def test_stop_drains_queued_batches_and_then_refuses():
    async def main():
        out = InMemoryExporter()
        pipeline = Pipeline(settings(batch=BatchSettings(max_records=10, max_delay_ms=50)),
                            [Stage("slow", lambda b: __import__("time").sleep(0.01))], [out],
                            Telemetry())
        await pipeline.start()
        for _ in range(4):
            await pipeline.submit(batch_of(5))
        assert await pipeline.stop() == 0
        assert len(out.records) == 20
        with pytest.raises(PipelineClosed):
            await pipeline.submit(batch_of(1))
    asyncio.run(main())


def test_stop_counts_records_it_could_not_deliver_within_grace():
    async def main():
        telemetry = Telemetry()
        out = GatedExporter()  # never opens; the in-memory spool does not survive
        pipeline = Pipeline(settings(shutdown_grace_seconds=0.2), [], [out], telemetry)
        await pipeline.start()
        await pipeline.submit(batch_of(10))
        await pipeline.submit(batch_of(7))
        assert await pipeline.stop() == 17
        assert sample(telemetry, "logminer_pipeline_dropped_records_total",
                      reason="shutdown") == 17
    asyncio.run(main())


def test_failing_stage_refuses_only_the_sender_whose_batch_fails():
    async def main():
        telemetry = Telemetry()

        def explode_on_poison(batch):
            if any(r.body == "poison" for r in batch):
                raise RuntimeError("contains raw text that must not be logged")

        out = InMemoryExporter()
        pipeline = Pipeline(settings(batch=BatchSettings(max_records=10, max_delay_ms=50)),
                            [Stage("check", explode_on_poison)], [out], telemetry)
        await pipeline.start()
        results = await asyncio.gather(
            pipeline.submit(Batch([Record(body="ok1")])),
            pipeline.submit(Batch([Record(body="poison")])),
            pipeline.submit(Batch([Record(body="ok2")])), return_exceptions=True)
        await out.wait_for(2, timeout=5)
        await pipeline.stop()
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], BatchRejected)
        assert "raw" not in str(results[1])
        assert [r.body for r in out.records] == ["ok1", "ok2"]
        assert sample(telemetry, "logminer_pipeline_errors_total", stage="check") == 2
    asyncio.run(main())


def test_transient_export_failures_are_retried_until_delivered():
    async def main():
        telemetry = Telemetry()
        out = FlakyExporter(failures=3)
        pipeline = Pipeline(settings(), [], [out], telemetry)
        await pipeline.start()
        await pipeline.submit(batch_of(4))
        await out.wait_for(4, timeout=5)
        await pipeline.stop()
        assert sample(telemetry, "logminer_exporter_errors_total",
                      exporter="flaky", kind="retry") == 3
        assert sample(telemetry, "logminer_exporter_records_total", exporter="flaky") == 4
    asyncio.run(main())


def test_oversized_batch_is_admitted_into_an_empty_queue():
    async def main():
        out = InMemoryExporter()
        pipeline = Pipeline(settings(), [], [out], Telemetry())
        await pipeline.start()
        await pipeline.submit(batch_of(50))  # bound is 20
        await out.wait_for(50, timeout=5)
        await pipeline.stop()
    asyncio.run(main())


def test_torn_spool_tail_and_expired_entries_are_counted(tmp_path):
    from sidecar.spool import FileSpool, SpoolSettings

    async def main():
        settings = SpoolSettings(max_age_seconds=0.05)
        first = FileSpool(tmp_path, settings, ["memory"])
        first.append(encode(batch_of(2)))
        first.close()
        segment = next(tmp_path.glob("segment-*"))
        with open(segment, "ab") as f:
            f.write(b"\x00\x00\x00\x09torn")
        await asyncio.sleep(0.1)  # the spooled batch is now past max_age
        telemetry = Telemetry()
        out = InMemoryExporter()
        pipeline = Pipeline(PipelineSettings(), [], [out], telemetry,
                            FileSpool(tmp_path, settings, ["memory"]))
        await pipeline.start()
        await pipeline.submit(batch_of(1))
        await out.wait_for(1, timeout=5)
        await pipeline.stop()
        assert sample(telemetry, "logminer_spool_torn_bytes_total") == 8
        assert sample(telemetry, "logminer_pipeline_dropped_records_total", reason="expired") == 1
        assert [r.body for r in out.records] == ["r0"]
    asyncio.run(main())

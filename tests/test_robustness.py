"""Regressions from the core review: odd input, spool errors, shutdown never wedge the sidecar."""

import asyncio
import json
import math
import socket
import subprocess
import sys
import textwrap

import pytest
from support import in_process_app, port_of

from sidecar import config
from sidecar.codecs import lumberjack
from sidecar.exporters.base import ExportResult, InMemoryExporter
from sidecar.exporters.jsonl import encode as jsonl_encode
from sidecar.pipeline import Pipeline, PipelineSettings, RetrySettings
from sidecar.record import Batch, Record
from sidecar.spool import FileSpool, SpoolSettings
from sidecar.telemetry import Telemetry


def send_window(port, events):
    client = lumberjack.ClientConnection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client.send_window(events))
        while True:
            event = client.next_event()
            if event is lumberjack.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif event.seq == len(events):
                return event.seq


def test_out_of_range_time_and_huge_integers_flow_through(tmp_path):
    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            port = port_of(app, "lumberjack")
            events = [{"@timestamp": "0001-01-01T00:00:00Z", "message": "ancient"},
                      {"message": "huge", "n": 2**70}]
            assert await asyncio.to_thread(send_window, port, events) == 2
            assert await asyncio.to_thread(send_window, port, [{"message": "next"}]) == 1
            await app.memory.wait_for(3, timeout=10)
        finally:
            await app.stop()
        ancient, huge, _ = app.memory.records
        assert ancient.time_ns > 1_700_000_000 * 10**9  # replaced by the receive time
        assert huge.attributes["n"] == str(2**70)
    asyncio.run(main())


class FlakyCommitSpool(FileSpool):
    """A spool whose first cursor write fails (a full disk, say)."""

    failures = 1

    def commit(self, consumer, position):
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().commit(consumer, position)


def test_a_failing_cursor_write_does_not_stop_delivery(tmp_path):
    async def main():
        out = InMemoryExporter()
        telemetry = Telemetry()
        settings = PipelineSettings(retry=RetrySettings(initial_backoff_ms=10))
        pipeline = Pipeline(settings, [], [out], telemetry,
                            FlakyCommitSpool(tmp_path, SpoolSettings(), [out.name]))
        await pipeline.start()
        await pipeline.submit(Batch([Record(body="first")]))
        await out.wait_for(2, timeout=10)  # redelivered after the failed commit
        await pipeline.submit(Batch([Record(body="second")]))
        await out.wait_for(3, timeout=10)
        assert await pipeline.stop() == 0
        assert [r.body for r in out.records] == ["first", "first", "second"]
        assert telemetry.registry.get_sample_value(
            "logminer_pipeline_failures_total", {"kind": "delivery"}) == 1
    asyncio.run(main())


def test_shutdown_with_a_full_spool_and_a_dead_downstream_returns():
    script = textwrap.dedent("""
        import asyncio
        from sidecar.exporters.base import ExportResult, InMemoryExporter
        from sidecar.pipeline import Pipeline, PipelineSettings, encode
        from sidecar.record import Batch, Record
        from sidecar.spool import MemorySpool
        from sidecar.telemetry import Telemetry

        class Dead(InMemoryExporter):
            async def export(self, batch):
                return ExportResult.RETRY

        async def main():
            one = len(encode(Batch([Record(body="x")])))
            pipeline = Pipeline(PipelineSettings(shutdown_grace_seconds=0.5), [], [Dead()],
                                Telemetry(), MemorySpool(["memory"], max_bytes=one))
            await pipeline.start()
            for _ in range(3):
                await pipeline.submit(Batch([Record(body="x")]), durable=False)
            await asyncio.sleep(0.2)
            print("lost", await pipeline.stop())

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lost 3"


def test_spool_bound_must_leave_room_beyond_the_tail_segment():
    with pytest.raises(config.ConfigError, match="spool: max_bytes must be at least twice"):
        config.loads("spool: {max_bytes: 1048576, segment_bytes: 1048576}")


def test_an_unreadable_cursor_means_redelivery_not_refusal(tmp_path):
    spool = FileSpool(tmp_path, SpoolSettings(), ["out"])
    spool.append(b"a")
    spool.commit("out", spool.read("out", 1)[0].end)
    spool.close()
    (tmp_path / "cursor-out").write_text("")  # what a power loss can leave
    reopened = FileSpool(tmp_path, SpoolSettings(), ["out"])
    assert [e.payload for e in reopened.read("out", 10)] == [b"a"]


def test_json_lines_stay_valid_json_with_nan_and_infinity():
    record = Record(body="x", attributes={"ratio": math.inf, "nested": [math.nan, 1.5]})
    record.score = math.nan
    line = jsonl_encode(Batch([record])).decode()
    document = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert document["score"] is None
    assert document["attributes"] == {"ratio": None, "nested": [None, 1.5]}


def test_forward_exporter_clamps_times_outside_event_time(tmp_path):
    from sidecar.exporters.forward import ForwardAckExporter, ForwardExporterSettings

    async def main():
        downstream = in_process_app(tmp_path / "agg")
        await downstream.start()
        exporter = ForwardAckExporter(ForwardExporterSettings(port=port_of(downstream,
                                                                          "forward")))
        try:
            result = await exporter.export(Batch([Record(body="old", time_ns=-10**9),
                                                  Record(body="far", time_ns=2**62)]))
            await downstream.memory.wait_for(2, timeout=10)
        finally:
            await exporter.shutdown()
            await downstream.stop()
        assert result is ExportResult.SUCCESS
        old, far = downstream.memory.records
        assert old.time_ns > 1_700_000_000 * 10**9  # sent as 0, which means "now" downstream
        assert far.time_ns == (2**32 - 1) * 10**9
    asyncio.run(main())

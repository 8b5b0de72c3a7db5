"""Forward exporter against a real forward receiver (a second sidecar acting as aggregator)."""

import asyncio

from support import TINY_BUNDLE, in_process_app, port_of

from sidecar import config
from sidecar.app import App
from sidecar.exporters.forward import (
    FluentLoggerExporter,
    ForwardAckExporter,
    ForwardExporterSettings,
)
from sidecar.pipeline import Pipeline
from sidecar.record import Batch, Flag, Record
from sidecar.spool import FileSpool, SpoolSettings
from sidecar.telemetry import Telemetry

AGGREGATOR = """
receivers:
  forward: {port: PORT, require_shared_key: SHARED}
  otlp: {enabled: false}
  grpc: {enabled: false}
  lumberjack: {enabled: false}
http: {enabled: false}
pipeline:
  batch: {max_delay_ms: 1}
scoring: {model_dir: TINY}
""".replace("TINY", str(TINY_BUNDLE))


def aggregator(tmp_path, port=0, shared_key=None):
    text = AGGREGATOR.replace("PORT", str(port)).replace("SHARED", str(bool(shared_key)).lower())
    return in_process_app(tmp_path / f"aggregator-{port}", text, forward_shared_key=shared_key)


def records(n, tag="app"):
    out = []
    for i in range(n):
        r = Record(body=f"payment <CARD:ab12:00ff00ff00ff00ff> #{i}", tag=tag,
                   time_ns=1_700_000_000_000_000_000 + i, attributes={"i": i})
        r.template_id, r.template, r.session, r.score = 7, "payment <CARD> <*>", "s1", 0.25
        r.flags.add(Flag.ANOMALY)
        r.redactions["CARD"] = 1
        out.append(r)
    return out


def test_ack_mode_delivers_records_with_verdicts(tmp_path):
    async def main():
        downstream = aggregator(tmp_path)
        await downstream.start()
        settings = ForwardExporterSettings(port=port_of(downstream, "forward"),
                                           tag_prefix="sanitized.")
        exporter = ForwardAckExporter(settings)
        try:
            await exporter.start()
            assert (await exporter.export(Batch(records(30) + records(5, tag="other")))).value \
                == "success"
            await downstream.memory.wait_for(35, timeout=10)
        finally:
            await exporter.shutdown()
            await downstream.stop()
        got = downstream.memory.records
        assert sorted({r.tag for r in got}) == ["sanitized.app", "sanitized.other"]
        first = next(r for r in got if r.attributes["i"] == 0 and r.tag == "sanitized.app")
        assert first.body == "payment <CARD:ab12:00ff00ff00ff00ff> #0"
        assert first.time_ns == 1_700_000_000_000_000_000
        assert first.attributes["logminer"] == {
            "template_id": 7, "template": "payment <CARD> <*>", "session": "s1", "score": 0.25,
            "flags": ["anomaly"], "redactions": {"CARD": 1}}
    asyncio.run(main())


def test_downstream_down_then_back_loses_nothing_and_the_backlog_drains(tmp_path):
    async def main():
        probe = aggregator(tmp_path)  # find a free port, then free it: downstream is "down"
        await probe.start()
        port = port_of(probe, "forward")
        await probe.stop()
        telemetry = Telemetry()
        exporter = ForwardAckExporter(ForwardExporterSettings(port=port))
        spool = FileSpool(tmp_path / "spool", SpoolSettings(), [exporter.name])
        settings = config.loads("pipeline: {retry: {initial_backoff_ms: 20, "
                                "max_backoff_ms: 100}, batch: {max_delay_ms: 1}}").pipeline
        pipeline = Pipeline(settings, [], [exporter], telemetry, spool)
        await pipeline.start()
        for i in range(10):
            await pipeline.submit(Batch(records(10, tag=f"t{i}")))  # durable while down
        await asyncio.sleep(0.3)
        backlog = telemetry.registry.get_sample_value(
            "logminer_spool_backlog_age_seconds", {"exporter": exporter.name})
        assert backlog > 0
        assert telemetry.registry.get_sample_value(
            "logminer_exporter_errors_total", {"exporter": exporter.name, "kind": "retry"}) >= 1
        downstream = aggregator(tmp_path, port=port)
        await downstream.start()
        try:
            await downstream.memory.wait_for(100, timeout=20)
            await asyncio.sleep(0.3)
            assert telemetry.registry.get_sample_value(
                "logminer_spool_backlog_age_seconds", {"exporter": exporter.name}) == 0
        finally:
            await pipeline.stop()
            await downstream.stop()
        assert sorted(r.tag for r in downstream.memory.records) == sorted(
            f"t{i}" for i in range(10) for _ in range(10))
    asyncio.run(main())


def test_shared_key_and_tls_to_the_aggregator(tmp_path, certs):
    text = AGGREGATOR.replace("PORT", "0").replace("SHARED", "true").replace(
        "require_shared_key: true}",
        f"require_shared_key: true, tls: {{cert_file: {certs / 'server.crt'}, "
        f"key_file: {certs / 'server.key'}}}}}")

    async def main():
        downstream = in_process_app(tmp_path / "agg", text, forward_shared_key=b"k" * 20)
        await downstream.start()
        settings = config.from_mapping({"exporters": [{
            "type": "forward", "port": port_of(downstream, "forward"), "use_shared_key": True,
            "tls": {"enabled": True, "ca_file": str(certs / "ca.crt")}}]}).exporters[0]
        right = ForwardAckExporter(settings, shared_key=b"k" * 20)
        wrong = ForwardAckExporter(settings, shared_key=b"x" * 20)
        try:
            assert (await right.export(Batch(records(3)))).value == "success"
            assert (await wrong.export(Batch(records(3)))).value == "retry"
            await downstream.memory.wait_for(3, timeout=10)
        finally:
            await right.shutdown()
            await wrong.shutdown()
            await downstream.stop()
        assert len(downstream.memory.records) == 3
    asyncio.run(main())


def test_fluent_logger_mode_delivers_at_most_once(tmp_path):
    async def main():
        downstream = aggregator(tmp_path)
        await downstream.start()
        exporter = FluentLoggerExporter(ForwardExporterSettings(
            port=port_of(downstream, "forward"), mode="fluent-logger"))
        try:
            await exporter.start()
            assert (await exporter.export(Batch(records(20)))).value == "success"
            await downstream.memory.wait_for(20, timeout=10)
        finally:
            await exporter.shutdown()
            await downstream.stop()
        assert [r.attributes["i"] for r in downstream.memory.records] == list(range(20))
    asyncio.run(main())


def test_app_builds_forward_exporters_from_config(tmp_path):
    cfg = config.loads(f"data_dir: {tmp_path}\nexporters:\n  - type: forward\n    port: 24299\n"
                       "  - type: forward\n    port: 24298\n    mode: fluent-logger\n"
                       f"scoring: {{model_dir: {TINY_BUNDLE}}}\n")
    app = App(cfg, config.Secrets(hash_secret=b"s" * 32))
    assert [type(e).__name__ for e in app.pipeline._exporters] == [
        "ForwardAckExporter", "FluentLoggerExporter"]

"""A real Prometheus scrapes `logminer serve`; every operations metric is read back through
Prometheus's HTTP API and checked against what the sidecar actually wrote out.

Records go in through real clients - fluent-logger (a bank-log corpus with planted personal
data and secrets, and HDFS lines in more block sessions than the session table holds) and
the OpenTelemetry SDK's OTLP exporter (acknowledged requests, so ingest latency is
observed) - and come out as JSON lines, whose flags and redaction counts are the expected
values. Finally no label value Prometheus holds may contain a planted value or a token.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from fluent import sender
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from support import ALL_PORTS_FREE, TINY_BUNDLE
from support_prometheus import Prometheus

from sidecar.redact import TOKEN_PATTERN, corpus

MAX_SESSIONS = 3
BLOCKS = 8
OTLP_RECORDS = 5


@pytest.fixture
def prometheus_factory(tmp_path: Path):
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus-{len(started)}", [target])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def hdfs_lines() -> list[str]:
    """DataNode lines for ``BLOCKS`` blocks, interleaved, in shapes the tiny bundle knows."""
    lines = []
    for step in ("Receiving block blk_{b} src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
                 "PacketResponder 1 for block blk_{b} terminating",
                 "Received block blk_{b} of size 67108864 from /10.250.19.102"):
        lines.extend(step.format(b=-1608999687919862906 + b) for b in range(BLOCKS))
    return lines


def send_otlp(port: int, bodies: list[str]) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": "payments"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10)))
    logger = provider.get_logger("payments.api")
    for body in bodies:  # one acknowledged Export call each
        logger.emit(body=body)
    provider.shutdown()


def test_prometheus_reads_back_every_operations_metric(sidecar_factory, prometheus_factory,
                                                        tmp_path):
    out_file = tmp_path / "records.jsonl"
    config = ALL_PORTS_FREE.replace("scoring: {", f"scoring: {{max_sessions: {MAX_SESSIONS}, ")
    sidecar = sidecar_factory(config + f"exporters:\n  - type: file\n    path: {out_file}\n")
    prometheus = prometheus_factory(f"127.0.0.1:{sidecar.ports['http']}")

    bank = corpus.generate(120, seed=21)
    otlp = corpus.generate(OTLP_RECORDS, seed=22)
    planted = {p.value for line in bank + otlp for p in line.planted}
    fluent = sender.FluentSender("bank", host="127.0.0.1", port=sidecar.ports["forward"])
    for line in bank:
        assert fluent.emit("app", {"message": line.text, "note": line.text})
    fluent.close()
    fluent = sender.FluentSender("hdfs", host="127.0.0.1", port=sidecar.ports["forward"])
    for text in hdfs_lines():
        assert fluent.emit("datanode", {"message": text})
    fluent.close()
    send_otlp(sidecar.ports["otlp"], [line.text for line in otlp])
    sent = len(bank) + len(hdfs_lines()) + OTLP_RECORDS

    # Scraped once everything was delivered and the spool backlog reads empty.
    prometheus.wait_for("sum(logminer_exporter_records_total)",
                        lambda r: bool(r) and float(r[0]["value"][1]) == sent)
    prometheus.wait_for("max(logminer_spool_backlog_age_seconds)",
                        lambda r: bool(r) and float(r[0]["value"][1]) == 0)
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == sent

    assert prometheus.values("logminer_receiver_records_total", "receiver", "tag") == {
        ("forward", "bank.app"): len(bank), ("forward", "hdfs.datanode"): len(hdfs_lines()),
        ("otlp", "payments"): OTLP_RECORDS}
    assert prometheus.values("logminer_exporter_records_total", "exporter") == {
        (f"file:{out_file}",): sent}

    redactions = sum((Counter(r["redactions"]) for r in records), Counter())
    assert len(redactions) > 5
    assert prometheus.values("logminer_redaction_values_total", "detector") == {
        (detector,): n for detector, n in redactions.items()}

    flagged = sum("anomaly" in r["flags"] for r in records)
    unseen = sum("unseen_template" in r["flags"] for r in records)
    assert 0 < flagged < sent and 0 < unseen < sent
    assert prometheus.value('logminer_scoring_anomalies_total{kind="record"}') == flagged
    assert prometheus.value("logminer_scoring_unseen_templates_total") == unseen
    assert prometheus.value("logminer_scoring_records_total") == sent

    for histogram in ("logminer_scoring_batch_seconds", "logminer_pipeline_ingest_latency_seconds",
                      "logminer_exporter_delivery_latency_seconds"):
        p99 = prometheus.value(f"histogram_quantile(0.99, sum by (le) ({histogram}_bucket))")
        assert p99 is not None and 0 < p99 < math.inf, histogram
    assert prometheus.value("logminer_pipeline_ingest_latency_seconds_count") == OTLP_RECORDS
    assert prometheus.value("sum(logminer_exporter_delivery_latency_seconds_count)") >= 1
    assert prometheus.value("logminer_scoring_batch_seconds_count") >= 1

    assert prometheus.value("logminer_pipeline_queue_records") == 0
    data_dir = Path(sidecar.proc.args[-1]).parent / "data-0"
    on_disk = sum(p.stat().st_size for p in (data_dir / "spool").glob("segment-*.spool"))
    assert prometheus.value("logminer_spool_bytes") == on_disk > 0
    assert prometheus.values("logminer_spool_backlog_age_seconds", "exporter") == {
        (f"file:{out_file}",): 0.0}

    # Sessions: one stream each for the bank and OTLP records, one per HDFS block.
    assert prometheus.value("logminer_scoring_sessions_live") == MAX_SESSIONS
    evicted = prometheus.values("logminer_scoring_sessions_evicted_total", "reason")
    assert evicted[("lru",)] >= BLOCKS + 2 - MAX_SESSIONS

    [model] = prometheus.series('logminer_scoring_model_info{role="live"}')
    card = json.loads((TINY_BUNDLE / "card.json").read_text())
    assert (model["name"], model["version"], model["sha256"]) == (
        card["name"], str(card["version"]), card["sha256"]["model.tflite"])
    assert prometheus.value('logminer_scoring_model_load_seconds{role="live"}') > 0
    assert prometheus.value('logminer_scoring_model_loads_total{role="live",result="loaded"}') == 1

    # No label value anywhere in Prometheus carries a planted value or a keyed token.
    assert prometheus.series('{__name__=~"logminer_.+"}')
    pairs = list(prometheus.label_values())
    assert ("tag", "bank.app") in pairs
    leaks = [(name, value) for name, value in pairs
             if TOKEN_PATTERN.search(value) or any(p in value for p in planted)]
    assert not leaks

    code, _, stderr = sidecar.stop()
    assert code == 0, stderr

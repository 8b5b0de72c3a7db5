"""Invariant 1: raw values never leave the redactor.

Runs `logminer serve` as a user would, sends planted personal data and secrets
through the real fluent-logger client (plus a malformed frame and a bad OTLP
request that carry planted values), scrapes /metrics, stops the sidecar, and
then scans everything it wrote - records out, its own logs, metrics, spool
segments, the template table - for any planted value.
"""

import socket
import urllib.request
from pathlib import Path

import grpc
from fluent import sender
from support import ALL_PORTS_FREE

from sidecar.redact import corpus


def planted_corpus(n=300, seed=11):
    lines = corpus.generate(n, seed)
    values = {p.value for line in lines for p in line.planted}
    return [line.text for line in lines], values


def test_no_planted_value_reaches_output_logs_metrics_spool_or_templates(sidecar_factory, tmp_path):
    texts, values = planted_corpus()
    out_file = tmp_path / "records.jsonl"
    sidecar = sidecar_factory(ALL_PORTS_FREE + "logging: {level: debug}\nexporters:\n"
                              f"  - type: stdout\n  - type: file\n    path: {out_file}\n")
    fluent = sender.FluentSender("bank", port=sidecar.ports["forward"])
    for i, text in enumerate(texts):
        assert fluent.emit("app", {"message": text, "seq": i, "previous": texts[i - 1]})
    fluent.close()
    # Bad input carrying planted values: a malformed forward frame and a garbage gRPC request.
    secret_value = sorted(values)[0]
    with socket.create_connection(("127.0.0.1", sidecar.ports["forward"])) as raw:
        raw.sendall(b"\x93\xa3tag" + secret_value.encode() + b"\xc1")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports['otlp']}") as channel:
        call = channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"\x0a\xff" + secret_value.encode(), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert secret_value not in (exc.details() or "")
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{sidecar.ports['http']}/metrics", timeout=10).read().decode()

    code, stdout, stderr = sidecar.stop()
    assert code == 0, stderr
    assert len(stdout.splitlines()) == len(texts)  # every record came out
    data_dir = Path(sidecar.proc.args[-1]).parent / "data-0"
    places = {"stdout": stdout, "stderr (the sidecar's own logs)": stderr, "metrics": metrics,
              "file exporter": out_file.read_text()}
    for path in data_dir.rglob("*"):
        if path.is_file():
            places[str(path.relative_to(data_dir))] = path.read_bytes().decode("utf-8", "replace")
    assert any("spool" in name for name in places) and "templates.json" in places
    leaks = {(value, where) for value in values for where, text in places.items()
             if value in text}
    assert not leaks


def test_a_tag_holding_personal_data_is_redacted_in_labels_and_downstream(tmp_path):
    import asyncio

    from support import in_process_app

    from sidecar.record import Batch, Record

    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            batch = Batch([Record(body="hello", tag="user.jane.doe@example.com.x")])
            app.telemetry.count_received("forward", batch)
            await app.pipeline.submit(batch)
            await app.memory.wait_for(1, timeout=10)
        finally:
            await app.stop()
        from prometheus_client import generate_latest
        metrics = generate_latest(app.telemetry.registry).decode()
        assert "jane.doe@example.com" not in metrics
        assert 'tag="redacted"' in metrics
        tag = app.memory.records[0].tag
        assert "jane.doe@example.com" not in tag and tag.startswith("<EMAIL:")

    asyncio.run(main())

"""SIEM exporter against a real rsyslogd: RFC 5424 over TCP, CEF over TLS, reconnects.

rsyslog parses each message (octet-counted framing, RFC 5424 header and
STRUCTURED-DATA) and writes it back out whole; the tests parse those lines
independently of the exporter's code and check that only metadata arrived.
"""

import asyncio
import os
import re

import pytest
from support import TEST_HASH_SECRET, TINY_BUNDLE
from support_rsyslog import Rsyslog, free_port

from sidecar import __version__, config
from sidecar.app import App
from sidecar.exporters.base import ExportResult
from sidecar.exporters.siem import (
    SiemExporterSettings,
    SyslogExporter,
    cef_value_escape,
    octet_counted,
    sd_escape,
)
from sidecar.record import Batch, Flag, Record
from sidecar.scoring.scorer import SessionAlert
from sidecar.stages import alert_record
from sidecar.tls import ClientTlsSettings

BODY_MARKER = "body-marker-never-exported"
ATTR_MARKER = "attr-marker-never-exported"
TEMPLATE = 'payment "<*>" by <EMAIL> key=a|b \\ path ] end'
SESSION = "<CUSTOMER:ab12:00ff00ff00ff00ff>"


def sample_batch() -> Batch:
    """Three plain records, one anomalous record and one session-end alert record."""
    records = []
    for i in range(4):
        r = Record(body=f"{BODY_MARKER} <EMAIL:ab12:{i:016x}> paid", tag="app",
                   time_ns=1_700_000_000_000_000_000 + i * 1_000_000,
                   attributes={"note": ATTR_MARKER})
        r.redactions.update({"EMAIL": 2, "CARD": 1})
        r.template_id, r.template, r.session, r.score = 3, "<EMAIL> paid", SESSION, 0.5
        records.append(r)
    odd = records[3]
    odd.template_id, odd.template, odd.score = 7, TEMPLATE, 4.25
    odd.flags.add(Flag.ANOMALY)
    records.append(alert_record(SessionAlert(SESSION, "idle", 9.5, "tiny", 2, "<EMAIL> paid")))
    return Batch(records)


def parse_syslog(line: str) -> tuple[list[str], dict[str, dict[str, str]], str]:
    """An RFC 5424 line -> (header fields, {SD-ID: {name: unescaped value}}, MSG)."""
    header = line.split(" ", 6)
    rest, sd = header.pop(), {}
    if rest.startswith("-"):
        return header, sd, rest[2:]
    while rest.startswith("["):
        element = re.match(r'\[(\S+)((?: [^=\s]+="(?:\\.|[^"\\])*")*)\]', rest)
        assert element, f"bad STRUCTURED-DATA: {rest!r}"
        sd[element.group(1)] = {k: re.sub(r"\\(.)", r"\1", v) for k, v in re.findall(
            r' ([^=\s]+)="((?:\\.|[^"\\])*)"', element.group(2))}
        rest = rest[element.end():]
    return header, sd, rest.removeprefix(" ")


def parse_cef(msg: str) -> tuple[list[str], dict[str, str]]:
    """A CEF:0 event -> (the seven header fields unescaped, {extension key: unescaped value})."""
    assert msg.startswith("CEF:0|"), msg
    fields = re.findall(r"((?:\\.|[^\\|])*)\|", msg[len("CEF:0|"):])[:6]
    ext_text = msg[len("CEF:0|") + sum(len(f) + 1 for f in fields):]
    unescape = {"n": "\n", "r": "\r"}
    ext = {k: re.sub(r"\\(.)", lambda m: unescape.get(m.group(1), m.group(1)), v)
           for k, v in re.findall(r"(\w+)=((?:\\.|[^\\])*?)(?= \w+=|$)", ext_text)}
    return [re.sub(r"\\(.)", r"\1", f) for f in fields], ext


def assert_metadata_only(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert lines and BODY_MARKER not in text and ATTR_MARKER not in text
    assert "ended early after" not in text  # the alert record's body
    assert "<EMAIL:ab12" not in text  # tokens from bodies; templates carry <EMAIL> only


def export(exporter: SyslogExporter, *batches: Batch) -> list[ExportResult]:
    async def main():
        try:
            return [await exporter.export(b) for b in batches]
        finally:
            await exporter.shutdown()
    return asyncio.run(main())


@pytest.fixture
def rsyslog(tmp_path):
    server = Rsyslog(tmp_path / "rsyslog")
    yield server
    server.stop()


def test_rfc5424_over_tcp_carries_counts_and_alerts_only(rsyslog):
    settings = SiemExporterSettings(port=rsyslog.port, transport="tcp", hostname="node-1",
                                    enterprise_id=32473)
    exporter = SyslogExporter(settings, model=lambda: ("hdfs", 3))
    assert export(exporter, sample_batch()) == [ExportResult.SUCCESS]
    lines = rsyslog.wait_for(3)
    assert len(lines) == 3
    assert_metadata_only(lines)
    (summary_head, summary_sd, summary_msg), (odd_head, odd_sd, _), (end_head, end_sd, _) = \
        map(parse_syslog, lines)
    assert summary_head[0] == "<110>1"  # facility 13 (log audit), severity 6
    assert summary_head[2:] == ["node-1", "logminer", str(os.getpid()), "batch"]
    assert summary_sd == {
        "logminer@32473": {"records": "4", "anomalies": "1", "session_ends": "1",
                           "redactions": "12"},
        "redactions@32473": {"CARD": "4", "EMAIL": "8"}}
    assert summary_msg == "\ufeffsanitized batch: 4 records, 1 anomalies, 1 session ends, " \
                          "12 redactions"
    assert odd_head[0] == "<108>1" and odd_head[1] == "2023-11-14T22:13:20.003000Z"
    assert odd_head[5] == "anomaly"
    assert odd_sd == {"anomaly@32473": {
        "kind": "record", "tag": "app", "template_id": "7", "template": TEMPLATE,
        "session": SESSION, "score": "4.25", "model": "hdfs", "model_version": "3"}}
    assert end_head[5] == "session-end"
    assert end_sd == {"anomaly@32473": {
        "kind": "session_end", "tag": "logminer.alert", "template": "<EMAIL> paid",
        "session": SESSION, "score": "9.5", "model": "tiny", "model_version": "2",
        "reason": "idle"}}


def test_cef_over_tls_escapes_header_and_extension(tmp_path, certs):
    server = Rsyslog(tmp_path / "rsyslog-tls", certs=certs)
    try:
        settings = SiemExporterSettings(
            port=server.port, transport="tls", format="cef",
            tls=ClientTlsSettings(ca_file=str(certs / "ca.crt")))
        assert export(SyslogExporter(settings), sample_batch()) == [ExportResult.SUCCESS]
        lines = server.wait_for(3)
    finally:
        server.stop()
    assert_metadata_only(lines)
    (_, sd, summary), (_, _, odd), (_, _, end) = map(parse_syslog, lines)
    assert sd == {}
    header, ext = parse_cef(summary)
    assert header == ["LogMiner", "Sidecar", __version__, "batch", "Sanitized batch", "1"]
    assert ext["cnt"] == "4" and ext["cs1"] == "CARD:4,EMAIL:8"
    assert (ext["cn1Label"], ext["cn1"], ext["cn3Label"], ext["cn3"]) == \
        ("anomalies", "1", "redactions", "12")
    header, ext = parse_cef(odd)
    assert header[3:] == ["anomaly", "Anomalous log record", "5"]
    assert ext["cs1Label"] == "template" and ext["cs1"] == TEMPLATE
    assert (ext["cn1"], ext["cs2"], ext["cfp1"]) == ("7", SESSION, "4.25")
    assert ext["rt"] == "1700000000003" and "cs3" not in ext  # no model known for it
    header, ext = parse_cef(end)
    assert header[3] == "session-end"
    assert (ext["cs3"], ext["cn2"], ext["cs5"]) == ("tiny", "2", "idle")


def test_down_gives_retry_and_a_restarted_receiver_gets_the_next_batches(tmp_path):
    port = free_port()
    settings = SiemExporterSettings(port=port, transport="tcp", connect_timeout_seconds=5)

    async def main():
        exporter = SyslogExporter(settings)
        servers = []
        try:
            assert await exporter.export(sample_batch()) is ExportResult.RETRY
            servers.append(await asyncio.to_thread(Rsyslog, tmp_path / "first", port=port))
            assert await exporter.export(sample_batch()) is ExportResult.SUCCESS
            await asyncio.to_thread(servers[0].wait_for, 3)
            servers[0].stop()  # the SIEM goes away between batches and comes back
            servers.append(await asyncio.to_thread(Rsyslog, tmp_path / "second", port=port))
            results = [await exporter.export(sample_batch()) for _ in range(2)]
            return results, servers[0].lines(), await asyncio.to_thread(servers[1].wait_for, 6)
        finally:
            await exporter.shutdown()
            for server in servers:
                server.stop()

    results, first, second = asyncio.run(main())
    assert results == [ExportResult.SUCCESS] * 2
    assert len(first) == 3 and len(second) == 6
    assert [parse_syslog(line)[0][5] for line in second] == ["batch", "anomaly",
                                                              "session-end"] * 2


def test_pipeline_to_rsyslog_sends_counts_of_real_redactions_not_values(tmp_path, rsyslog):
    cfg = config.loads(f"""
data_dir: {tmp_path / "data"}
receivers: {{forward: {{enabled: false}}, otlp: {{enabled: false}}, grpc: {{enabled: false}},
            lumberjack: {{enabled: false}}}}
http: {{enabled: false}}
pipeline: {{batch: {{max_delay_ms: 1}}}}
scoring: {{model_dir: {TINY_BUNDLE}}}
""")
    exporter = SyslogExporter(SiemExporterSettings(port=rsyslog.port, transport="tcp"))
    app = App(cfg, config.Secrets(hash_secret=TEST_HASH_SECRET.encode()), exporters=[exporter])

    async def main():
        await app.start()
        try:
            await app.pipeline.submit(Batch([Record(
                body="refund to jane.roe@example.org approved", tag="app",
                attributes={"contact": "jane.roe@example.org"})]))
            await asyncio.to_thread(rsyslog.wait_for, 1)
        finally:
            await app.stop()

    asyncio.run(main())
    _, sd, _ = parse_syslog(rsyslog.lines()[0])
    counts = sd["logminer@32473"]
    assert counts["records"] == "1" and sd["redactions@32473"] == {"EMAIL": "2"}
    lines = rsyslog.wait_for(1 + int(counts["anomalies"]) + int(counts["session_ends"]))
    assert "jane.roe" not in "\n".join(lines)
    assert all(parse_syslog(line)[1]["anomaly@32473"]["template"] == "refund to <EMAIL> approved"
               for line in lines[1:])


def test_escaping_and_framing_rules():
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert cef_value_escape("a=b\\c\nd|e") == "a\\=b\\\\c\\nd|e"
    assert octet_counted("é".encode()) == b"2 \xc3\xa9"


def test_settings_defaults_and_checks():
    assert SiemExporterSettings().name == "syslog:127.0.0.1:6514"
    assert SiemExporterSettings(transport="tcp").target_port == 601
    with pytest.raises(ValueError, match="transport is tcp"):
        SiemExporterSettings(transport="tcp", tls=ClientTlsSettings(enabled=True))

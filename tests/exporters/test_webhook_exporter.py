"""Webhook exporter against a real local HTTP(S) server that records every request."""

import asyncio
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support_rsyslog import free_port

from sidecar.exporters.base import ExportResult
from sidecar.exporters.webhook import WebhookExporter, WebhookExporterSettings
from sidecar.record import Batch, Flag, Record
from sidecar.scoring.scorer import SessionAlert
from sidecar.stages import alert_record
from sidecar.tls import ClientTlsSettings

TOKEN = b"tok-123._~+/abc=="
BODY_MARKER = "body-marker-never-posted"
ATTR_MARKER = "attr-marker-never-posted"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class Recorder(ThreadingHTTPServer):
    """Answers each POST with the next of ``statuses`` (then 200) and records it."""

    def __init__(self, context: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []

    def payloads(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.requests]


def serve(context: ssl.SSLContext | None = None):
    server = Recorder(context)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def server():
    recorder, thread = serve()
    yield recorder
    recorder.shutdown()
    thread.join(timeout=10)
    recorder.server_close()


def anomalies(n: int, with_alert: bool = False) -> Batch:
    """``n`` anomalous records plus one clean record (and a session-end alert record)."""
    records = []
    for i in range(n + 1):
        r = Record(body=f"{BODY_MARKER} #{i}", tag="app", attributes={"a": ATTR_MARKER},
                   time_ns=1_700_000_000_000_000_000 + i)
        r.template_id, r.template, r.session, r.score = 5, "login <*>", "<USER:ab12:0f0f>", 3.5
        if i < n:
            r.flags.add(Flag.ANOMALY)
        records.append(r)
    if with_alert:
        records.append(alert_record(SessionAlert("s9", "end_marker", 7.0, "tiny", 2, "x <*>")))
    return Batch(records)


def exporter_for(server, path="/hooks/logminer?source=node", **kwargs):
    scheme = "https" if kwargs.get("tls") else "http"
    url = f"{scheme}://127.0.0.1:{server.server_address[1]}{path}"
    settings = WebhookExporterSettings(url=url, hostname="node-1", **kwargs)
    return settings, {"token": TOKEN, "model": lambda: ("hdfs", 3)}


def run(exporter, *batches, shutdown=True):
    async def main():
        try:
            return [await exporter.export(b) for b in batches]
        finally:
            if shutdown:
                await exporter.shutdown()
    return asyncio.run(main())


def test_posts_alert_metadata_with_the_bearer_token_and_never_bodies(server):
    settings, kwargs = exporter_for(server)
    exporter = WebhookExporter(settings, **kwargs)
    assert run(exporter, anomalies(0), anomalies(1, with_alert=True)) == \
        [ExportResult.SUCCESS] * 2
    assert len(server.requests) == 1  # a batch without anomalies posts nothing
    path, headers, body = server.requests[0]
    assert path == "/hooks/logminer?source=node"
    assert headers["Authorization"] == "Bearer " + TOKEN.decode()
    assert headers["Content-Type"] == "application/json"
    assert BODY_MARKER.encode() not in body and ATTR_MARKER.encode() not in body
    assert b"ended early" not in body  # the alert record's body
    sent = json.loads(body)
    assert sent["sidecar"]["host"] == "node-1" and sent["suppressed_alerts"] == 0
    assert sent["alerts"] == [
        {"kind": "record", "time_ns": 1_700_000_000_000_000_000,
         "time": "2023-11-14T22:13:20.000000Z", "tag": "app", "template_id": 5,
         "template": "login <*>", "session": "<USER:ab12:0f0f>", "score": 3.5,
         "model": "hdfs", "model_version": 3, "reason": None},
        {**sent["alerts"][1], "kind": "session_end", "tag": "logminer.alert",
         "template_id": None, "template": "x <*>", "session": "s9", "score": 7.0,
         "model": "tiny", "model_version": 2, "reason": "end_marker"}]


def test_retry_on_503_then_success_resends_the_same_alerts(server):
    server.statuses = [503]
    settings, kwargs = exporter_for(server)
    exporter = WebhookExporter(settings, **kwargs)
    batch = anomalies(2)
    assert run(exporter, batch, batch) == [ExportResult.RETRY, ExportResult.SUCCESS]
    first, second = server.payloads()
    assert first == second and len(first["alerts"]) == 2


def test_status_mapping_and_no_redirect_following(server):
    server.statuses = [429, 500, 401, 302]
    settings, kwargs = exporter_for(server)
    exporter = WebhookExporter(settings, **kwargs)
    assert run(exporter, *[anomalies(1)] * 4) == [
        ExportResult.RETRY, ExportResult.RETRY, ExportResult.FAILURE, ExportResult.FAILURE]
    assert len(server.requests) == 4


def test_connection_refused_is_retry():
    settings = WebhookExporterSettings(url=f"http://127.0.0.1:{free_port()}/", use_token=False)
    assert run(WebhookExporter(settings), anomalies(1)) == [ExportResult.RETRY]


def test_rate_limit_coalesces_excess_alerts_into_a_counted_summary(server):
    now = [0.0]
    settings, kwargs = exporter_for(server, max_alerts_per_minute=3)
    exporter = WebhookExporter(settings, clock=lambda: now[0], **kwargs)

    async def main():
        results = [await exporter.export(anomalies(5)),  # 3 posted, 2 counted
                   await exporter.export(anomalies(4))]  # bucket empty: no post, 4 counted
        now[0] += 20.0  # one token back (3 per minute)
        server.statuses = [503]
        results += [await exporter.export(anomalies(0)),  # the summary post fails: retried
                    await exporter.export(anomalies(0)),  # summary only, costs the token
                    await exporter.export(anomalies(1))]  # bucket empty again: 1 counted
        await exporter.shutdown()  # posts the last count
        return results

    assert asyncio.run(main()) == [ExportResult.SUCCESS, ExportResult.SUCCESS,
                                   ExportResult.RETRY, ExportResult.SUCCESS,
                                   ExportResult.SUCCESS]
    posted = [(len(p["alerts"]), p["suppressed_alerts"]) for p in server.payloads()]
    assert posted == [(3, 2), (0, 4), (0, 4), (0, 1)]


def test_https_with_a_private_ca_and_server_name(certs):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    recorder, thread = serve(context)
    try:
        settings, kwargs = exporter_for(recorder, tls=ClientTlsSettings(
            ca_file=str(certs / "ca.crt"), server_name="localhost"))
        assert run(WebhookExporter(settings, **kwargs), anomalies(1)) == [ExportResult.SUCCESS]
        assert len(recorder.payloads()[0]["alerts"]) == 1
    finally:
        recorder.shutdown()
        thread.join(timeout=10)
        recorder.server_close()


def test_settings_and_token_checks():
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookExporterSettings(url="ftp://127.0.0.1/x")
    with pytest.raises(ValueError, match="credentials"):
        WebhookExporterSettings(url="https://user:pw@127.0.0.1/x")
    with pytest.raises(ValueError, match="not https"):
        WebhookExporterSettings(url="http://127.0.0.1/x", tls=ClientTlsSettings(enabled=True))
    settings = WebhookExporterSettings(url="https://hooks.example:8443/secret-path")
    assert settings.name == "webhook:hooks.example:8443"
    with pytest.raises(ValueError, match="LOGMINER_WEBHOOK_TOKEN is not"):
        WebhookExporter(settings)
    with pytest.raises(ValueError, match="not a valid bearer token") as raised:
        WebhookExporter(settings, token=b"bad token\r\nX-Injected: 1")
    assert "Injected" not in str(raised.value)
    with pytest.raises(ValueError, match="url is not set"):
        WebhookExporter(WebhookExporterSettings(), token=TOKEN)

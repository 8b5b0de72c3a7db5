"""The logminer.v1 Aggregates RPC end to end with a grpcio client: noisy reports, budget
denial, exact reports, bad queries, the mTLS consumer, and that no status message carries
a count. The noise comes from the OS source here, as in production; bounds are wide."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from support import run_bounded

from sidecar._proto.logminer.v1 import logminer_pb2 as pb
from sidecar._proto.logminer.v1 import logminer_pb2_grpc as pb_grpc
from sidecar.aggregates import HOUR_SECONDS, AggregateCounts
from sidecar.privacy import LEDGER_FILE, PrivacyAccountant, PrivacySettings, Reporter
from sidecar.receivers.grpc_service import SERVICE, GrpcReceiver, GrpcSettings
from sidecar.record import Batch, Flag, Record
from sidecar.telemetry import Telemetry
from sidecar.tls import TlsSettings

NOW = 1_700_000_000 // HOUR_SECONDS * HOUR_SECONDS + 60
RECORDS, ANOMALIES, EMAILS, LOGINS = 4567, 1234, 3456, 4001
SECRET_COUNTS = [str(n) for n in (RECORDS, ANOMALIES, EMAILS, LOGINS, RECORDS - LOGINS)]
SETTINGS = GrpcSettings(port=0)


def observed_counts(settings: PrivacySettings) -> AggregateCounts:
    counts = AggregateCounts(settings.aggregates, clock=lambda: NOW)
    records = [Record(body="x", template_id=1 if i < LOGINS else 2,
                      template="login <*>" if i < LOGINS else "logout <*>")
               for i in range(RECORDS)]
    for r in records[:ANOMALIES]:
        r.flags.add(Flag.ANOMALY)
    for r in records[:EMAILS]:
        r.redactions["EMAIL"] = 1
    counts.observe(Batch(records))
    return counts


def reporter_for(data_dir: Path, **settings: object) -> Reporter:
    s = PrivacySettings(**settings)
    return Reporter(s, observed_counts(s), PrivacyAccountant.from_settings(data_dir, s))


async def _ignore(batch: Batch) -> None:
    """Submit stand-in: these tests only query."""


@asynccontextmanager
async def aggregates_stub(reporter: Reporter | None, settings: GrpcSettings = SETTINGS,
                          credentials: grpc.ChannelCredentials | None = None,
                          ) -> AsyncIterator[pb_grpc.LogMinerServiceStub]:
    receiver = GrpcReceiver(settings, _ignore, Telemetry(), reporter=reporter)
    await receiver.start()
    target = f"127.0.0.1:{receiver.port}"
    try:
        async with (grpc.aio.secure_channel(target, credentials) if credentials
                    else grpc.aio.insecure_channel(target)) as channel:
            yield pb_grpc.LogMinerServiceStub(channel)
    finally:
        await receiver.stop(0)


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    details = caught.value.details() or ""
    assert not [n for n in SECRET_COUNTS if n in details], details
    return caught.value


def test_grpc_aggregates_returns_noisy_counts_and_the_budget_left(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with aggregates_stub(reporter_for(tmp_path)) as stub:
            report = await stub.Aggregates(pb.AggregatesRequest(
                consumer="siem-1",
                group_by=[pb.BREAKDOWN_TEMPLATE, pb.BREAKDOWN_DETECTOR]))
        assert report.consumer == "siem-1"
        assert report.mechanism == pb.MECHANISM_DISCRETE_LAPLACE
        assert (report.epsilon_spent, report.delta_spent) == (1.0, 1e-5)
        assert report.epsilon_remaining == pytest.approx(9.0)
        assert report.until_unix_seconds - report.since_unix_seconds == 168 * HOUR_SECONDS
        rows = {(c.measure, c.key): c for c in report.counts}
        # Laplace scales: 4 for records, anomalies and templates, 40 for redactions (clip 10).
        assert abs(rows[pb.MEASURE_RECORDS, ""].value - RECORDS) < 150
        assert abs(rows[pb.MEASURE_ANOMALIES, ""].value - ANOMALIES) < 150
        assert abs(rows[pb.MEASURE_TEMPLATE_RECORDS, "1"].value - LOGINS) < 150
        assert rows[pb.MEASURE_TEMPLATE_RECORDS, "1"].template == "login <*>"
        assert (pb.MEASURE_TEMPLATE_RECORDS, "2") in rows  # 566 records: above threshold 51
        assert abs(rows[pb.MEASURE_REDACTIONS, "EMAIL"].value - EMAILS) < 1500
        noise = {n.measure: n for n in report.noise}
        assert noise[pb.MEASURE_REDACTIONS].scale == 40.0
        assert noise[pb.MEASURE_REDACTIONS].sensitivity == 10
        assert noise[pb.MEASURE_TEMPLATE_RECORDS].threshold > 0
        assert noise[pb.MEASURE_RECORDS].threshold == 0

        async with aggregates_stub(reporter_for(tmp_path)) as stub:  # a restarted sidecar
            again = await stub.Aggregates(pb.AggregatesRequest(consumer="siem-1"))
        assert again.epsilon_remaining == pytest.approx(8.0)
        assert {c.measure for c in again.counts} == {pb.MEASURE_RECORDS, pb.MEASURE_ANOMALIES}

    run_bounded(scenario, 30)


def test_grpc_aggregates_past_the_budget_is_permission_denied(tmp_path: Path) -> None:
    async def scenario() -> None:
        reporter = reporter_for(tmp_path, epsilon_per_report=4.0, epsilon_budget=10.0)
        async with aggregates_stub(reporter) as stub:
            request = pb.AggregatesRequest(consumer="siem-1", group_by=[pb.BREAKDOWN_HOUR])
            await stub.Aggregates(request)
            await stub.Aggregates(request)
            error = await refused(stub.Aggregates(request))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "siem-1" in error.details() and "2 epsilon" in error.details()
            other = await stub.Aggregates(pb.AggregatesRequest(consumer="siem-2"))
            assert other.epsilon_remaining == pytest.approx(6.0)

    run_bounded(scenario, 30)


def test_grpc_aggregates_exact_needs_the_config_switch(tmp_path: Path) -> None:
    async def scenario() -> None:
        request = pb.AggregatesRequest(consumer="auditor", exact=True,
                                       group_by=[pb.BREAKDOWN_TEMPLATE])
        async with aggregates_stub(reporter_for(tmp_path / "closed")) as stub:
            error = await refused(stub.Aggregates(request))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "allow_exact_reports" in error.details()
        allowed = reporter_for(tmp_path / "open", allow_exact_reports=True)
        async with aggregates_stub(allowed) as stub:
            report = await stub.Aggregates(request)
        assert report.mechanism == pb.MECHANISM_EXACT and not report.noise
        assert {(c.measure, c.key): c.value for c in report.counts} == {
            (pb.MEASURE_RECORDS, ""): RECORDS, (pb.MEASURE_ANOMALIES, ""): ANOMALIES,
            (pb.MEASURE_TEMPLATE_RECORDS, "1"): LOGINS,
            (pb.MEASURE_TEMPLATE_RECORDS, "2"): RECORDS - LOGINS}
        assert report.epsilon_spent == 0 and report.epsilon_remaining == 10.0

    run_bounded(scenario, 30)


@pytest.mark.parametrize("request_", [
    pb.AggregatesRequest(consumer=""),
    pb.AggregatesRequest(consumer="bad\nid"),
    pb.AggregatesRequest(consumer="siem", group_by=[pb.BREAKDOWN_UNSPECIFIED]),
    pb.AggregatesRequest(consumer="siem", group_by=[42]),
    pb.AggregatesRequest(consumer="siem", since_unix_seconds=NOW + 10 * HOUR_SECONDS),
    pb.AggregatesRequest(consumer="siem", until_unix_seconds=-1),
], ids=["no-consumer", "control-char", "unspecified", "unknown-breakdown", "future", "negative"])
def test_grpc_aggregates_bad_query_is_invalid_argument_and_free(
        tmp_path: Path, request_: pb.AggregatesRequest) -> None:
    async def scenario() -> None:
        async with aggregates_stub(reporter_for(tmp_path)) as stub:
            error = await refused(stub.Aggregates(request_))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        ledger = PrivacyAccountant.from_settings(tmp_path, PrivacySettings())
        assert ledger.account("siem").reports == 0

    run_bounded(scenario, 30)


def test_grpc_aggregates_malformed_bytes_are_invalid_argument(tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver = GrpcReceiver(SETTINGS, _ignore, Telemetry(),
                                reporter=reporter_for(tmp_path))
        await receiver.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
                call = channel.unary_unary(f"/{SERVICE}/Aggregates")
                error = await refused(call(b"\xff\xff\xff"))
        finally:
            await receiver.stop(0)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    run_bounded(scenario, 30)


def test_grpc_aggregates_unimplemented_without_a_reporter() -> None:
    async def scenario() -> None:
        async with aggregates_stub(None) as stub:
            error = await refused(stub.Aggregates(pb.AggregatesRequest(consumer="siem")))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED

    run_bounded(scenario, 30)


def test_grpc_aggregates_unusable_ledger_is_unavailable_and_releases_nothing(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        reporter = reporter_for(tmp_path)
        (tmp_path / LEDGER_FILE).write_text("{torn")
        async with aggregates_stub(reporter) as stub:
            error = await refused(stub.Aggregates(pb.AggregatesRequest(consumer="siem")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert str(tmp_path) not in (error.details() or "")

    run_bounded(scenario, 30)


def test_grpc_aggregates_charges_the_client_certificate_cn(tmp_path: Path,
                                                           certs: Path) -> None:
    async def scenario() -> None:
        tls = TlsSettings(cert_file=str(certs / "server.crt"),
                          key_file=str(certs / "server.key"),
                          client_ca_file=str(certs / "ca.crt"))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.crt").read_bytes(),
            private_key=(certs / "client.key").read_bytes(),
            certificate_chain=(certs / "client.crt").read_bytes())
        settings = replace(SETTINGS, tls=tls)
        async with aggregates_stub(reporter_for(tmp_path), settings, credentials) as stub:
            report = await stub.Aggregates(pb.AggregatesRequest(consumer="someone-else"))
        assert report.consumer == "client"  # the certificate's subject CN
        ledger = PrivacyAccountant.from_settings(tmp_path, PrivacySettings())
        assert ledger.account("client").reports == 1
        assert ledger.account("someone-else").reports == 0

    run_bounded(scenario, 30)

"""logminer.v1 gRPC service with real grpcio clients; also the shared server plumbing
(health, reflection, TLS/mTLS, bind errors) from sidecar/receivers/grpc_server.py."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import Collector, run_bounded

from sidecar._proto.logminer.v1 import logminer_pb2 as pb
from sidecar._proto.logminer.v1 import logminer_pb2_grpc as pb_grpc
from sidecar.pipeline import PipelineClosed, PipelineFull
from sidecar.receivers.grpc_server import GrpcHealth
from sidecar.receivers.grpc_service import SERVICE, GrpcReceiver, GrpcSettings
from sidecar.receivers.otlp import OtlpReceiver, OtlpSettings
from sidecar.record import Batch, Flag, Record
from sidecar.telemetry import Telemetry
from sidecar.tls import TlsSettings

SETTINGS = GrpcSettings(port=0)
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50),
                  ("grpc.max_reconnect_backoff_ms", 200)]


def errors(telemetry: Telemetry, kind: str) -> float | None:
    return telemetry.registry.get_sample_value(
        "logminer_receiver_errors_total", {"receiver": "grpc", "kind": kind})


def seen(record: Record) -> tuple[Any, ...]:
    """What the pipeline sees of a record, as one comparable value."""
    return (record.body, record.time_ns, record.tag, record.attributes, record.resource,
            record.severity, record.flags)


@asynccontextmanager
async def serving(receiver: Any) -> AsyncIterator[Any]:
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop(0)


@asynccontextmanager
async def stub_for(port: int, **channel_kw: Any) -> AsyncIterator[pb_grpc.LogMinerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", **channel_kw) as channel:
        yield pb_grpc.LogMinerServiceStub(channel)


def kv(key: str, **value: Any) -> pb.KeyValue:
    return pb.KeyValue(key=key, value=pb.Value(**value))


def batch_of(sequence: int, *bodies: str) -> pb.Batch:
    return pb.Batch(sequence=sequence, records=[
        pb.Record(time_unix_nano=1_700_000_000_000_000_000 + i, tag="app.test",
                  body=body.encode()) for i, body in enumerate(bodies)])


# --------------------------------------------------------------------------- Push


def test_push_maps_every_field_as_the_pipeline_should_see_it() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        full = pb.Record(
            time_unix_nano=1_700_000_000_123_456_789, tag="app.payments",
            body="payment of 12.50 EUR by user 42 — ok".encode(), severity="WARN",
            attributes=[
                kv("s", string_value="text"), kv("b", bool_value=True),
                kv("i", int_value=-(2**63)), kv("d", double_value=0.25),
                kv("raw", bytes_value=b"\x00\xff"), kv("none"),
                kv("list", array_value=pb.ArrayValue(values=[
                    pb.Value(int_value=1), pb.Value(string_value="two")])),
                kv("map", kvlist_value=pb.KeyValueList(values=[kv("k", string_value="v")])),
            ],
            resource=[kv("k8s.pod.name", string_value="pay-0")])
        bare = pb.Record(body=b"no tag, no time")
        async with serving(GrpcReceiver(SETTINGS, collector, telemetry)) as receiver:
            async with stub_for(receiver.port) as stub:
                before = time.time_ns()
                ack = await stub.Push(pb.Batch(sequence=7, records=[full, bare]))
                after = time.time_ns()
        assert ack == pb.Ack(sequence=7, accepted=2, rejected=0, error="")
        assert [b.source for b in collector.batches] == ["grpc"]
        first, second = collector.records
        assert seen(first) == (
            "payment of 12.50 EUR by user 42 — ok", 1_700_000_000_123_456_789, "app.payments",
            {"s": "text", "b": True, "i": -(2**63), "d": 0.25, "raw": "AP8=", "none": None,
             "list": [1, "two"], "map": {"k": "v"}},
            {"k8s.pod.name": "pay-0"}, "WARN", set())
        assert (second.body, second.tag, second.attributes, second.severity) == (
            "no tag, no time", "grpc", {}, "")
        assert before <= second.time_ns <= after
        assert telemetry.registry.get_sample_value(
            "logminer_receiver_records_total", {"receiver": "grpc", "tag": "app.payments"}) == 1
        assert telemetry.registry.get_sample_value(
            "logminer_receiver_records_total", {"receiver": "grpc", "tag": "grpc"}) == 1

    run_bounded(scenario)


def test_push_rejects_oversized_records_individually() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        settings = replace(SETTINGS, max_record_bytes=100)
        async with serving(GrpcReceiver(settings, collector, telemetry)) as receiver:
            async with stub_for(receiver.port) as stub:
                ack = await stub.Push(batch_of(1, "small", "x" * 200, "also small"))
        assert (ack.sequence, ack.accepted, ack.rejected) == (1, 2, 1)
        assert "100-byte limit" in ack.error and "x" * 10 not in ack.error
        assert [r.body for r in collector.records] == ["small", "also small"]
        assert errors(telemetry, "oversized") == 1

    run_bounded(scenario)


def test_invalid_utf8_is_replaced_and_flagged_not_refused() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        # The body is `bytes`, so any client can send bad bytes there; `tag` is a
        # `string`, so its bad bytes are patched into the encoded message by hand.
        good = pb.Batch(sequence=3, records=[
            pb.Record(body=b"caf\xe9 \xff ok", tag="t\u00e9g"),
            pb.Record(body=b"clean", tag="clean")])
        raw = good.SerializeToString().replace("t\u00e9g".encode(), b"t\xe9!g")
        async with serving(GrpcReceiver(SETTINGS, collector, telemetry)) as receiver:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
                push = channel.unary_unary(f"/{SERVICE}/Push",
                                           response_deserializer=pb.Ack.FromString)
                ack = await push(raw)
        assert (ack.accepted, ack.rejected) == (2, 0)
        bad, clean = collector.records
        assert (bad.body, bad.tag, bad.flags) == (
            "caf\ufffd \ufffd ok", "t\ufffd!g", {Flag.DECODE_REPLACED})
        assert (clean.body, clean.flags) == ("clean", set())
        assert errors(telemetry, "invalid_utf8") == 1

    run_bounded(scenario)


def test_malformed_message_gets_invalid_argument_and_other_streams_flow() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        async with serving(GrpcReceiver(SETTINGS, collector, telemetry)) as receiver:
            async with stub_for(receiver.port) as good, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as bad_channel:
                stream = good.Stream()
                await stream.write(batch_of(1, "before"))
                assert (await stream.read()).sequence == 1
                push = bad_channel.unary_unary(f"/{SERVICE}/Push")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await push(b"\x0a\x05\x0a")  # records: length 5, only 1 byte follows
                await stream.write(batch_of(2, "after"))
                assert (await stream.read()).sequence == 2
                await stream.done_writing()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "request is not a valid logminer.v1.Batch"
        assert errors(telemetry, "malformed") == 1
        assert [r.body for r in collector.records] == ["before", "after"]

    run_bounded(scenario)


def test_full_pipeline_is_resource_exhausted_with_retry_info() -> None:
    async def scenario() -> None:
        telemetry = Telemetry()
        collector = Collector(fail=lambda call: PipelineFull("full"))
        async with serving(GrpcReceiver(SETTINGS, collector, telemetry)) as receiver:
            async with stub_for(receiver.port) as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Push(batch_of(1, "x"))
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = dict(error.trailing_metadata())["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(details)
        retry = error_details_pb2.RetryInfo()
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert status.details[0].Unpack(retry) and retry.retry_delay.seconds >= 1
        assert errors(telemetry, "backpressure") == 1
        assert telemetry.registry.get_sample_value(
            "logminer_receiver_records_total", {"receiver": "grpc", "tag": "app.test"}) is None

    run_bounded(scenario)


def test_closing_pipeline_is_unavailable() -> None:
    async def scenario() -> None:
        collector = Collector(fail=lambda call: PipelineClosed("closing"))
        async with serving(GrpcReceiver(SETTINGS, collector, Telemetry())) as receiver:
            async with stub_for(receiver.port) as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Push(batch_of(1, "x"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    run_bounded(scenario)


# --------------------------------------------------------------------------- Stream


def test_stream_acks_pipelined_batches_in_order() -> None:
    async def scenario() -> None:
        collector = Collector()
        batches = [batch_of(seq, f"b{seq}r0", f"b{seq}r1") for seq in range(10, 20)]
        async with serving(GrpcReceiver(SETTINGS, collector, Telemetry())) as receiver:
            async with stub_for(receiver.port) as stub:
                acks = [ack async for ack in stub.Stream(iter(batches))]  # sent without waiting
        assert [(a.sequence, a.accepted) for a in acks] == [(seq, 2) for seq in range(10, 20)]
        assert [r.body for r in collector.records] == [
            f"b{seq}r{i}" for seq in range(10, 20) for i in range(2)]
        assert [r.time_ns for r in collector.records[:2]] == [
            1_700_000_000_000_000_000, 1_700_000_000_000_000_001]

    run_bounded(scenario)


def test_stream_ends_resource_exhausted_after_acking_what_was_accepted() -> None:
    async def scenario() -> None:
        telemetry = Telemetry()
        collector = Collector(fail=lambda call: PipelineFull("full") if call >= 3 else None)
        async with serving(GrpcReceiver(SETTINGS, collector, telemetry)) as receiver:
            async with stub_for(receiver.port) as stub:
                call = stub.Stream(iter([batch_of(seq, "r") for seq in range(1, 6)]))
                acks = []
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for ack in call:
                        acks.append(ack.sequence)
        assert acks == [1, 2]
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert errors(telemetry, "backpressure") == 1

    run_bounded(scenario)


class ResumingClient:
    """A stream client that resends every unacknowledged batch after a broken stream."""

    def __init__(self, target: str):
        self.target = target
        self.acks_per_attempt: list[list[int]] = []
        self.failures: list[grpc.StatusCode] = []

    async def send_all(self, batches: Iterable[pb.Batch]) -> None:
        unacked = {batch.sequence: batch for batch in batches}
        async with grpc.aio.insecure_channel(self.target, options=FAST_RECONNECT) as channel:
            stub = pb_grpc.LogMinerServiceStub(channel)
            while unacked:
                acks: list[int] = []
                self.acks_per_attempt.append(acks)
                call = stub.Stream(iter(list(unacked.values())), wait_for_ready=True)
                try:
                    async for ack in call:
                        del unacked[ack.sequence]
                        acks.append(ack.sequence)
                except grpc.aio.AioRpcError as error:
                    self.failures.append(error.code())


def test_stream_resumes_after_server_restart_and_every_record_arrives() -> None:
    async def scenario() -> None:
        batches = [batch_of(seq, f"b{seq}r0", f"b{seq}r1") for seq in range(1, 9)]
        stuck = asyncio.Event()

        async def submit_then_hang_on_fourth(batch: Batch) -> None:
            first.batches.append(batch)
            if len(first.batches) == 4:  # accepted by nobody: never acknowledged
                stuck.set()
                await asyncio.Event().wait()

        first, second = Collector(), Collector()
        old = GrpcReceiver(SETTINGS, submit_then_hang_on_fourth, Telemetry())
        await old.start()
        client = ResumingClient(f"127.0.0.1:{old.port}")
        sending = asyncio.create_task(client.send_all(batches))
        await stuck.wait()
        await old.stop(0)  # the connection drops mid-stream
        async with serving(GrpcReceiver(replace(SETTINGS, port=old.port), second, Telemetry())):
            await sending
        assert client.failures and len(client.acks_per_attempt) >= 2
        acked_first = client.acks_per_attempt[0]
        assert acked_first == list(range(1, len(acked_first) + 1)) and 4 not in acked_first
        assert sorted(seq for acks in client.acks_per_attempt for seq in acks) == list(
            range(1, 9))
        sent = {body for batch in batches for body in (r.body.decode() for r in batch.records)}
        arrived = [r.body for r in first.records + second.records]
        assert set(arrived) == sent  # every record arrives at least once
        assert {"b4r0", "b4r1"} <= {r.body for r in second.records}  # the unacked one, again
        assert not {f"b{seq}r0" for seq in acked_first} & {r.body for r in second.records}

    run_bounded(scenario)


# --------------------------------------------------------------------------- server plumbing


def test_health_reports_serving_and_follows_the_app() -> None:
    async def scenario() -> None:
        health = GrpcHealth()
        grpc_receiver = GrpcReceiver(SETTINGS, Collector(), Telemetry(), health)
        otlp_receiver = OtlpReceiver(OtlpSettings(port=0), Collector(), Telemetry(), health)
        async with serving(grpc_receiver), serving(otlp_receiver):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_receiver.port}") as a, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{otlp_receiver.port}") as b:
                checks = [(health_pb2_grpc.HealthStub(a), SERVICE),
                          (health_pb2_grpc.HealthStub(b),
                           "opentelemetry.proto.collector.logs.v1.LogsService")]

                async def statuses() -> list[int]:
                    return [(await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
                            for stub, service in checks for name in ("", service)]

                serving_now = health_pb2.HealthCheckResponse.SERVING
                not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
                assert await statuses() == [serving_now] * 4
                await health.set_serving(False)
                assert await statuses() == [not_serving] * 4
                await health.set_serving(True)
                assert await statuses() == [serving_now] * 4

    run_bounded(scenario)


def test_reflection_lists_the_services() -> None:
    async def scenario() -> None:
        async with serving(GrpcReceiver(SETTINGS, Collector(), Telemetry())) as receiver:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names

    run_bounded(scenario)


def test_port_in_use_is_an_os_error_naming_the_address() -> None:
    async def scenario() -> None:
        async with serving(GrpcReceiver(SETTINGS, Collector(), Telemetry())) as first:
            second = GrpcReceiver(replace(SETTINGS, port=first.port), Collector(), Telemetry())
            try:
                with pytest.raises(OSError, match=re.escape(f"127.0.0.1:{first.port}")):
                    await second.start()
            finally:
                await second.stop(0)  # safe after a failed start

    run_bounded(scenario)


def test_stop_is_safe_before_start_and_twice() -> None:
    async def scenario() -> None:
        receiver = GrpcReceiver(SETTINGS, Collector(), Telemetry())
        await receiver.stop(0)
        await receiver.start()
        await receiver.stop(0)
        await receiver.stop(0)

    run_bounded(scenario)


def _tls(certs: Path, mutual: bool) -> TlsSettings:
    return TlsSettings(cert_file=str(certs / "server.crt"), key_file=str(certs / "server.key"),
                       client_ca_file=str(certs / "ca.crt") if mutual else None)


async def _push_over_tls(port: int, certs: Path, with_client_cert: bool) -> pb.Ack:
    client = ({"private_key": (certs / "client.key").read_bytes(),
               "certificate_chain": (certs / "client.crt").read_bytes()}
              if with_client_cert else {})
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(), **client)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return await pb_grpc.LogMinerServiceStub(channel).Push(batch_of(1, "secret"),
                                                               timeout=5)


def test_tls_serves_verified_clients(certs: Path) -> None:
    async def scenario() -> None:
        collector = Collector()
        settings = replace(SETTINGS, tls=_tls(certs, mutual=False))
        async with serving(GrpcReceiver(settings, collector, Telemetry())) as receiver:
            ack = await _push_over_tls(receiver.port, certs, with_client_cert=False)
            async with stub_for(receiver.port) as plaintext:
                with pytest.raises(grpc.aio.AioRpcError):
                    await plaintext.Push(batch_of(2, "x"), timeout=5)
        assert ack.accepted == 1 and [r.body for r in collector.records] == ["secret"]

    run_bounded(scenario)


def test_mtls_requires_a_client_certificate(certs: Path) -> None:
    async def scenario() -> None:
        collector = Collector()
        settings = replace(SETTINGS, tls=_tls(certs, mutual=True))
        async with serving(GrpcReceiver(settings, collector, Telemetry())) as receiver:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _push_over_tls(receiver.port, certs, with_client_cert=False)
            ack = await _push_over_tls(receiver.port, certs, with_client_cert=True)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ack.accepted == 1 and len(collector.records) == 1

    run_bounded(scenario)


def test_bad_tls_settings_are_reported_before_binding(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM")
    cases = [(TlsSettings(cert_file=str(garbage)), ValueError, r"tls\.key_file"),
             (TlsSettings(cert_file=str(tmp_path / "missing.pem"), key_file=str(garbage)),
              OSError, "cannot load TLS files"),
             (TlsSettings(cert_file=str(garbage), key_file=str(garbage)),
              OSError, "cannot load TLS files")]

    async def scenario() -> None:
        for tls, error, pattern in cases:
            receiver = GrpcReceiver(replace(SETTINGS, tls=tls), Collector(), Telemetry())
            with pytest.raises(error, match=pattern):
                await receiver.start()

    run_bounded(scenario)

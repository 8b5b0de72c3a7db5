"""OTLP/gRPC logs receiver: the mapping, and the OpenTelemetry Python SDK's OTLP exporter
as a real client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as svc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as svc_grpc
from opentelemetry.proto.common.v1 import common_pb2 as common
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from support import Collector, run_bounded

from sidecar.pipeline import PipelineClosed, PipelineFull
from sidecar.receivers.grpc_server import Utf8Text
from sidecar.receivers.otlp import (
    SERVICE,
    OtlpReceiver,
    OtlpSettings,
    any_value_to_python,
    body_text,
    request_to_records,
    severity_name,
)
from sidecar.record import Flag
from sidecar.telemetry import Telemetry

SETTINGS = OtlpSettings(port=0)
T0 = 1_700_000_000_000_000_000


def errors(telemetry: Telemetry, kind: str) -> float | None:
    return telemetry.registry.get_sample_value(
        "logminer_receiver_errors_total", {"receiver": "otlp", "kind": kind})


@asynccontextmanager
async def serving(collector: Collector, telemetry: Telemetry,
                  settings: OtlpSettings = SETTINGS) -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver(settings, collector, telemetry)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop(0)


def sdk_provider(port: int, resource: dict[str, Any], processor: Any) -> LoggerProvider:
    provider = LoggerProvider(resource=Resource.create(resource))
    provider.add_log_record_processor(
        processor(OTLPLogExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10)))
    return provider


def request_with(*log_records: Any, resource: dict[str, str] | None = None,
                 scope: str = "") -> svc.ExportLogsServiceRequest:
    request = svc.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in (resource or {}).items():
        resource_logs.resource.attributes.add(key=key).value.string_value = value
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = scope
    scope_logs.log_records.extend(log_records)
    return request


def log_record(body: str, **fields: Any) -> Any:
    record = svc.ExportLogsServiceRequest().resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = body
    for name, value in fields.items():
        setattr(record, name, value)
    return record


# --------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(("number", "name"), [
    (0, ""), (1, "TRACE"), (4, "TRACE4"), (5, "DEBUG"), (9, "INFO"), (10, "INFO2"),
    (13, "WARN"), (17, "ERROR"), (21, "FATAL"), (24, "FATAL4"), (25, ""), (-1, "")])
def test_severity_names_follow_the_data_model(number: int, name: str) -> None:
    assert severity_name(number) == name


def test_any_values_become_plain_python_values() -> None:
    value = common.AnyValue(kvlist_value=common.KeyValueList(values=[
        common.KeyValue(key="s", value=common.AnyValue(string_value="é")),
        common.KeyValue(key="b", value=common.AnyValue(bool_value=False)),
        common.KeyValue(key="i", value=common.AnyValue(int_value=2**62)),
        common.KeyValue(key="d", value=common.AnyValue(double_value=-1.5)),
        common.KeyValue(key="x", value=common.AnyValue(bytes_value=b"\x01\x02")),
        common.KeyValue(key="n", value=common.AnyValue()),
        common.KeyValue(key="a", value=common.AnyValue(array_value=common.ArrayValue(values=[
            common.AnyValue(int_value=1), common.AnyValue(array_value=common.ArrayValue())]))),
    ]))
    assert any_value_to_python(value, Utf8Text()) == {
        "s": "é", "b": False, "i": 2**62, "d": -1.5, "x": "AQI=", "n": None,
        "a": [1, []]}


@pytest.mark.parametrize(("value", "text"), [
    (common.AnyValue(string_value="plain {not json}"), "plain {not json}"),
    (common.AnyValue(), ""),
    (common.AnyValue(int_value=7), "7"),
    (common.AnyValue(bool_value=True), "true"),
    (common.AnyValue(bytes_value=b"\xff"), "/w=="),
    (common.AnyValue(kvlist_value=common.KeyValueList(values=[
        common.KeyValue(key="msg", value=common.AnyValue(string_value="é"))])), '{"msg":"é"}'),
])
def test_bodies_become_text(value: common.AnyValue, text: str) -> None:
    assert body_text(value, Utf8Text()) == text


def test_tag_time_and_severity_fall_back() -> None:
    request = request_with(
        log_record("a", time_unix_nano=T0, observed_time_unix_nano=T0 + 5, severity_number=17),
        log_record("b", observed_time_unix_nano=T0 + 5, severity_text="Warning",
                   severity_number=17),
        log_record("c"))
    mapped = request_to_records(request, max_record_bytes=1024, received_ns=42)
    assert [(r.body, r.time_ns, r.severity, r.tag, r.attributes) for r in mapped.records] == [
        ("a", T0, "ERROR", "otlp", {}), ("b", T0 + 5, "Warning", "otlp", {}),
        ("c", 42, "", "otlp", {})]
    assert (mapped.rejected, mapped.replaced) == (0, 0)


def test_records_do_not_share_mutable_values() -> None:
    request = request_with(log_record("a"), log_record("b"), resource={"service.name": "svc"})
    first, second = request_to_records(request, 1024, 0).records
    first.resource["service.name"] = "changed"
    assert second.resource == {"service.name": "svc"} and second.tag == "svc"


# --------------------------------------------------------------------------- real client


def test_sdk_exporter_records_arrive_as_the_pipeline_should_see_them() -> None:
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7
    span = trace.NonRecordingSpan(trace.SpanContext(
        trace_id, span_id, is_remote=False, trace_flags=trace.TraceFlags(1)))

    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        async with serving(collector, telemetry) as receiver:
            provider = sdk_provider(
                receiver.port, {"service.name": "payments", "k8s.pod.name": "pay-0"},
                BatchLogRecordProcessor)
            logger = provider.get_logger("payments.api", "1.2")

            def emit_and_flush() -> None:
                logger.emit(timestamp=T0 + 1, severity_number=SeverityNumber.WARN,
                            body="card 4111 1111 1111 1111 declined",
                            attributes={"user.id": "u-17", "amount": 12.5, "tries": 3,
                                        "retry": True, "tags": ("a", "b")},
                            context=trace.set_span_in_context(span))
                logger.emit(timestamp=T0 + 2, severity_text="audit", event_name="login",
                            body={"user": "u-17", "ok": True})
                before = time.time_ns()
                logger.emit(body="no timestamp")  # the SDK sets only the observed time
                observed_bounds.extend((before, time.time_ns()))
                assert provider.force_flush(10_000)
                provider.shutdown()

            observed_bounds: list[int] = []
            await asyncio.to_thread(emit_and_flush)
        resource = dict(provider.resource.attributes)
        scope = {"otel.scope.name": "payments.api"}
        first, second, third = collector.records
        assert (first.body, first.time_ns, first.tag, first.severity, first.resource) == (
            "card 4111 1111 1111 1111 declined", T0 + 1, "payments", "WARN", resource)
        assert first.attributes == {
            "user.id": "u-17", "amount": 12.5, "tries": 3, "retry": True, "tags": ["a", "b"],
            "otel.trace_id": f"{trace_id:032x}", "otel.span_id": f"{span_id:016x}", **scope}
        assert (second.body, second.time_ns, second.severity, second.attributes) == (
            '{"user":"u-17","ok":true}', T0 + 2, "audit",
            {"otel.event_name": "login", **scope})
        assert third.body == "no timestamp" and third.tag == "payments"
        assert observed_bounds[0] <= third.time_ns <= observed_bounds[1]
        assert all(not r.flags for r in collector.records)
        assert [b.source for b in collector.batches] == ["otlp"] * len(collector.batches)
        assert telemetry.registry.get_sample_value(
            "logminer_receiver_records_total", {"receiver": "otlp", "tag": "payments"}) == 3

    run_bounded(scenario)


def test_sdk_exporter_retries_after_resource_exhausted() -> None:
    async def scenario() -> None:
        telemetry = Telemetry()
        collector = Collector(fail=lambda call: PipelineFull("full") if call == 1 else None)
        async with serving(collector, telemetry) as receiver:
            provider = sdk_provider(receiver.port, {"service.name": "retry"},
                                    SimpleLogRecordProcessor)

            def emit() -> None:  # SimpleLogRecordProcessor exports synchronously
                provider.get_logger("t").emit(timestamp=T0, body="kept")
                provider.shutdown()

            await asyncio.to_thread(emit)
        assert collector.calls == 2  # refused once, resent after the RetryInfo delay
        assert [(r.body, r.time_ns) for r in collector.records] == [("kept", T0)]
        assert errors(telemetry, "backpressure") == 1

    run_bounded(scenario)


# --------------------------------------------------------------------------- errors


@asynccontextmanager
async def raw_export(port: int) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``Export`` taking already-encoded request bytes."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.unary_unary(f"/{SERVICE}/Export",
                                  response_deserializer=svc.ExportLogsServiceResponse.FromString)


def test_partial_success_reports_oversized_records() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        settings = replace(SETTINGS, max_record_bytes=200)
        request = request_with(log_record("small", time_unix_nano=T0),
                               log_record("x" * 500, time_unix_nano=T0))
        async with serving(collector, telemetry, settings) as receiver:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
                response = await svc_grpc.LogsServiceStub(channel).Export(request)
        assert response.partial_success.rejected_log_records == 1
        assert "200-byte limit" in response.partial_success.error_message
        assert [r.body for r in collector.records] == ["small"]
        assert errors(telemetry, "oversized") == 1

    run_bounded(scenario)


def test_all_records_rejected_submits_nothing() -> None:
    async def scenario() -> None:
        collector = Collector()
        settings = replace(SETTINGS, max_record_bytes=64)
        async with serving(collector, Telemetry(), settings) as receiver:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
                response = await svc_grpc.LogsServiceStub(channel).Export(
                    request_with(log_record("y" * 100)))
        assert response.partial_success.rejected_log_records == 1
        assert collector.calls == 0

    run_bounded(scenario)


def test_invalid_utf8_is_kept_as_replacement_characters() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        request = request_with(log_record("caf\u00e9 au lait", time_unix_nano=T0),
                               log_record("fine", time_unix_nano=T0),
                               resource={"service.name": "menu"})
        raw = request.SerializeToString().replace("caf\u00e9".encode(), b"caf\xe9!")
        with pytest.raises(Exception):  # noqa: B017 - the protobuf runtime refuses it as is
            svc.ExportLogsServiceRequest.FromString(raw)
        async with serving(collector, telemetry) as receiver, raw_export(receiver.port) as call:
            response = await call(raw)
        bad, fine = collector.records
        assert (bad.body, bad.tag, bad.time_ns, bad.flags) == (
            "caf\ufffd! au lait", "menu", T0, {Flag.DECODE_REPLACED})
        assert (fine.body, fine.flags) == ("fine", set())
        assert response.partial_success.rejected_log_records == 0
        assert "invalid UTF-8" in response.partial_success.error_message
        assert errors(telemetry, "invalid_utf8") == 1

    run_bounded(scenario)


def test_malformed_request_is_invalid_argument_and_the_next_one_flows() -> None:
    async def scenario() -> None:
        collector, telemetry = Collector(), Telemetry()
        async with serving(collector, telemetry) as receiver, raw_export(receiver.port) as call:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"\x0a\xff\xff\xff\xff\x0f")  # resource_logs with an absurd length
            await call(request_with(log_record("next")).SerializeToString())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ExportLogsServiceRequest" in caught.value.details()
        assert errors(telemetry, "malformed") == 1
        assert [r.body for r in collector.records] == ["next"]

    run_bounded(scenario)


def test_oversized_message_is_refused_by_grpc() -> None:
    async def scenario() -> None:
        collector = Collector()
        settings = replace(SETTINGS, max_message_bytes=1024)
        async with serving(collector, Telemetry(), settings) as receiver, \
                raw_export(receiver.port) as call:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request_with(log_record("z" * 2000)).SerializeToString())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert collector.calls == 0

    run_bounded(scenario)


def test_closing_pipeline_is_unavailable() -> None:
    async def scenario() -> None:
        collector = Collector(fail=lambda call: PipelineClosed("closing"))
        async with serving(collector, Telemetry()) as receiver, raw_export(receiver.port) as call:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request_with(log_record("late")).SerializeToString())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    run_bounded(scenario)


def test_a_huge_resource_times_many_records_is_bounded() -> None:
    """A small request declaring a big resource for many records cannot blow up memory."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from sidecar.receivers.otlp import MAX_RESOURCE_COPIES, request_to_records

    attributes = [KeyValue(key=f"k{i}", value=AnyValue(int_value=i)) for i in range(2000)]
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=attributes),
        scope_logs=[ScopeLogs(log_records=[LogRecord() for _ in range(2000)])])])
    mapped = request_to_records(request, 1 << 20, 1)
    kept = MAX_RESOURCE_COPIES // 2000
    assert len(mapped.records) == kept and mapped.rejected == 2000 - kept

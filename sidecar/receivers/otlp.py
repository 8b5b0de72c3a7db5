"""OTLP/gRPC logs receiver: the OpenTelemetry ``LogsService/Export`` RPC.

Strategy: the message classes come from the ``opentelemetry-proto`` package;
the handler takes raw request bytes and decodes them through the shared
``RequestDecoder`` (invalid UTF-8 kept as U+FFFD, malformed bytes answered
with INVALID_ARGUMENT). One Export call becomes one Batch: every LogRecord is
mapped to a Record (body as text, attributes and resource attributes as plain
Python values, severity as a name, a timestamp that is never 0); a record
whose encoded size is above ``max_record_bytes`` is rejected and reported as
an OTLP partial success. The response is sent only after the pipeline
accepted the batch; a full pipeline answers RESOURCE_EXHAUSTED with RetryInfo,
which OTLP clients retry.

Specs: OTLP/gRPC https://opentelemetry.io/docs/specs/otlp/#otlpgrpc
(partial success: #partial-success-1, failures: #failures-1), the logs data
model https://opentelemetry.io/docs/specs/otel/logs/data-model/ (severity
names: #field-severitynumber).

``any_value_to_python`` and ``key_values_to_dict`` also map the
``logminer.v1`` protos, whose Value/KeyValue mirror OTLP's field for field.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from sidecar import defaults
from sidecar.pipeline import Submit
from sidecar.receivers.grpc_server import (
    GrpcHealth,
    GrpcIntake,
    GrpcListener,
    GrpcReceiverSettings,
    GrpcServer,
    MappedBatch,
    RequestDecoder,
    Utf8Text,
)
from sidecar.receivers.listener import port_field
from sidecar.record import Record
from sidecar.telemetry import Telemetry

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
DEFAULT_TAG = "otlp"
SCOPE_NAME_KEY = "otel.scope.name"
EVENT_NAME_KEY = "otel.event_name"
TRACE_ID_KEY = "otel.trace_id"
SPAN_ID_KEY = "otel.span_id"

_SEVERITY_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")


@dataclass(frozen=True)
class OtlpSettings(GrpcReceiverSettings):
    """OTLP/gRPC logs receiver settings (OpenTelemetry Collector, Fluent Bit, Fluentd)."""

    port: int = port_field(defaults.OTLP_GRPC_PORT)


# --------------------------------------------------------------------------- mapping


def any_value_to_python(value: Any, text: Utf8Text) -> Any:
    """An OTLP ``AnyValue`` (or ``logminer.v1.Value``) as a plain Python value.

    string, bool, int, double map to str, bool, int, float; bytes to base64
    text; arrays to lists; kvlists to dicts; an empty value to None. String
    fields are read through ``text`` (see ``Utf8Text``).
    """
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return text(value.string_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind == "array_value":
        return [any_value_to_python(item, text) for item in value.array_value.values]
    if kind == "kvlist_value":
        return key_values_to_dict(value.kvlist_value.values, text)
    return getattr(value, kind)  # bool_value, int_value, double_value


def key_values_to_dict(pairs: Iterable[Any], text: Utf8Text) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict (the last of repeated keys wins)."""
    return {text(pair.key): any_value_to_python(pair.value, text) for pair in pairs}


def body_text(value: Any, text: Utf8Text) -> str:
    """A log body as text: a string as is, bytes as base64, "" when empty, else compact JSON."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    plain = any_value_to_python(value, text)
    if kind in ("string_value", "bytes_value"):
        return plain
    return json.dumps(plain, ensure_ascii=False, separators=(",", ":"))


def severity_name(number: int) -> str:
    """The data model's short name for a SeverityNumber (9 -> INFO, 10 -> INFO2); "" if unset."""
    if not 1 <= number <= 4 * len(_SEVERITY_NAMES):
        return ""
    name, step = _SEVERITY_NAMES[(number - 1) // 4], (number - 1) % 4
    return name if step == 0 else f"{name}{step + 1}"


MAX_RESOURCE_COPIES = 1_000_000
"""Resource attributes copied into records per request, at most (e.g. 50 x 20,000)."""


def request_to_records(request: ExportLogsServiceRequest, max_record_bytes: int,
                       received_ns: int) -> MappedBatch:
    """Map every LogRecord of an Export request, rejecting those above ``max_record_bytes``.

    The tag is the resource's ``service.name`` (else "otlp"); the time is
    ``time_unix_nano``, else ``observed_time_unix_nano``, else
    ``received_ns``. The severity is ``severity_text``, else the name of
    ``severity_number``. The scope name, event name and trace/span ids, when
    set, become the ``otel.*`` attributes. ``request`` may come from a lenient
    parse (string fields as bytes).
    """
    mapped = MappedBatch(max_record_bytes)
    budget = MAX_RESOURCE_COPIES
    for resource_logs in request.resource_logs:
        # Converted once per ResourceLogs, copied (shallowly) into each record: records are
        # annotated in place later. The copies are budgeted, so a small request declaring a
        # huge resource for many records cannot blow up memory (counted as rejected).
        resource_text = Utf8Text()
        resource = key_values_to_dict(resource_logs.resource.attributes, resource_text)
        service = resource.get("service.name")
        tag = service if isinstance(service, str) and service else DEFAULT_TAG
        for scope_logs in resource_logs.scope_logs:
            for log_record in scope_logs.log_records:
                if not mapped.admits(log_record):
                    continue
                if budget < len(resource):
                    mapped.rejected += 1
                    continue
                budget -= len(resource)
                text = Utf8Text()
                text.replaced = resource_text.replaced
                attributes = key_values_to_dict(log_record.attributes, text)
                extras = {SCOPE_NAME_KEY: text(scope_logs.scope.name),
                          EVENT_NAME_KEY: text(log_record.event_name),
                          TRACE_ID_KEY: log_record.trace_id.hex(),
                          SPAN_ID_KEY: log_record.span_id.hex()}
                attributes.update((key, value) for key, value in extras.items() if value)
                record = Record(
                    body=body_text(log_record.body, text),
                    time_ns=(log_record.time_unix_nano or log_record.observed_time_unix_nano
                             or received_ns),
                    tag=tag,
                    attributes=attributes,
                    resource=dict(resource),
                    severity=(text(log_record.severity_text)
                              or severity_name(log_record.severity_number)),
                )
                mapped.add(record, text)
    return mapped


# --------------------------------------------------------------------------- receiver


class OtlpReceiver(GrpcListener):
    """Serves ``LogsService/Export`` on its own port (default 4317)."""

    name = "otlp"

    def __init__(self, settings: OtlpSettings, submit: Submit, telemetry: Telemetry,
                 health: GrpcHealth | None = None):
        self._settings = settings
        self._intake = GrpcIntake(self.name, submit, telemetry)
        self._decoder = RequestDecoder(ExportLogsServiceRequest)
        export = grpc.unary_unary_rpc_method_handler(
            self._export, response_serializer=ExportLogsServiceResponse.SerializeToString)
        self._server = GrpcServer(settings, {SERVICE: {"Export": export}},
                                  health if health is not None else GrpcHealth())

    async def _export(self, raw: bytes,
                      context: grpc.aio.ServicerContext) -> ExportLogsServiceResponse:
        request = await self._intake.decode(self._decoder, raw, context)
        mapped = request_to_records(request, self._settings.max_record_bytes, time.time_ns())
        await self._intake.admit(mapped, context)
        response = ExportLogsServiceResponse()
        # Partial success reports rejections; with 0 rejected it may carry a warning.
        notes = [mapped.error] if mapped.rejected else []
        if mapped.replaced:
            notes.append(f"{mapped.replaced} record(s) had invalid UTF-8, replaced with U+FFFD")
        if notes:
            response.partial_success.rejected_log_records = mapped.rejected
            response.partial_success.error_message = "; ".join(notes)
        return response

"""The gRPC plumbing both gRPC receivers (OTLP and ``logminer.v1``) share.

Strategy: each receiver supplies its method handlers; ``GrpcServer`` wraps
them in one ``grpc.aio`` server per port with TLS/mTLS, the standard
``grpc.health.v1`` service (its status published from one app-owned
``GrpcHealth``) and server reflection. Handlers take the raw request bytes and
decode them through ``RequestDecoder``, so that a message gRPC cannot parse
becomes a clear INVALID_ARGUMENT for that sender rather than a bare INTERNAL,
and so that invalid UTF-8 in ``string`` fields - which the protobuf runtime
refuses outright - is kept as U+FFFD instead of failing the whole request.
``GrpcIntake`` then maps pipeline outcomes to status codes the same way for
both receivers: a full pipeline is RESOURCE_EXHAUSTED with a
``google.rpc.RetryInfo`` (retryable per the OTLP spec), shutdown is
UNAVAILABLE, and every refusal is counted.

Specs: gRPC status codes https://grpc.github.io/grpc/core/md_doc_statuscodes.html,
health checking https://github.com/grpc/grpc/blob/master/doc/health-checking.md,
reflection https://github.com/grpc/grpc/blob/master/doc/server-reflection.md,
OTLP failure handling
https://opentelemetry.io/docs/specs/otlp/#failures-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.pipeline import BatchRejected, PipelineClosed, PipelineFull, Submit
from sidecar.receivers.listener import ListenerSettings
from sidecar.record import Batch, Flag, Record
from sidecar.telemetry import Telemetry
from sidecar.tls import TlsSettings, server_context

_HealthServicer: TypeAlias = grpc_health.aio.HealthServicer

RETRY_DELAY_SECONDS = 1
"""Delay suggested to senders (RetryInfo) when the pipeline is full."""

# Trailing metadata keys for RetryInfo: the standard google.rpc.Status details, and the key
# the OpenTelemetry Python exporter reads (it does not parse grpc-status-details-bin).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_OTEL_PYTHON_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


@dataclass(frozen=True)
class GrpcReceiverSettings(ListenerSettings):
    """Settings every gRPC receiver has; subclasses set their own ``port`` default."""

    max_message_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"doc": "Largest request message; gRPC refuses bigger ones "
                         "(RESOURCE_EXHAUSTED).", "min": 1024, "max": 1024 * 1024 * 1024})
    max_record_bytes: int = field(
        default=1024 * 1024,
        metadata={"doc": "Largest encoded record; bigger ones are rejected (counted, reported "
                         "to the sender).", "min": 64})


# --------------------------------------------------------------------------- TLS


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """gRPC server credentials for ``tls``, or None when TLS is off.

    With ``client_ca_file`` set, clients must present a certificate signed by
    that CA (mTLS). The files are first loaded with the checks every TLS
    listener uses (``sidecar.tls.server_context``), so a missing or bad file is
    a ValueError/OSError that says so, not an unexplained bind failure.
    """
    if server_context(tls) is None:
        return None
    assert tls.cert_file is not None and tls.key_file is not None  # checked just above
    client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


# --------------------------------------------------------------------------- health


class GrpcHealth:
    """The overall SERVING / NOT_SERVING state every gRPC server publishes.

    The app owns one and passes it to each gRPC receiver; ``set_serving``
    updates the health service of every running server, for the overall
    service ``""`` and each service the server hosts. Starts SERVING: the app
    starts receivers last, once the pipeline can take records.
    """

    def __init__(self) -> None:
        self._serving = True
        self._servicers: dict[_HealthServicer, tuple[str, ...]] = {}

    @property
    def serving(self) -> bool:
        return self._serving

    async def set_serving(self, serving: bool) -> None:
        """Publish ``serving`` on every running server's health service."""
        self._serving = serving
        for servicer, names in self._servicers.items():
            await self._publish(servicer, names)

    async def _attach(self, servicer: _HealthServicer, names: tuple[str, ...]) -> None:
        self._servicers[servicer] = names
        await self._publish(servicer, names)

    def _detach(self, servicer: _HealthServicer) -> None:
        self._servicers.pop(servicer, None)

    async def _publish(self, servicer: _HealthServicer, names: tuple[str, ...]) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self._serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in (grpc_health.OVERALL_HEALTH, *names):
            await servicer.set(name, status)


# --------------------------------------------------------------------------- server

MethodHandlers = Mapping[str, grpc.RpcMethodHandler]


class GrpcServer:
    """One ``grpc.aio`` server on one port: the given services plus health and reflection.

    ``services`` maps a fully qualified service name to its method handlers.
    ``port`` is the bound port once ``start`` returned (useful with port 0).
    """

    def __init__(self, settings: GrpcReceiverSettings, services: Mapping[str, MethodHandlers],
                 health: GrpcHealth):
        self._settings = settings
        self._services = dict(services)
        self._health = health
        self._server: grpc.aio.Server | None = None
        self._health_servicer: _HealthServicer | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve. Raises OSError naming host:port when the port cannot be bound."""
        s = self._settings
        credentials = server_credentials(s.tls)
        server = grpc.aio.server(options=[
            # grpc enables SO_REUSEPORT by default, which would let a second
            # process bind a port in use and silently share its traffic.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", s.max_message_bytes),
        ])
        for name, methods in self._services.items():
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, methods),))
        health = _HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (*self._services, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:
            await server.stop(None)
            raise OSError(f"gRPC cannot listen on {address}: address in use or not "
                          "available") from None
        await self._health._attach(health, tuple(self._services))
        await server.start()
        self._server, self._health_servicer, self.port = server, health, port

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish within ``grace``.

        Safe to call before ``start`` and more than once.
        """
        if self._server is None or self._health_servicer is None:
            return
        self._health._detach(self._health_servicer)
        await self._health_servicer.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = self._health_servicer = None


class GrpcListener:
    """The receiver shape (``port``, ``start``, ``stop``) of a receiver served by ``_server``."""

    _server: GrpcServer

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return self._server.port

    async def start(self) -> None:
        """Bind and serve; OSError names host:port if the port cannot be bound."""
        await self._server.start()

    async def stop(self, grace: float) -> None:
        """Stop taking calls; calls and streams in flight get ``grace`` seconds to finish."""
        await self._server.stop(grace)


# --------------------------------------------------------------------------- decoding

M = TypeVar("M", bound=Message)


class MalformedMessage(Exception):
    """Request bytes that are not a valid message of the expected type."""


class RequestDecoder(Generic[M]):
    """Parses request bytes into ``message_class``, tolerating invalid UTF-8.

    Parsing is strict first (the real generated class). If that fails, the
    bytes are parsed again with a *lenient twin* of the class: built from the
    same descriptors, but with every ``string`` field declared ``bytes``
    (same wire format, no UTF-8 check). Its string fields hold ``bytes``, so
    read them through ``Utf8Text``. Only bytes neither class accepts raise
    ``MalformedMessage``.
    """

    def __init__(self, message_class: type[M]):
        self._strict = message_class
        self._lenient: type[M] = _lenient_twin(message_class.DESCRIPTOR)
        self.full_name: str = message_class.DESCRIPTOR.full_name

    def __call__(self, raw: bytes) -> M:
        try:
            return self._strict.FromString(raw)
        except DecodeError:
            pass
        try:
            return self._lenient.FromString(raw)
        except DecodeError:
            raise MalformedMessage(f"request is not a valid {self.full_name}") from None


def _lenient_twin(descriptor: Descriptor) -> Any:
    pool = descriptor_pool.DescriptorPool()
    for file in _with_dependencies(descriptor.file):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        _strings_to_bytes(proto.message_type)
        pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(descriptor.full_name))


def _with_dependencies(file: FileDescriptor) -> list[FileDescriptor]:
    """``file`` and everything it imports, dependencies first."""
    ordered: list[FileDescriptor] = []

    def visit(f: FileDescriptor) -> None:
        if f not in ordered:
            for dependency in f.dependencies:
                visit(dependency)
            ordered.append(f)

    visit(file)
    return ordered


def _strings_to_bytes(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        if not message.options.map_entry:  # map keys cannot be bytes
            for f in message.field:
                if f.type == FieldDescriptor.TYPE_STRING:
                    f.type = FieldDescriptor.TYPE_BYTES
        _strings_to_bytes(message.nested_type)


class Utf8Text:
    """Reads a ``string`` field (``bytes`` after a lenient parse) as text.

    Invalid UTF-8 becomes U+FFFD and sets ``replaced``. Use one instance per
    record so ``replaced`` says whether that record needs the
    ``decode_replaced`` flag.
    """

    __slots__ = ("replaced",)

    def __init__(self) -> None:
        self.replaced = False

    def __call__(self, value: str | bytes) -> str:
        if isinstance(value, str):
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            self.replaced = True
            return value.decode("utf-8", "replace")


# --------------------------------------------------------------------------- intake


@dataclass
class MappedBatch:
    """The records mapped from one request, and what was refused or repaired on the way."""

    max_record_bytes: int
    records: list[Record] = field(default_factory=list)
    rejected: int = 0
    replaced: int = 0

    def admits(self, message: Message) -> bool:
        """Whether a record's encoded size is within the limit; counts it as rejected if not."""
        if message.ByteSize() > self.max_record_bytes:
            self.rejected += 1
            return False
        return True

    def add(self, record: Record, text: Utf8Text) -> None:
        """Keep ``record``; flag it if ``text`` had to replace invalid UTF-8."""
        if text.replaced:
            record.flags.add(Flag.DECODE_REPLACED)
            self.replaced += 1
        self.records.append(record)

    @property
    def error(self) -> str:
        """Why records were rejected (no record content), or ""."""
        if not self.rejected:
            return ""
        return (f"{self.rejected} record(s) rejected: encoded size above the "
                f"{self.max_record_bytes}-byte limit")


class GrpcIntake:
    """Decode, account and submit for one gRPC receiver, answering errors with gRPC statuses."""

    def __init__(self, receiver: str, submit: Submit, telemetry: Telemetry):
        self._receiver = receiver
        self._submit = submit
        self._telemetry = telemetry

    async def decode(self, decoder: RequestDecoder[M], raw: bytes,
                     context: grpc.aio.ServicerContext) -> M:
        """The parsed request; on malformed bytes count it and abort with INVALID_ARGUMENT."""
        try:
            return decoder(raw)
        except MalformedMessage as exc:
            self._telemetry.count_receiver_error(self._receiver, "malformed")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def admit(self, mapped: MappedBatch, context: grpc.aio.ServicerContext) -> None:
        """Count refusals and repairs, then submit the records; return once accepted.

        A full pipeline aborts the call with RESOURCE_EXHAUSTED plus RetryInfo,
        a closing one or a batch that could not be made durable with
        UNAVAILABLE; either way nothing was accepted and the sender should resend.
        """
        if mapped.rejected:
            self._telemetry.count_receiver_error(self._receiver, "oversized", mapped.rejected)
        if mapped.replaced:
            self._telemetry.count_receiver_error(self._receiver, "invalid_utf8", mapped.replaced)
        if not mapped.records:
            return
        batch = Batch(mapped.records, source=self._receiver)
        try:
            await self._submit(batch)
        except PipelineFull:
            self._telemetry.count_receiver_error(self._receiver, "backpressure")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                _PIPELINE_FULL, _retry_metadata(_PIPELINE_FULL))
        except PipelineClosed:
            self._telemetry.count_receiver_error(self._receiver, "shutting_down")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sidecar is shutting down")
        except BatchRejected as exc:
            # Not durable (processing or spool failure): retryable, like OTLP's UNAVAILABLE.
            self._telemetry.count_receiver_error(self._receiver, "rejected")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"batch not accepted: {exc}")
        self._telemetry.count_received(self._receiver, batch)


_PIPELINE_FULL = "pipeline is full, retry later"


def _retry_metadata(message: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying RetryInfo, as google.rpc.Status details and for OTel Python."""
    retry_info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=RETRY_DELAY_SECONDS))
    detail = any_pb2.Any()
    detail.Pack(retry_info)
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message,
                               details=[detail])
    return ((_STATUS_DETAILS_KEY, status.SerializeToString()),
            (_OTEL_PYTHON_RETRY_INFO_KEY, retry_info.SerializeToString()))

"""Our own ingest service, ``logminer.v1.LogMinerService`` (proto/logminer/v1/logminer.proto).

Strategy: ``Push`` takes one Batch and answers one Ack. ``Stream`` reads
batches in order and answers each with an Ack echoing its sequence number,
sent only after the pipeline accepted the batch; the client pipelines batches
and, after a broken stream, resends those it has no Ack for (at-least-once,
no deduplication here). The stream is handled one batch at a time, so a slow
pipeline slows the stream through gRPC flow control; if the pipeline stays
full the stream ends with RESOURCE_EXHAUSTED plus RetryInfo, after the Acks
for every batch accepted before. Requests are decoded through the shared
``RequestDecoder``: the body is ``bytes`` in the proto and invalid UTF-8 in
any text becomes U+FFFD (record flagged ``decode_replaced``); undecodable
bytes end that call with INVALID_ARGUMENT and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from sidecar import defaults
from sidecar._proto.logminer.v1 import logminer_pb2 as pb
from sidecar.pipeline import Submit
from sidecar.receivers.grpc_server import (
    GrpcHealth,
    GrpcIntake,
    GrpcReceiverSettings,
    GrpcServer,
    MappedBatch,
    RequestDecoder,
    Utf8Text,
    port_field,
)
from sidecar.receivers.otlp import key_values_to_dict
from sidecar.record import Record
from sidecar.telemetry import Telemetry

SERVICE = pb.DESCRIPTOR.services_by_name["LogMinerService"].full_name
DEFAULT_TAG = "grpc"


@dataclass(frozen=True)
class GrpcSettings(GrpcReceiverSettings):
    """``logminer.v1`` gRPC service settings."""

    port: int = port_field(defaults.GRPC_PORT)


def batch_to_records(batch: pb.Batch, max_record_bytes: int, received_ns: int) -> MappedBatch:
    """Map a ``logminer.v1.Batch``, rejecting records above ``max_record_bytes``.

    An empty tag becomes "grpc" and a zero time ``received_ns``; the body is
    decoded as UTF-8 with replacement. ``batch`` may come from a lenient parse.
    """
    mapped = MappedBatch(max_record_bytes)
    for message in batch.records:
        if not mapped.admits(message):
            continue
        text = Utf8Text()
        record = Record(
            body=text(message.body),
            time_ns=message.time_unix_nano or received_ns,
            tag=text(message.tag) or DEFAULT_TAG,
            attributes=key_values_to_dict(message.attributes, text),
            resource=key_values_to_dict(message.resource, text),
            severity=text(message.severity),
        )
        mapped.add(record, text)
    return mapped


class GrpcReceiver:
    """Serves ``logminer.v1.LogMinerService`` (default port 50051)."""

    name = "grpc"

    def __init__(self, settings: GrpcSettings, submit: Submit, telemetry: Telemetry,
                 health: GrpcHealth | None = None):
        self._settings = settings
        self._intake = GrpcIntake(self.name, submit, telemetry)
        self._decoder = RequestDecoder(pb.Batch)
        serialize = pb.Ack.SerializeToString
        methods = {
            "Push": grpc.unary_unary_rpc_method_handler(
                self._push, response_serializer=serialize),
            "Stream": grpc.stream_stream_rpc_method_handler(
                self._stream, response_serializer=serialize),
        }
        self._server = GrpcServer(settings, {SERVICE: methods},
                                  health if health is not None else GrpcHealth())

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return self._server.port

    async def start(self) -> None:
        """Bind and serve; OSError names host:port if the port cannot be bound."""
        await self._server.start()

    async def stop(self, grace: float) -> None:
        """Stop taking calls; calls and streams in flight get ``grace`` seconds."""
        await self._server.stop(grace)

    async def _push(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        return await self._accept(raw, context)

    async def _stream(self, requests: AsyncIterator[bytes],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Ack]:
        async for raw in requests:
            yield await self._accept(raw, context)

    async def _accept(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        """Decode, submit and acknowledge one batch (aborts the call on failure)."""
        batch = await self._intake.decode(self._decoder, raw, context)
        mapped = batch_to_records(batch, self._settings.max_record_bytes, time.time_ns())
        await self._intake.admit(mapped, context)
        return pb.Ack(sequence=batch.sequence, accepted=len(mapped.records),
                      rejected=mapped.rejected, error=mapped.error)

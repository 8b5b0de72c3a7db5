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

``Aggregates`` (served only when the app passes a ``Reporter``) answers a
differentially private report query off the event loop (the noise sampling
and the ledger's fsync are blocking). The consumer charged is the subject CN
of the client certificate when the call has one (mTLS), else the id the
request names. Refusals map to PERMISSION_DENIED (budget), FAILED_PRECONDITION
(exact reports not allowed), INVALID_ARGUMENT (bad query) and UNAVAILABLE
(ledger unusable); their messages come from ``sidecar.privacy`` and never
contain a count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from sidecar import defaults
from sidecar._proto.logminer.v1 import logminer_pb2 as pb
from sidecar.aggregates import Breakdown
from sidecar.pipeline import Submit
from sidecar.privacy import (
    BudgetExceeded,
    ExactReportsDisabled,
    LedgerError,
    Report,
    Reporter,
    ReportQuery,
)
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
from sidecar.receivers.otlp import key_values_to_dict
from sidecar.record import Record
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

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


def report_query(request: pb.AggregatesRequest, certificate_cn: str | None) -> ReportQuery:
    """The query an ``AggregatesRequest`` asks; ValueError names what is wrong with it.

    ``certificate_cn``, the caller's client certificate CN, wins over ``request.consumer``.
    ``request`` may come from a lenient parse (see ``RequestDecoder``).
    """
    group_by = set()
    for value in request.group_by:
        try:
            name = pb.Breakdown.Name(value).removeprefix("BREAKDOWN_")
        except ValueError:
            name = "UNSPECIFIED"
        if name not in Breakdown.__members__:
            raise ValueError("group_by: expected BREAKDOWN_HOUR, BREAKDOWN_TEMPLATE or "
                             "BREAKDOWN_DETECTOR")
        group_by.add(Breakdown[name])
    if request.since_unix_seconds < 0 or request.until_unix_seconds < 0:
        raise ValueError("since_unix_seconds and until_unix_seconds must not be negative")
    return ReportQuery(consumer=certificate_cn or Utf8Text()(request.consumer),
                       since=request.since_unix_seconds or None,
                       until=request.until_unix_seconds or None,
                       group_by=frozenset(group_by), exact=request.exact)


def report_message(report: Report) -> pb.AggregatesReport:
    """The ``AggregatesReport`` for a released report."""
    return pb.AggregatesReport(
        consumer=report.consumer,
        mechanism=pb.Mechanism.Value(f"MECHANISM_{report.mechanism.name}"),
        since_unix_seconds=report.since, until_unix_seconds=report.until,
        counts=[pb.AggregateCount(measure=pb.Measure.Value(f"MEASURE_{row.measure.name}"),
                                  hour_unix_seconds=row.hour or 0, key=row.key or "",
                                  template=row.template or "", value=row.value)
                for row in report.rows],
        noise=[pb.MeasureNoise(measure=pb.Measure.Value(f"MEASURE_{n.measure.name}"),
                               sensitivity=n.sensitivity, scale=n.scale,
                               threshold=n.threshold or 0)
               for n in report.noise],
        epsilon_spent=float(report.spent.epsilon), delta_spent=float(report.spent.delta),
        epsilon_remaining=float(report.remaining.epsilon),
        delta_remaining=float(report.remaining.delta))


def certificate_cn(context: grpc.aio.ServicerContext) -> str | None:
    """The subject CN of the caller's verified client certificate, if the call has one."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode("utf-8", "replace") if names else None


class GrpcReceiver(GrpcListener):
    """Serves ``logminer.v1.LogMinerService`` (default port 50051)."""

    name = "grpc"

    def __init__(self, settings: GrpcSettings, submit: Submit, telemetry: Telemetry,
                 health: GrpcHealth | None = None, *, reporter: Reporter | None = None):
        self._settings = settings
        self._intake = GrpcIntake(self.name, submit, telemetry)
        self._decoder = RequestDecoder(pb.Batch)
        self._query_decoder = RequestDecoder(pb.AggregatesRequest)
        self._reporter = reporter
        serialize = pb.Ack.SerializeToString
        methods = {
            "Push": grpc.unary_unary_rpc_method_handler(
                self._push, response_serializer=serialize),
            "Stream": grpc.stream_stream_rpc_method_handler(
                self._stream, response_serializer=serialize),
        }
        if reporter is not None:  # else gRPC answers Aggregates with UNIMPLEMENTED
            methods["Aggregates"] = grpc.unary_unary_rpc_method_handler(
                self._aggregates, response_serializer=pb.AggregatesReport.SerializeToString)
        self._server = GrpcServer(settings, {SERVICE: methods},
                                  health if health is not None else GrpcHealth())

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

    async def _aggregates(self, raw: bytes,
                          context: grpc.aio.ServicerContext) -> pb.AggregatesReport:
        """Answer one report query, or abort with the status the proto documents."""
        assert self._reporter is not None  # the method is registered only with a reporter
        request = await self._intake.decode(self._query_decoder, raw, context)
        try:
            query = report_query(request, certificate_cn(context))
            report = await asyncio.to_thread(self._reporter.report, query)
        except BudgetExceeded as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ExactReportsDisabled as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (LedgerError, OSError) as exc:
            log.error("aggregate report refused: privacy ledger unusable (%s)", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the privacy ledger is unavailable; nothing was released")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return report_message(report)

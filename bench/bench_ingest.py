"""Ingest throughput: records/s into the pipeline per receiver, with a real client in another
process, and the raw decode speed of the protocol codecs.

Receivers. One ``sidecar.app.App`` runs in this process on free ports with null processing (no
stages), a counting exporter and otherwise the default config - so the durable spool (in a
temporary data_dir) and the pipeline's batching delay are measured too. For each receiver a
client process sends N records as fast as it can; the rate is N over the time from the client's
first send to the moment the exporter has seen the N-th record (``time.monotonic`` is
system-wide on Linux, so the two processes' clocks agree). Clients:

* forward, fluent-logger: the Python ``FluentSender`` (sync), one record per Message-mode
  message, no acks - what an application using the library sends.
* forward, PackedForward: the codec's ``ClientConnection``, chunks of 1000 records with a
  ``chunk`` id, waiting for each ack before the next chunk (as Fluent Bit's forward output does
  per flush with ``require_ack_response``; frames are packed before the clock starts).
* OTLP: the OpenTelemetry SDK's gRPC ``OTLPLogExporter`` behind a ``BatchLogRecordProcessor``
  (batches of 512; the SDK's own record building is inside the timed region).
* gRPC: ``logminer.v1`` ``Stream`` through grpcio stubs, batches of 512, sent without waiting
  for acks (pipelined), every ack read back.
* Lumberjack: the codec's ``ClientConnection``, windows of 2048 events compressed at zlib level 3
  and two windows in flight (Filebeat's defaults: ``bulk_max_size``, ``compression_level``,
  ``pipelining``; windows are built before the clock starts).

Decode. In this process only: PackedForward frames (plain and gzip) fed to the forward
codec's ``ServerConnection`` in 256 KiB reads, as the receiver reads them, against a bare
``msgpack.Unpacker`` over the same entry stream; and Lumberjack windows through its codec.

The machine has 2 cores: client and server share them, so the receiver rows measure the pair.
Run: ``python bench/bench_ingest.py`` (``--repeats``, ``--scale`` to change the work,
``--only`` to pick receivers, ``--max-delay-ms`` to override the pipeline's batching delay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from _harness import mark, marker, median_range, send_and_wait_acks

from sidecar.exporters.base import ExportResult
from sidecar.record import Batch

if TYPE_CHECKING:
    from sidecar.app import App

RECORD_LEVELS = ("info", "info", "info", "warn", "error")


def body(i: int) -> str:
    """A ~110-byte access-log-like line, varied per record."""
    return (f"2026-11-24T10:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z INFO auth: user "
            f"u{i % 5000} logged in from 10.{i % 250}.{i % 200}.{i % 100} "
            f"session={i:08x} latency_ms={i % 977}")


def forward_record(i: int) -> dict[str, str]:
    return {"message": body(i), "level": RECORD_LEVELS[i % len(RECORD_LEVELS)]}


def filebeat_event(i: int) -> dict[str, object]:
    """An event shaped like Filebeat's filestream output."""
    return {"@timestamp": f"2026-11-24T10:00:{i % 60:02d}.{i % 1000:03d}Z", "message": body(i),
            "host": {"name": "node-1"}, "input": {"type": "filestream"},
            "log": {"file": {"path": "/var/log/app/app.log"}, "offset": i * 120},
            "agent": {"type": "filebeat", "version": "9.1.0"}, "ecs": {"version": "8.0.0"}}


# --------------------------------------------------------------------------- clients
# Each runs in a child process, prints "START <monotonic>" just before its first send and
# returns once everything was sent (and acknowledged where the protocol acks).


def started() -> None:
    mark("START")


def client_fluent_logger(port: int, n: int) -> None:
    from fluent import sender

    fluent = sender.FluentSender("bench", host="127.0.0.1", port=port, nanosecond_precision=True)
    started()
    for i in range(n):
        if not fluent.emit("log", forward_record(i)):
            raise SystemExit(f"emit failed: {fluent.last_error!r}")
    fluent.close()


def client_forward_packed(port: int, n: int, chunk: int = 1000) -> None:
    from sidecar.codecs import forward

    conn = forward.ClientConnection()
    now = time.time_ns()
    frames = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        entries = [forward.Entry(now, forward_record(i)) for i in range(start, stop)]
        frames.append((f"c{start}", conn.pack_forward("bench", entries, chunk=f"c{start}",
                                                      compress=False)))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started()
        for chunk_id, frame in frames:
            send_and_wait_acks(sock, conn, [(chunk_id, frame)])


def client_otlp_sdk(port: int, n: int) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider()
    exporter = OTLPLogExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=30)
    # A queue that holds every record: the SDK drops on overflow, and a drop would stall the run.
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, schedule_delay_millis=50, max_export_batch_size=512, max_queue_size=n + 1))
    logger = provider.get_logger("bench")
    started()
    for i in range(n):
        logger.emit(body=body(i), severity_text="INFO", attributes={"level": "info"})
    if not provider.force_flush(60_000):
        raise SystemExit("force_flush timed out")
    provider.shutdown()


def client_grpc_stream(port: int, n: int, batch: int = 512) -> None:
    import grpc

    from sidecar._proto.logminer.v1 import logminer_pb2 as pb
    from sidecar._proto.logminer.v1 import logminer_pb2_grpc as pb_grpc

    now = time.time_ns()
    batches = [pb.Batch(sequence=seq, records=[
        pb.Record(time_unix_nano=now, tag="bench", body=body(i).encode(), severity="INFO")
        for i in range(start, min(n, start + batch))])
        for seq, start in enumerate(range(0, n, batch), start=1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = pb_grpc.LogMinerServiceStub(channel)
        started()
        accepted = sum(ack.accepted for ack in stub.Stream(iter(batches), timeout=120))
    if accepted != n:
        raise SystemExit(f"{accepted} of {n} records acknowledged")


def client_lumberjack(port: int, n: int, window: int = 2048, in_flight: int = 2) -> None:
    from sidecar.codecs import lumberjack

    conn = lumberjack.ClientConnection(compress_level=3)
    sizes = [min(window, n - start) for start in range(0, n, window)]
    frames = [conn.send_window([filebeat_event(i) for i in range(start, start + size)])
              for start, size in zip(range(0, n, window), sizes, strict=True)]
    waiting: deque[int] = deque()
    sent = acked = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started()
        while acked < len(frames):
            while sent < len(frames) and len(waiting) < in_flight:
                sock.sendall(frames[sent])
                waiting.append(sizes[sent])
                sent += 1
            conn.receive_data(sock.recv(65536))
            while (event := conn.next_event()) is not lumberjack.NEED_DATA:
                if isinstance(event, lumberjack.ConnectionClosed):
                    raise SystemExit("connection closed before every window was acked")
                if event.seq and event.seq == waiting[0]:  # ack(0) is a keepalive
                    waiting.popleft()
                    acked += 1


@dataclass(frozen=True)
class Case:
    receiver: str  # the App's receiver name
    client: str  # what the row says
    run: Callable[[int, int], None]
    records: int  # per run, at --scale 1


CASES = {
    "fluent-logger": Case("forward", "fluent-logger FluentSender (Message mode, no ack)",
                          client_fluent_logger, 20_000),
    "forward-packed": Case("forward", "codec ClientConnection, PackedForward 1000/chunk + ack",
                           client_forward_packed, 100_000),
    "otlp": Case("otlp", "OTel SDK OTLPLogExporter + BatchLogRecordProcessor (512)",
                 client_otlp_sdk, 30_000),
    "grpc": Case("grpc", "grpcio stub, Stream, 512/batch, pipelined", client_grpc_stream, 100_000),
    "lumberjack": Case("lumberjack", "codec ClientConnection, windows of 2048, zlib 3, 2 in flight",
                       client_lumberjack, 100_000),
}


def client_main(kind: str, port: int, n: int) -> None:
    CASES[kind].run(port, n)
    print(f"DONE {time.monotonic()!r}", flush=True)


# --------------------------------------------------------------------------- server side


class CountingExporter:
    """Counts exported records and notes when the target count was reached."""

    name = "counting"

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached_at = 0.0
        self.reached = asyncio.Event()

    def expect(self, target: int) -> None:
        self.count, self.target, self.reached_at = 0, target, 0.0
        self.reached.clear()

    async def start(self) -> None:
        return None

    async def export(self, batch: Batch) -> ExportResult:
        self.count += len(batch)
        if self.target and self.count >= self.target and not self.reached.is_set():
            self.reached_at = time.monotonic()
            self.reached.set()
        return ExportResult.SUCCESS

    async def shutdown(self) -> None:
        return None


def null_app(exporter: CountingExporter, data_dir: str, max_delay_ms: int | None) -> App:
    """The App on free ports with no processing stages; HTTP endpoints off.

    Everything else is the default config, so the spool (under ``data_dir``) and the
    pipeline's batching delay are part of what is measured.

    Imported here, not at the top: a receiver module that is missing or broken then costs the
    receiver rows only, and the decode rows are still measured.
    """
    from sidecar import config
    from sidecar.app import App

    text = (f"data_dir: {data_dir}\nhttp: {{enabled: false}}\nreceivers: {{forward: {{port: 0}},"
            " otlp: {port: 0}, grpc: {port: 0}, lumberjack: {port: 0}}\n")
    if max_delay_ms is not None:
        text += f"pipeline: {{batch: {{max_delay_ms: {max_delay_ms}}}}}\n"
    cfg = config.loads(text)
    # Null processing: receive, queue, spool, export; no stages.
    return App(cfg, config.Secrets(hash_secret=os.urandom(32)), exporters=[exporter], stages=[])


async def run_case(port: int, exporter: CountingExporter, kind: str, n: int) -> float:
    """One client run; returns records/s. Raises RuntimeError if the run failed."""
    exporter.expect(n)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--client", kind, "--port", str(port),
        "-n", str(n), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(180):
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"client failed: {err.decode(errors='replace')[-300:]}")
            await exporter.reached.wait()
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"timed out with {exporter.count} of {n} records") from None
    start = marker(out.decode(), "START")
    await asyncio.sleep(0.1)  # let stragglers (duplicates) show up before checking the count
    if exporter.count != n:
        raise RuntimeError(f"exported {exporter.count} records, expected {n}")
    return n / (exporter.reached_at - start)


async def bench_receivers(repeats: int, scale: float, only: list[str], data_dir: str,
                          max_delay_ms: int | None) -> list[tuple[Case, int, list[float] | str]]:
    exporter = CountingExporter()
    rows: list[tuple[Case, int, list[float] | str]] = []
    try:
        app = null_app(exporter, data_dir, max_delay_ms)
        await app.start()
    except Exception as exc:  # a receiver module missing or broken: nothing to measure
        return [(case, 0, f"not measured: app did not start ({exc!r})")
                for case in CASES.values()]
    try:
        ports = {r.name: r.port for r in app.receivers}
        for kind in only:
            case = CASES[kind]
            n = max(100, int(case.records * scale))
            rates: list[float] = []
            try:
                if case.receiver not in ports:
                    raise RuntimeError(f"no {case.receiver} receiver in the app")
                for _ in range(repeats):
                    rates.append(await run_case(ports[case.receiver], exporter, kind, n))
                    print(f"  {kind}: {rates[-1]:,.0f} records/s", file=sys.stderr)
                rows.append((case, n, rates))
            except Exception as exc:
                rows.append((case, n, f"not measured: {exc}"))
                print(f"  {kind}: {exc}", file=sys.stderr)
    finally:
        await app.stop()
    return rows


# --------------------------------------------------------------------------- decode


def decode_forward(stream: bytes) -> int:
    from sidecar.codecs import forward

    conn = forward.ServerConnection()
    count = 0
    for offset in range(0, len(stream), READ_SIZE):
        conn.receive_data(stream[offset:offset + READ_SIZE])
        while (event := conn.next_event()) is not forward.NEED_DATA:
            count += len(event.entries)
    return count


def decode_msgpack_baseline(entries: bytes) -> int:
    import msgpack

    unpacker = msgpack.Unpacker(raw=False)
    count = 0
    for offset in range(0, len(entries), READ_SIZE):
        unpacker.feed(entries[offset:offset + READ_SIZE])
        count += sum(1 for _ in unpacker)
    return count


def decode_lumberjack(stream: bytes) -> int:
    from sidecar.codecs import lumberjack

    conn = lumberjack.ServerConnection()
    count = 0
    for offset in range(0, len(stream), READ_SIZE):
        conn.receive_data(stream[offset:offset + READ_SIZE])
        while (event := conn.next_event()) is not lumberjack.NEED_DATA:
            count += isinstance(event, lumberjack.DataFrame)
    return count


READ_SIZE = 256 * 1024


def bench_decode(repeats: int, scale: float) -> list[tuple[str, int, int, list[float]]]:
    """(what, records, wire bytes, seconds per repeat) for each in-process decode."""
    import msgpack

    from sidecar.codecs import forward, lumberjack

    n = max(1000, int(200_000 * scale))
    now = time.time_ns()
    records = [forward_record(i) for i in range(n)]
    client = forward.ClientConnection()

    def frames(compress: bool) -> bytes:
        return b"".join(client.pack_forward(
            "bench", [forward.Entry(now, r) for r in records[start:start + 1000]],
            chunk=f"c{start}", compress=compress) for start in range(0, n, 1000))

    packer = msgpack.Packer(use_bin_type=True)
    event_time = msgpack.ExtType(0, struct.pack(">II", *divmod(now, 1_000_000_000)))
    entries = b"".join(packer.pack([event_time, r]) for r in records)
    lj = lumberjack.ClientConnection(compress_level=3)
    windows = b"".join(lj.send_window([filebeat_event(i) for i in range(s, min(n, s + 2048))])
                       for s in range(0, n, 2048))
    work = [("forward codec, PackedForward (1000/frame)", frames(False), decode_forward),
            ("forward codec, CompressedPackedForward (gzip)", frames(True), decode_forward),
            ("bare msgpack.Unpacker over the same entries", entries, decode_msgpack_baseline),
            ("lumberjack codec, windows of 2048 (zlib 3)", windows, decode_lumberjack)]
    rows = []
    for what, data, decode in work:
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            count = decode(data)
            seconds.append(time.perf_counter() - t0)
            if count != n:
                raise RuntimeError(f"{what}: decoded {count} of {n}")
        rows.append((what, n, len(data), seconds))
    return rows


# --------------------------------------------------------------------------- report


def report(receivers: list[tuple[Case, int, list[float] | str]],
           decode: list[tuple[str, int, int, list[float]]], repeats: int) -> str:
    lines = [f"Ingest, null processing: median of {repeats} runs ({platform.python_version()}, "
             f"{os.cpu_count()} CPUs shared by client and server).", "",
             "| receiver | client (separate process) | records/run | records/s (median) "
             "| min - max |", "|---|---|---:|---:|---:|"]
    for case, n, result in receivers:
        if isinstance(result, str):
            lines.append(f"| {case.receiver} | {case.client} | {n:,} | {result} | |")
        else:
            median, spread = median_range(result)
            lines.append(f"| {case.receiver} | {case.client} | {n:,} | {median} | {spread} |")
    lines += ["", "Decode only, in-process (wire bytes fed in 256 KiB reads):", "",
              "| decoder | records | records/s (median) | MB/s (wire) |",
              "|---|---:|---:|---:|"]
    for what, n, size, seconds in decode:
        median = statistics.median(seconds)
        lines.append(f"| {what} | {n:,} | {n / median:,.0f} | {size / median / 1e6:,.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every record count")
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--max-delay-ms", type=int, default=None,
                        help="pipeline.batch.max_delay_ms (default: the sidecar's default)")
    parser.add_argument("--client", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.port, args.n)
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as data_dir:
        receivers = asyncio.run(bench_receivers(args.repeats, args.scale, args.only, data_dir,
                                                args.max_delay_ms))
    decode = bench_decode(args.repeats, args.scale)
    print(report(receivers, decode, args.repeats))


if __name__ == "__main__":
    main()

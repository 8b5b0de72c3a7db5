"""At-least-once under a real crash: kill -9 the sidecar while a gRPC client streams with acks.

A grpcio client streams 100k records in sequenced batches over our Stream RPC and
remembers which batches were acknowledged. The sidecar is killed with SIGKILL part way,
restarted on the same data directory, and the client resends every unacknowledged batch
and the rest. After a graceful stop, every acknowledged record must be in the file
exporter's output at least once; duplicates (allowed by at-least-once) are counted and
reported.
"""

import json
import os
import signal
import threading

import grpc
from support import ALL_PORTS_FREE

from sidecar._proto.logminer.v1 import logminer_pb2 as pb
from sidecar._proto.logminer.v1 import logminer_pb2_grpc as pb_grpc

TOTAL = 100_000
PER_BATCH = 500


def batch(seq):
    first = (seq - 1) * PER_BATCH
    return pb.Batch(sequence=seq, records=[
        pb.Record(tag="fault", body=f"record {n} of the crash test".encode(),
                  time_unix_nano=1_700_000_000_000_000_000 + n)
        for n in range(first, first + PER_BATCH)])


def stream(port, seqs, acked, kill_after=None, on_kill=None):
    """Send batches ``seqs`` on one stream; record acks; stop quietly if the server dies."""
    def requests():
        for seq in seqs:
            yield batch(seq)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.LogMinerServiceStub(channel).Stream(requests(), timeout=120)
        try:
            for ack in call:
                assert ack.accepted == PER_BATCH and not ack.rejected
                acked.add(ack.sequence)
                if kill_after is not None and len(acked) == kill_after:
                    on_kill()
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def test_kill_9_mid_stream_loses_no_acknowledged_record(sidecar_factory, tmp_path):
    out = tmp_path / "delivered.jsonl"
    config = ALL_PORTS_FREE + f"exporters:\n  - type: file\n    path: {out}\n"
    first = sidecar_factory(config)
    acked: set[int] = set()
    seqs = list(range(1, TOTAL // PER_BATCH + 1))
    killed = threading.Event()

    def kill():
        os.kill(first.proc.pid, signal.SIGKILL)
        killed.set()

    stream(first.ports["grpc"], seqs, acked, kill_after=len(seqs) // 3, on_kill=kill)
    first.proc.wait(timeout=30)
    assert killed.is_set() and first.proc.returncode == -signal.SIGKILL
    acked_before_kill = set(acked)

    # Same data directory: the spool and its cursors survive; unacked batches are resent.
    second = sidecar_factory(config, data_dir=tmp_path / "data-0")
    stream(second.ports["grpc"], [s for s in seqs if s not in acked], acked)
    code, _, stderr = second.stop(timeout=120)
    assert code == 0, stderr
    assert acked == set(seqs)

    delivered = [json.loads(line)["body"] for line in out.read_text().splitlines()]
    counts: dict[str, int] = {}
    for body in delivered:
        counts[body] = counts.get(body, 0) + 1
    missing = [n for n in range(TOTAL) if f"record {n} of the crash test" not in counts]
    duplicates = sum(c - 1 for c in counts.values())
    print(f"\nkill -9 after {len(acked_before_kill)} acked batches: {len(delivered)} delivered "
          f"for {TOTAL} sent, {duplicates} duplicates, {len(missing)} missing")
    assert missing == []


def test_disk_error_on_the_spool_refuses_the_batch_with_a_clear_error(tmp_path, caplog):
    """A spool write error: the sender is not acknowledged, the error is logged and counted,
    nothing raw is written anywhere, and writes resume once the disk is back."""
    import asyncio
    import socket

    from support import in_process_app, port_of

    from sidecar.codecs import forward

    planted = "jane.doe@example.com"

    def send(port, chunk):
        client = forward.ClientConnection()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(client.pack_forward(
                "app", [forward.Entry(1, {"message": f"login {planted}"})], chunk=chunk,
                compress=False))
            data = sock.recv(4096)  # the ack, or b"" when the sidecar closes without one
        client.receive_data(data)
        event = client.next_event()
        return isinstance(event, forward.AckReceived)

    async def main():
        app = in_process_app(tmp_path / "data")
        await app.start()
        spool = app.pipeline.spool
        try:
            # A fault we cannot make real on this disk: writes that fail with ENOSPC.
            spool._tail = open("/dev/full", "ab")
            assert not await asyncio.to_thread(send, port_of(app, "forward"), "c1")
            # The spool reopened its own tail: the next chunk is accepted.
            assert await asyncio.to_thread(send, port_of(app, "forward"), "c2")
            await app.memory.wait_for(1, timeout=10)
        finally:
            await app.stop()
        registry = app.telemetry.registry
        assert registry.get_sample_value("logminer_pipeline_failures_total",
                                         {"kind": "spool_write"}) == 1
        assert registry.get_sample_value("logminer_receiver_errors_total",
                                         {"receiver": "forward", "kind": "rejected"}) == 1
        assert "cannot write to spool" in caplog.text and planted not in caplog.text
        for path in (tmp_path / "data").rglob("*"):
            if path.is_file():
                assert planted.encode() not in path.read_bytes(), path
        assert [r.body.startswith("login <EMAIL:") for r in app.memory.records] == [True]

    asyncio.run(main())

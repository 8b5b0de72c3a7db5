"""End to end: records/s and latency from a forward client through the whole sidecar into a
downstream forward receiver, with the spool's fsync policy at its default and at ``always``.

Three separate processes per run, all on this machine's 2 cores (nothing is in-process: the
sidecar gets its own interpreter and GIL, as deployed, and every byte crosses real sockets):

* the sidecar: ``logminer serve --config`` with a generated config - every receiver and
  ``/ready`` on free loopback ports, a fresh ``data_dir`` (so the durable file spool, a new
  template table, empty sessions), the shipped ``models/hdfs`` bundle, ``LOGMINER_HASH_SECRET``
  set, one ``forward`` exporter in its default mode (``ack``: PackedForward, gzip, at-least-once)
  to the downstream, and otherwise the defaults; ``spool.fsync`` is the default (``interval``,
  1 s) or ``always``;
* the downstream: our ``ForwardReceiver`` as the aggregator (like ``logminer demo``'s), which
  notes ``time.monotonic()`` when each record arrives and acks every chunk at once;
* the client: the forward codec's ``ClientConnection`` over blocking sockets, sending
  PackedForward chunks with a ``chunk`` id and waiting for their acks - one chunk in flight per
  connection, as a Fluent Bit ``forward`` output worker with ``require_ack_response`` does, and
  8 connections by default, so the sidecar, not the client's ack window, sets the pace (and the
  fixed-rate schedule is kept at half the max). Each chunk is split by tag (one frame per tag,
  each acked; the receiver submits them one after the other). Every record carries two attributes:
  ``seq`` and its send time ``sent_s`` (``time.monotonic()``, system-wide on Linux; a float, so
  the redactor does not scan it, as it scans only integers of 7+ digits and strings), stamped
  just before the chunk is packed. The time the rate schedule wanted a record sent follows from
  its ``seq`` and the schedule's start, which the client reports.

Workload: raw HDFS lines (``shared/data/hdfs_raw_labelled/HDFS_20000.log``, block ids renumbered
on every further pass so sessions stay new) interleaved with synthetic bank-application lines
from ``sidecar.redact.corpus`` with planted personal data (``--bank-share``, default 10%,
about the demo's mix).

Measured:

1. max throughput: N records sent as fast as the acks allow; records/s = N / (last arrival
   downstream - first send). Every record must arrive (duplicates from resends are counted).
2. latency at a fixed offered load of half of (1)'s median for the same fsync policy: chunks
   scheduled at a constant rate, latency = arrival - sent_s per record (p50/p99/p99.9) after a
   warm-up; "from schedule" counts from the scheduled send time instead, so time a chunk
   waited for a free connection counts too (no coordinated omission).
3. per-stage CPU cost in this process, on the same records: each step the sidecar runs for a
   record, alone, records per CPU-second (and wall, which counts the fsync waits);
4. with ``--profile``: one more max-throughput run (default fsync) with ``py-spy record --gil``
   attached to the sidecar (``pip install py-spy``): what holds the GIL, by component and by
   function. One GIL serialises the sidecar's Python work, so this is where its time goes.

Run: ``python bench/bench_e2e.py`` (about 4 minutes; ``--repeats``, ``--scale``, ``--only``,
``--profile``; ``--help`` for the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _harness import free_port, machine, mark, marker, median_range, send_and_wait_acks

from sidecar.codecs import forward
from sidecar.record import Batch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HDFS_LOG = DATA / "hdfs_raw_labelled" / "HDFS_20000.log"
HDFS_TAG, BANK_TAG = "hdfs.datanode", "bank.app"
MODES = ("interval", "always")  # spool.fsync: the default, then the strictest
READ_SIZE = 256 * 1024  # the receiver's read size
PROFILE_HZ = 200


# --------------------------------------------------------------------------- workload


def workload(n: int, bank_share: float, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` (tag, forward record) pairs: HDFS lines with bank lines spread evenly among them."""
    from sidecar.redact import corpus

    hdfs = HDFS_LOG.read_text(encoding="utf-8").splitlines()
    banks = round(n * bank_share)
    bank = iter(corpus.generate(banks, seed))
    out: list[tuple[str, dict[str, Any]]] = []
    h = 0
    for i in range(n):
        if banks and int((i + 1) * banks / n) > int(i * banks / n):
            out.append((BANK_TAG, {"message": next(bank).text, "host": "payments-1"}))
            continue
        line, rounds = hdfs[h % len(hdfs)], h // len(hdfs)
        if rounds:  # a new pass: new block ids, so new sessions (same digits, a prefix)
            line = re.sub(r"blk_(-?)(\d)", lambda m, r=rounds: f"blk_{m[1]}{r}{m[2]}", line)
        out.append((HDFS_TAG, {"message": line, "host": "datanode-7"}))
        h += 1
    return out


def stamp(record: dict[str, Any], seq: int, sent: float) -> dict[str, Any]:
    return {**record, "seq": seq, "sent_s": sent}


def chunk_frames(conn: forward.ClientConnection, name: str,
                 records: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, bytes]]:
    """One PackedForward frame per tag (uncompressed, like Fluent Bit's default)."""
    now = time.time_ns()
    by_tag: dict[str, list[forward.Entry]] = defaultdict(list)
    for tag, record in records:
        by_tag[tag].append(forward.Entry(now, record))
    return [(f"{name}.{i}", conn.pack_forward(tag, entries, chunk=f"{name}.{i}", compress=False))
            for i, (tag, entries) in enumerate(by_tag.items())]


# --------------------------------------------------------------------------- client process


def client_main(port: int, n: int, rate: float, chunk: int, connections: int,
                bank_share: float, seed: int) -> None:
    """Send ``n`` records in chunks over ``connections`` connections; ``rate`` 0 = max."""
    if n >= 1_000_000:
        raise SystemExit("n must stay below 1,000,000 (seq would be scanned by the redactor)")
    records = workload(n, bank_share, seed)
    starts = range(0, n, chunk)
    interval = chunk / rate if rate else 0.0
    begin = time.monotonic() + 0.2
    mark("BEGIN", begin)  # chunk j is due at begin + j * chunk / rate
    errors: list[BaseException] = []

    def connection(first: int) -> None:
        conn = forward.ClientConnection()
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                for j in range(first, len(starts), connections):
                    due = begin + j * interval
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    sent = time.monotonic()
                    stop = min(n, starts[j] + chunk)
                    part = [(tag, stamp(record, i, sent))
                            for i, (tag, record) in enumerate(records[starts[j]:stop], starts[j])]
                    send_and_wait_acks(sock, conn, chunk_frames(conn, f"c{j}", part))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=connection, args=(c,)) for c in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"client failed: {errors[0]!r}")
    mark("SENT")


# --------------------------------------------------------------------------- downstream process


async def downstream_main(expect: int, out: str) -> None:
    """The aggregator: note each record's arrival; when ``expect`` distinct records are in,
    save them to ``out`` (npz) and print ``DONE <count>``; stop on SIGTERM."""
    from sidecar.receivers.forward import ForwardReceiver, ForwardSettings
    from sidecar.telemetry import Telemetry

    seen: set[int] = set()
    rows: list[tuple[int, float, float]] = []
    counts: Counter[str] = Counter()
    complete, stop = asyncio.Event(), asyncio.Event()

    async def collect(batch: Batch, *, durable: bool = True) -> None:
        now = time.monotonic()
        for record in batch:
            a = record.attributes
            seq = a.get("seq")
            if not isinstance(seq, int):
                counts["other"] += 1  # alert records
            elif seq in seen:
                counts["duplicates"] += 1
            else:
                seen.add(seq)
                rows.append((seq, a["sent_s"], now))
        if len(seen) >= expect:
            complete.set()

    receiver = ForwardReceiver(ForwardSettings(host="127.0.0.1", port=0), collect, Telemetry())
    await receiver.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    mark("PORT", receiver.port)
    waiters = [asyncio.ensure_future(e.wait()) for e in (complete, stop)]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(0.3 if complete.is_set() else 0)  # resends still count as duplicates
    table = np.array(rows, dtype=np.float64).reshape(-1, 3)
    np.savez(out, seq=table[:, 0], sent=table[:, 1], arrived=table[:, 2],
             duplicates=counts["duplicates"], other=counts["other"])
    mark("DONE", len(seen))
    await stop.wait()
    for waiter in waiters:
        waiter.cancel()
    await receiver.stop(0)


# --------------------------------------------------------------------------- orchestration


class Child:
    """A child process whose stdout lines are collected by a thread (for ``marker`` lines)."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=env, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_marker(self, name: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise RuntimeError(f"{self.proc.args[1:3]} exited ({self.proc.returncode}) "
                                       f"before {name}: {self.stderr_tail()}") from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no {name} within {timeout:.0f}s") from None
                continue
            if line.startswith(name + " "):
                return float(line.split()[1])

    def stderr_tail(self) -> str:
        return self.log.read_text(errors="replace")[-400:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def sidecar_config(work: Path, fsync: str, downstream_port: int) -> tuple[Path, dict[str, int]]:
    """A config file: free ports, data_dir under ``work``, the forward exporter, ``fsync``."""
    from sidecar import config

    ports = {name: free_port() for name in ("forward", "otlp", "grpc", "lumberjack", "http")}
    data: dict[str, Any] = {
        "data_dir": str(work / "data"),
        "receivers": {name: {"port": ports[name]}
                      for name in ("forward", "otlp", "grpc", "lumberjack")},
        "http": {"port": ports["http"]},
        "exporters": [{"type": "forward", "port": downstream_port}],
        "logging": {"level": "warning"},
    }
    if fsync != "interval":
        data["spool"] = {"fsync": fsync}
    path = work / "sidecar.yaml"
    path.write_text(json.dumps(data, indent=1))  # JSON is YAML
    config.load(path)  # a config error here, not in the child
    return path, ports


def wait_ready(child: Child, port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"sidecar exited ({child.proc.returncode}): {child.stderr_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("sidecar not ready")


@dataclass
class Run:
    n: int
    seconds: float  # first send -> last arrival
    sent_seconds: float  # first send -> last send
    latency_ms: np.ndarray  # arrival - sent_s, after the warm-up
    scheduled_ms: np.ndarray  # arrival - scheduled send, after the warm-up
    duplicates: int

    @property
    def rate(self) -> float:
        return self.n / self.seconds


@dataclass(frozen=True)
class Load:
    n: int
    rate: float  # records/s offered; 0 = as fast as acks allow
    chunk: int
    connections: int


def run_once(args: argparse.Namespace, fsync: str, load: Load,
             profile: Path | None = None) -> Run:
    """Downstream, sidecar, client - one fresh set of processes - and what arrived."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        py, here = sys.executable, os.path.abspath(__file__)
        down = Child([py, here, "--downstream", "-n", str(load.n), "--out",
                      str(work / "arrivals.npz")], work / "downstream.log")
        sidecar = spy = None
        try:
            down_port = int(down.wait_marker("PORT", 60))
            cfg, ports = sidecar_config(work, fsync, down_port)
            env = {**os.environ, "LOGMINER_HASH_SECRET": secrets.token_hex(32)}
            sidecar = Child([str(Path(py).parent / "logminer"), "serve", "--config", str(cfg)],
                            work / "sidecar.log", env)
            wait_ready(sidecar, ports["http"])
            if profile is not None:
                spy = Child([shutil.which("py-spy") or str(Path(py).parent / "py-spy"),
                             "record", "--pid", str(sidecar.proc.pid), "--format", "raw",
                             "--nolineno", "--gil", "--rate", str(PROFILE_HZ),
                             "--output", str(profile)], work / "py-spy.log")
            budget = 60 + (load.n / load.rate if load.rate else load.n / 2000)
            client = subprocess.run(
                [py, here, "--client", "--port", str(ports["forward"]), "-n", str(load.n),
                 "--rate", str(load.rate), "--chunk", str(load.chunk),
                 "--connections", str(load.connections), "--bank-share", str(args.bank_share),
                 "--seed", str(args.seed)], capture_output=True, text=True, timeout=budget)
            if client.returncode != 0:
                raise RuntimeError(f"client: {client.stderr[-400:]}")
            got = int(down.wait_marker("DONE", 120))
            if spy is not None:
                spy.proc.send_signal(signal.SIGINT)
                spy.proc.wait(60)
            if got != load.n:
                raise RuntimeError(f"{got} of {load.n} records arrived")
        finally:
            for child in (spy, sidecar, down):
                if child is not None:
                    child.stop()
        data = np.load(work / "arrivals.npz")
        sent, arrived = data["sent"], data["arrived"]
        due = (marker(client.stdout, "BEGIN") + data["seq"] // load.chunk * load.chunk / load.rate
               if load.rate else sent)
        warm = due >= due.min() + args.warmup if load.rate else np.ones_like(due, dtype=bool)
        return Run(load.n, float(arrived.max() - sent.min()), float(sent.max() - sent.min()),
                   (arrived - sent)[warm] * 1e3, (arrived - due)[warm] * 1e3,
                   int(data["duplicates"]))


def bench_max(args: argparse.Namespace) -> dict[str, list[Run]]:
    load = Load(int(args.n * args.scale), 0.0, args.chunk, args.connections)
    runs: dict[str, list[Run]] = {mode: [] for mode in args.modes}
    for repeat in range(args.repeats):
        for mode in args.modes:  # interleaved: noise from other jobs hits both modes alike
            runs[mode].append(run_once(args, mode, load))
            print(f"  max, fsync {mode} #{repeat + 1}: {runs[mode][-1].rate:,.0f} records/s",
                  file=sys.stderr)
    return runs


def bench_latency(args: argparse.Namespace, maxima: dict[str, float]) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {mode: [] for mode in args.modes}
    for repeat in range(args.repeats):
        for mode in args.modes:
            rate = args.rate or maxima[mode] / 2
            n = int(rate * args.latency_seconds)
            runs[mode].append(run_once(
                args, mode, Load(n, rate, args.latency_chunk, args.connections)))
            r = runs[mode][-1]
            print(f"  latency, fsync {mode} #{repeat + 1}: {rate:,.0f} records/s offered, p50 "
                  f"{np.percentile(r.latency_ms, 50):.1f} ms, p99 "
                  f"{np.percentile(r.latency_ms, 99):.1f} ms", file=sys.stderr)
    return runs


# --------------------------------------------------------------------------- stage costs


def stage_costs(args: argparse.Namespace) -> list[tuple[str, str, list[float], list[float]]]:
    """(step, where, CPU seconds per repeat, wall seconds per repeat) on the same records.

    Each repeat starts from fresh objects (a new template table and session table, an empty
    spool), so the numbers are those of a sidecar that just started, like each e2e run.
    """
    from prometheus_client import CollectorRegistry

    from sidecar import config, pipeline
    from sidecar.exporters.forward import to_forward_record
    from sidecar.receivers.forward import to_record
    from sidecar.spool import FileSpool, SpoolSettings
    from sidecar.stages import RedactionStage, ScoringStage
    from sidecar.telemetry import Telemetry

    cfg = config.Config()
    n = int(args.stage_records * args.scale)
    sent = time.monotonic()
    records = [(tag, stamp(r, i, sent))
               for i, (tag, r) in enumerate(workload(n, args.bank_share, args.seed))]
    client = forward.ClientConnection()
    inbound = b"".join(frame for start in range(0, n, args.chunk)
                       for _, frame in chunk_frames(client, f"c{start}",
                                                    records[start:start + args.chunk]))
    body_keys = cfg.receivers.forward.body_keys
    secret = secrets.token_bytes(32)
    timings: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    def timed(step: str, where: str, work: Callable[[], Any]) -> Any:
        c0, w0 = time.process_time(), time.perf_counter()
        result = work()
        cpu, wall = timings.setdefault((step, where), ([], []))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        return result

    def receive(stream: bytes) -> list[Batch]:
        conn, batches = forward.ServerConnection(), []
        for offset in range(0, len(stream), READ_SIZE):
            conn.receive_data(stream[offset:offset + READ_SIZE])
            while (event := conn.next_event()) is not forward.NEED_DATA:
                batches.append(Batch([to_record(event.tag, e, body_keys)
                                      for e in event.entries]))
        return batches

    def export_frames(batches: list[Batch], compress: bool) -> bytes:
        out = []
        for number, batch in enumerate(batches):
            by_tag: dict[str, list[forward.Entry]] = defaultdict(list)
            for record in batch:
                by_tag[record.tag].append(forward.Entry(record.time_ns, to_forward_record(record)))
            out += [client.pack_forward(tag, entries, chunk=f"e{number}.{tag}", compress=compress)
                    for tag, entries in by_tag.items()]
        return b"".join(out)

    def spool_all(spool: FileSpool, payloads: list[bytes]) -> None:
        for payload in payloads:
            spool.append(payload)

    def read_all(spool: FileSpool) -> int:
        count = 0
        while entries := spool.read("out", pipeline.READ_ENTRIES):
            for entry in entries:
                count += len(pipeline.decode(entry.payload))
                spool.commit("out", entry.end)
        return count

    def repeat(tmp: Path) -> None:
        sidecar = "sidecar"
        batches = timed("forward receive: decode + to_record", sidecar, lambda: receive(inbound))
        redaction = RedactionStage(cfg.redaction, secret, None, Telemetry())
        timed("redaction stage", sidecar, lambda: [redaction.process(b) for b in batches])
        scoring = ScoringStage(cfg.scoring, cfg.templates, tmp / "templates.json",
                               CollectorRegistry())
        timed("scoring stage (mining, sessions, LSTM)", sidecar,
              lambda: [scoring.process(b) for b in batches])
        payloads = timed("spool encode (to_dict + msgpack)", sidecar,
                         lambda: [pipeline.encode(b) for b in batches])
        spools = {mode: FileSpool(tmp / mode, SpoolSettings(fsync=mode), ["out"])
                  for mode in MODES}
        for mode, spool in spools.items():
            timed(f"spool append, fsync {mode}", sidecar, lambda s=spool: spool_all(s, payloads))
        timed("spool read + decode + commit", sidecar, lambda: read_all(spools["interval"]))
        for spool in spools.values():
            spool.close()
        wire = timed("forward export encode (to_forward_record + gzip, default)", sidecar,
                     lambda: export_frames(batches, True))
        timed("forward export encode, uncompressed", "(option)",
              lambda: export_frames(batches, False))
        timed("downstream decode (gzip) + to_record", "downstream", lambda: receive(wire))

    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-e2e-stages-") as tmp:
            repeat(Path(tmp))
    return [(step, where, cpu, wall) for (step, where), (cpu, wall) in timings.items()]


# --------------------------------------------------------------------------- profile


COMPONENTS = (  # (function, file suffix) found in a sample's stack -> component; first wins
    ("redact_batch", "redact/redactor.py", "redaction stage"),
    ("process", "scoring/scorer.py", "scoring stage (mining, sessions, LSTM)"),
    ("encode", "sidecar/pipeline.py", "spool encode"),
    ("append", "sidecar/spool.py", "spool append"),
    ("_process_and_spool", "sidecar/pipeline.py", "pipeline worker, other"),
    ("export", "exporters/forward.py", "forward export (encode, gzip, acks)"),
    ("decode", "sidecar/pipeline.py", "spool decode"),
    ("_deliver", "sidecar/pipeline.py", "delivery loop, other (spool read, commit)"),
    ("converse", "receivers/forward.py", "forward receive (decode, to_record, acks)"),
)


def parse_profile(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, samples per component, self samples per function) from py-spy's raw output."""
    total, components, own = 0, Counter[str](), Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += samples
        own[f"{frames[-1][0]} ({frames[-1][1]})"] += samples
        components[next((name for func, suffix, name in COMPONENTS
                         if any(f.rpartition(".")[2] == func and file.endswith(suffix)
                                for f, file in frames)),
                        "other (event loop, threads, gRPC)")] += samples
    return total, components, own


def _frame(text: str) -> tuple[str, str]:
    func, _, file = text.rpartition(" (")
    file = file.rstrip(")")
    for prefix in ("site-packages/", str(ROOT) + "/"):
        if prefix in file:
            file = file.split(prefix, 1)[1]
    return func, file


# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, maxima: dict[str, list[Run]],
           latency: dict[str, list[Run]],
           stages: list[tuple[str, str, list[float], list[float]]],
           profile: tuple[Run, tuple[int, Counter[str], Counter[str]]] | None) -> str:
    out = [f"End to end, {machine(args.repeats)}; client -> `logminer serve` -> downstream, "
           f"three processes; {args.bank_share:.0%} bank lines.", ""]
    if maxima:
        out += [f"Max throughput: {int(args.n * args.scale):,} records per run, "
                f"{args.connections} client connections x 1 chunk of {args.chunk} in flight.",
                "", "| spool fsync | records/s (median) | min - max | vs interval |",
                "|---|---:|---:|---:|"]
        base = statistics.median(r.rate for r in maxima[args.modes[0]])
        for mode, runs in maxima.items():
            median, spread = median_range(r.rate for r in runs)
            ratio = statistics.median(r.rate for r in runs) / base
            dupes = sum(r.duplicates for r in runs)
            out.append(f"| {mode}{' (default)' * (mode == 'interval')} | {median} | {spread} | "
                       f"{ratio:.2f}x{f' ({dupes} duplicates)' * bool(dupes)} |")
    if latency:
        out += ["", f"Latency at a fixed offered load ({args.latency_seconds:g} s runs, chunks "
                f"of {args.latency_chunk} over {args.connections} connections, first "
                f"{args.warmup:g} s left out; ms, median of "
                f"{args.repeats} runs' percentiles):", "",
                "| spool fsync | offered records/s | achieved | p50 | p99 | p99.9 | max "
                "| p99 from schedule |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for mode, runs in latency.items():
            def pct(q: float, field: str = "latency_ms", rs: list[Run] = runs) -> str:
                return f"{statistics.median(np.percentile(getattr(r, field), q) for r in rs):.1f}"
            achieved = statistics.median(r.n / r.sent_seconds for r in runs)
            offered = args.rate or statistics.median(r.rate for r in maxima[mode]) / 2
            out.append(f"| {mode} | {offered:,.0f} | {achieved:,.0f} | {pct(50)} | {pct(99)} | "
                       f"{pct(99.9)} | {pct(100)} | {pct(99, 'scheduled_ms')} |")
    if stages:
        out += ["", f"Per-step cost in one process on the same records "
                f"({int(args.stage_records * args.scale):,}; fresh objects per repeat; "
                "median of the repeats):", "",
                "| step | runs in | records/CPU-s | us/record (CPU) | records/s (wall) "
                "| share of sidecar CPU |", "|---|---|---:|---:|---:|---:|"]
        n = int(args.stage_records * args.scale)
        path = [(s, w, c, wl) for s, w, c, wl in stages if w == "sidecar"
                and "fsync always" not in s]
        total = sum(statistics.median(c) for _, _, c, _ in path)
        for step, where, cpu, wall in stages:
            c = statistics.median(cpu)
            share = f"{c / total:.0%}" if any(step == p[0] for p in path) else ""
            out.append(f"| {step} | {where} | {n / c:,.0f} | {c / n * 1e6:.1f} | "
                       f"{n / statistics.median(wall):,.0f} | {share} |")
        out.append(f"| **sidecar path, fsync interval (sum)** | sidecar | **{n / total:,.0f}** | "
                   f"**{total / n * 1e6:.1f}** | | 100% |")
    if profile is not None:
        run, (samples, components, own) = profile
        held = samples / PROFILE_HZ / run.seconds
        out += ["", f"Profile: `py-spy record --gil --rate {PROFILE_HZ} --nolineno --pid "
                f"<sidecar>` during one max-throughput run (fsync interval; {run.rate:,.0f} "
                f"records/s under the profiler). `--gil` samples the thread holding the GIL: "
                f"{samples:,} samples, so the GIL was held ~{held:.0%} of the run; shares are "
                "of those samples.", "",
                "| component (inclusive) | share |", "|---|---:|"]
        out += [f"| {name} | {count / samples:.1%} |" for name, count in components.most_common()]
        out += ["", "| function (self) | share |", "|---|---:|"]
        out += [f"| `{name}` | {count / samples:.1%} |" for name, count in own.most_common(15)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the record counts of the max and stage runs")
    parser.add_argument("--only", nargs="+", choices=("max", "latency", "stages"),
                        default=["max", "latency", "stages"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--profile", action="store_true",
                        help="one more max run with py-spy attached to the sidecar")
    parser.add_argument("--profile-out", metavar="PATH",
                        help="keep py-spy's raw (collapsed stacks) output here")
    parser.add_argument("-n", type=int, default=100_000, help="records per max run")
    parser.add_argument("--chunk", type=int, default=1000, help="records per chunk (max runs)")
    parser.add_argument("--connections", type=int, default=8,
                        help="client connections, one chunk in flight on each")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="records/s for the latency runs (default: half the measured max)")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--latency-chunk", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of each latency run left out of the percentiles")
    parser.add_argument("--stage-records", type=int, default=50_000)
    parser.add_argument("--bank-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--downstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.port, args.n, args.rate, args.chunk, args.connections,
                    args.bank_share, args.seed)
        return
    if args.downstream:
        asyncio.run(downstream_main(args.n, args.out))
        return
    stages = stage_costs(args) if "stages" in args.only else []
    need_max = "max" in args.only or ("latency" in args.only and not args.rate)
    maxima = bench_max(args) if need_max else {}
    medians = {mode: statistics.median(r.rate for r in runs) for mode, runs in maxima.items()}
    latency = bench_latency(args, medians) if "latency" in args.only else {}
    profiled = None
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-profile-") as tmp:
            path = Path(args.profile_out or Path(tmp) / "profile.txt")
            run = run_once(args, args.modes[0],
                           Load(int(args.n * args.scale), 0.0, args.chunk, args.connections),
                           profile=path)
            profiled = (run, parse_profile(path))
    print(report(args, maxima, latency, stages, profiled))


if __name__ == "__main__":
    main()

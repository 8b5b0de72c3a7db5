"""``logminer demo``: the whole product on a laptop, on its embedded defaults.

Strategy: start, in one process, a local downstream forward receiver (standing
in for a Fluentd aggregator) and the sidecar itself on free loopback ports,
with the shipped ``models/hdfs`` bundle, an ephemeral hash secret and a
temporary data directory. Replay the bundled sample - raw HDFS lines of
labelled blocks plus synthetic bank-application lines with planted personal
data - through the real forward protocol with ``fluent-logger``. When every
record has arrived downstream and every HDFS session has ended (a short idle
timeout, so the end-of-session check runs), compare what arrived with what was
sent: planted values must be gone, every record must be there, and the
anomaly verdicts are scored against the block labels. The "before" side of
the report is what the demo generated, never read back from the output.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from fluent import sender

from sidecar import config
from sidecar.app import App
from sidecar.receivers.forward import ForwardReceiver, ForwardSettings
from sidecar.record import Batch, Record
from sidecar.redact import corpus
from sidecar.scoring.sessions import SessionKeyer
from sidecar.stages import ALERT_TAG
from sidecar.telemetry import Telemetry

HDFS_TAG = "hdfs.datanode"
BANK_TAG = "bank.app"
IDLE_TIMEOUT_SECONDS = 2.0


@dataclass
class Sent:
    """What the demo sent, kept on its side: the "before" and the ground truth."""

    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    planted: list[tuple[int, str, str]] = field(default_factory=list)  # (index, TYPE, value)
    labels: dict[str, bool] = field(default_factory=dict)  # HDFS block -> anomalous


def sample(bank_lines: int, seed: int) -> Sent:
    """The replay: bundled HDFS lines, then generated bank lines, interleaved by position."""
    data = resources.files("sidecar.demo") / "data"
    sent = Sent()
    with (data / "hdfs_5k_labels.csv").open() as f:
        sent.labels = {row["BlockId"]: row["Label"] == "Anomaly" for row in csv.DictReader(f)}
    with gzip.open(str(data / "hdfs_5k.log.gz"), "rt", encoding="utf-8") as f:
        hdfs = [(HDFS_TAG, {"message": line.rstrip("\n"), "host": "datanode-7"}) for line in f]
    bank = corpus.generate(bank_lines, seed)
    step = max(1, len(hdfs) // max(1, len(bank)))
    for i, (tag, record) in enumerate(hdfs):
        sent.records.append((tag, record))
        if i % step == 0 and bank:
            line = bank.pop()
            index = len(sent.records)
            sent.records.append((BANK_TAG, {"message": line.text, "demo_id": index,
                                            "host": "payments-1"}))
            sent.planted.extend((index, p.type, p.value) for p in line.planted)
    return sent


class Downstream:
    """A local forward receiver that keeps what the sidecar delivers (the 'aggregator')."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.arrived = asyncio.Event()
        self.receiver = ForwardReceiver(ForwardSettings(port=0), self._collect, Telemetry())

    async def _collect(self, batch: Batch, *, durable: bool = True) -> None:
        self.records.extend(batch.records)
        self.arrived.set()

    def data(self) -> list[Record]:
        return [r for r in self.records if not r.tag.endswith(ALERT_TAG)]

    def alerts(self) -> list[Record]:
        return [r for r in self.records if r.tag.endswith(ALERT_TAG)]


def sidecar_config(data_dir: Path, downstream_port: int) -> config.Config:
    return config.from_mapping({
        "data_dir": str(data_dir),
        "receivers": {name: {"port": 0} for name in ("forward", "otlp", "grpc", "lumberjack")},
        "http": {"port": 0},
        "pipeline": {"batch": {"max_delay_ms": 10}, "idle_tick_seconds": 0.25},
        "scoring": {"idle_timeout_seconds": IDLE_TIMEOUT_SECONDS},
        "exporters": [{"type": "forward", "port": downstream_port, "tag_prefix": "sanitized."}],
        "logging": {"level": "warning"},
    })


def replay(port: int, sent: Sent, out: TextIO) -> float:
    """Send every record with fluent-logger; returns the seconds it took."""
    senders = {tag: sender.FluentSender(tag.split(".")[0], port=port, nanosecond_precision=True)
               for tag in (HDFS_TAG, BANK_TAG)}
    started = time.perf_counter()
    total = len(sent.records)
    every, end = (250, "\r") if out.isatty() else (max(1, total // 4), "\n")
    for i, (tag, record) in enumerate(sent.records, start=1):
        if not senders[tag].emit(tag.split(".", 1)[1], record):
            raise ConnectionError(f"fluent-logger could not send record {i}")
        if i % every == 0 or i == total:
            out.write(f"  replaying through the forward protocol: {i:,}/{total:,}{end}")
            out.flush()
    if end == "\r":
        out.write("\n")
    for s in senders.values():
        s.close()
    return time.perf_counter() - started


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def until_signal() -> None:
    """Wait for SIGINT or SIGTERM (then the demo stops cleanly and reports)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def metric(app: App, name: str, **labels: str) -> float:
    return app.telemetry.registry.get_sample_value(name, labels) or 0.0


@dataclass
class Outcome:
    sent: Sent
    arrived: list[Record]
    alerts: list[Record]
    replay_seconds: float
    session_of: SessionKeyer
    failures: list[str] = field(default_factory=list)


async def run(out: TextIO, *, bank_lines: int, seed: int, keep_running: bool) -> Outcome:
    sent = sample(bank_lines, seed)
    with tempfile.TemporaryDirectory(prefix="logminer-demo-") as tmp:
        out.write("LogMiner Sidecar demo\n"
                  "  using an EPHEMERAL hash secret: tokens differ on every run (set "
                  "LOGMINER_HASH_SECRET for stable ones)\n")
        downstream = Downstream()
        await downstream.receiver.start()
        app = App(sidecar_config(Path(tmp), downstream.receiver.port or 0),
                  config.Secrets(hash_secret=os.urandom(32)))
        await app.start()
        out.write(f"  sidecar listening: {', '.join(app.describe_listeners())}; downstream "
                  f"aggregator on forward port {downstream.receiver.port}\n"
                  f"  model: {app.scoring.scorer.live_bundle.card.name} "
                  f"v{app.scoring.scorer.live_bundle.card.version}\n")
        forward_port = next(r.port for r in app.receivers if r.name == "forward")
        try:
            seconds = await asyncio.to_thread(replay, forward_port, sent, out)
            await wait_until(lambda: len(downstream.data()) >= len(sent.records), 120,
                             "every record to arrive downstream")
            await wait_until(lambda: metric(app, "logminer_scoring_sessions_live") == 0,
                             IDLE_TIMEOUT_SECONDS + 30, "sessions to end")
            await asyncio.sleep(1.0)  # alert records of the last ended sessions
            if keep_running:
                out.write("  --keep-running: the sidecar stays up; Ctrl-C to stop\n")
                await until_signal()
        finally:
            await app.stop()
            await downstream.receiver.stop(1.0)
        return Outcome(sent, downstream.data(), downstream.alerts(), seconds,
                       SessionKeyer(app.scoring.scorer.live_bundle.card.scoring.session_key))


def check(outcome: Outcome) -> list[str]:
    """What failed: planted values that survived, records that did not arrive."""
    failures = []
    delivered = "\n".join(json.dumps([r.body, r.attributes], ensure_ascii=False)
                          for r in outcome.arrived + outcome.alerts)
    survived = Counter(kind for _, kind, value in outcome.sent.planted if value in delivered)
    for kind, n in sorted(survived.items()):
        failures.append(f"{n} planted {kind} value(s) reached downstream unredacted")
    missing = len(outcome.sent.records) - len(outcome.arrived)
    if missing > 0:
        failures.append(f"{missing} record(s) did not arrive downstream")
    return failures


def main(args: Any) -> int:
    from sidecar.demo import report

    out = sys.stdout
    outcome = asyncio.run(run(out, bank_lines=args.bank_lines, seed=args.seed,
                              keep_running=args.keep_running))
    outcome.failures = check(outcome)
    summary = report.summarise(outcome)
    out.write(report.render_text(summary))
    Path(args.report).write_text(report.render_html(summary), encoding="utf-8")
    out.write(f"\nreport written to {args.report}\n")
    for failure in outcome.failures:
        out.write(f"FAILED: {failure}\n")
    return 1 if outcome.failures else 0

"""Scoring benchmark: throughput of the stateful and windowed models, load time, memory.

Usage (one core, the runtime venv; no TensorFlow needed):

    /work/venv/bin/python bench/bench_scoring.py [--bundle DIR] [--records N] [--json]

Workload: real HDFS sessions (DeepLog split, normal and abnormal) interleaved as a
live node would see them - each session starts at a random time and its events
follow at random gaps - so that about ``--concurrent`` sessions are open at once.
Measured, per record and in records/s of CPU time (single thread, pinned to one CPU;
wall time is shown too - on a busy machine it is longer):

  (a) stateful single-step model, batched: session-table assignment (dict + LRU),
      state gather/scatter, one interpreter call per wave, top-g verdicts;
  (b) the classic windowed model, batched (last ``window`` keys per record, from the
      same stream; rows are prepared outside the timed region, and the few rows shorter
      than the window are left-padded with the start key so every call has full width:
      this measures speed only, verdicts are compared in the tests);
  (c) the stateful model at batch size 1;
  (d) the whole ``Scorer.process`` stage with a dictionary stand-in for the miner
      (session key regex, ``VocabularyMap`` lookup, record fields, metrics included);
plus bundle load time (verify + build, best of 20, CPU) and the process RSS with
100,000 live sessions in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.record import Batch, Record
from sidecar.scoring import Scorer, ScoringSettings, SessionModel, WindowRunner, load_bundle
from sidecar.scoring.runner import judge, log_softmax, reference_windows
from sidecar.templates import VocabularyMap

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data/hdfs_deeplog_split")


def interleaved(count: int, concurrent: int, seed: int = 0) -> tuple[list[int], list[int],
                                                                     list[list[int]]]:
    """(session index, key) per record of ``count`` sessions, ~``concurrent`` open at once."""
    rng = np.random.default_rng(seed)
    normal = (DATA / "hdfs_train").read_text().split("\n")
    abnormal = (DATA / "hdfs_test_abnormal").read_text().split("\n")
    lines = [line for line in normal + abnormal if line.strip()]
    sessions = [[int(k) for k in lines[i].split()] for i in rng.integers(0, len(lines), count)]
    mean_length = np.mean([len(s) for s in sessions])
    span = count * mean_length / concurrent  # time units; one event per unit per session
    times, owners, keys = [], [], []
    for index, session in enumerate(sessions):
        t = rng.uniform(0, span) + np.cumsum(rng.exponential(1.0, len(session)))
        times.append(t)
        owners.extend([index] * len(session))
        keys.extend(session)
    order = np.argsort(np.concatenate(times), kind="stable")
    return [owners[i] for i in order], [keys[i] for i in order], sessions


def timed(run: Callable[[], object], repeat: int = 3,
          setup: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """Best (CPU seconds of this thread, wall seconds) of ``run``; ``setup`` runs untimed first.

    CPU time is what one dedicated core would take: other processes on a shared machine
    stretch the wall time, not this thread's CPU time.
    """
    cpu = wall = float("inf")
    for _ in range(repeat):
        setup()
        cpu_started, wall_started = time.thread_time(), time.perf_counter()
        run()
        cpu = min(cpu, time.thread_time() - cpu_started)
        wall = min(wall, time.perf_counter() - wall_started)
    return cpu, wall


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def stateful(bundle, owners: list[int], keys: list[int], batch: int) -> tuple[float, float]:
    model = SessionModel(bundle, bundle.card.scoring.g, max_sessions=100_000)
    names = [f"s{o}" for o in owners]
    key_array = np.array(keys, np.int32)

    def run() -> None:
        for first in range(0, len(names), batch):
            assigned = model.table.assign(names[first:first + batch], 0.0)
            model.step(assigned.slots, key_array[first:first + batch])

    return timed(run, repeat=1 if batch == 1 else 3, setup=model.reset)


def windowed(bundle, owners: list[int], keys: list[int], sessions,
             batch: int) -> tuple[float, float]:
    runner, window, vocab = WindowRunner(bundle), bundle.card.scoring.window, bundle.vocab
    position: dict[int, int] = {}
    rows = []
    for owner in owners:  # the full-length window each record is judged on
        i = position[owner] = position.get(owner, -1) + 1
        wins, _ = reference_windows(sessions[owner], vocab.start_key, vocab.end_key, window)
        rows.append(([vocab.start_key] * window + wins[i])[-window:])
    matrix, targets = np.array(rows, np.int32), np.array(keys, np.int64)
    g = bundle.card.scoring.g

    def run() -> None:
        for first in range(0, len(matrix), batch):
            logits = runner.logits(matrix[first:first + batch])
            judge(log_softmax(logits), targets[first:first + batch], g)

    return timed(run)


@dataclass(frozen=True)
class _Mined:
    template_id: int
    template: str
    is_new: bool


class _DictMiner:
    """Stand-in miner: the body's first word names the template."""

    def __init__(self, templates: Mapping[int, str]):
        self._by_word = {f"E{k}": _Mined(k, text, False) for k, text in templates.items()}

    def add(self, body: str) -> _Mined:
        return self._by_word[body[: body.index(" ")]]


def stage(bundle_dir: Path, bundle, owners: list[int], keys: list[int],
          batch: int) -> tuple[float, float]:
    bodies = [f"E{k} block blk_{o} done" for o, k in zip(owners, keys, strict=True)]
    fresh: dict[str, Any] = {}

    def setup() -> None:
        fresh["scorer"] = Scorer(
            ScoringSettings(model_dir=str(bundle_dir), reload_poll_seconds=3600),
            _DictMiner(bundle.vocab.templates), VocabularyMap, CollectorRegistry())
        fresh["records"] = [Record(body=body) for body in bodies]

    def run() -> None:
        scorer, records = fresh["scorer"], fresh["records"]
        for first in range(0, len(records), batch):
            scorer.process(Batch(records[first:first + batch]))

    return timed(run, setup=setup)


def memory_at(bundle, sessions: int) -> tuple[float, float]:
    """RSS before and after opening and stepping ``sessions`` sessions once each."""
    before = rss_mb()
    model = SessionModel(bundle, bundle.card.scoring.g, max_sessions=sessions)
    names = [f"blk_{i:019d}" for i in range(sessions)]
    keys = np.full(512, 5, np.int32)
    for first in range(0, sessions, 512):
        assigned = model.table.assign(names[first:first + 512], 0.0)
        model.step(assigned.slots, keys[: len(assigned.slots)])
    assert len(model.table) == sessions
    return before, rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "tests/testdata/bundles/tiny")
    parser.add_argument("--records", type=int, default=200_000, help="approximate stream size")
    parser.add_argument("--concurrent", type=int, default=5_000, help="sessions open at once")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rss-only", action="store_true",
                        help="(internal) in a fresh process that imports what `logminer serve` "
                             "imports, open 100k sessions and print RSS before/after in MB")
    args = parser.parse_args()
    if args.rss_only:
        import sidecar.app  # noqa: F401 - the sidecar's own import footprint
        print(*memory_at(load_bundle(args.bundle), 100_000))
        return
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    load, _ = timed(lambda: SessionModel(load_bundle(args.bundle), 1, 1), repeat=20)
    bundle = load_bundle(args.bundle)
    owners, keys, sessions = interleaved(args.records // 19, args.concurrent)
    n = len(keys)
    results: dict[str, object] = {
        "bundle": bundle.describe(), "architecture": vars(bundle.card.architecture),
        "records": n, "concurrent_sessions": args.concurrent, "model_load_ms": load * 1e3}
    few = min(n, 20_000)  # batch size 1 is slow: time a prefix of the stream
    for name, (cpu, wall), count in [
        ("a_stateful_batch_64", stateful(bundle, owners, keys, 64), n),
        ("a_stateful_batch_512", stateful(bundle, owners, keys, 512), n),
        ("b_windowed_batch_64", windowed(bundle, owners, keys, sessions, 64), n),
        ("b_windowed_batch_512", windowed(bundle, owners, keys, sessions, 512), n),
        ("c_stateful_batch_1", stateful(bundle, owners[:few], keys[:few], 1), few),
        ("d_stage_batch_512", stage(args.bundle, bundle, owners, keys, 512), n),
    ]:
        results[name] = {"records_per_s": round(count / cpu),
                         "us_per_record": round(cpu / count * 1e6, 3),
                         "wall_us_per_record": round(wall / count * 1e6, 3)}
    before, after = memory_at(bundle, 100_000)
    results["rss_mb_before_100k_sessions"] = round(before, 1)  # includes this bench's data
    results["rss_mb_with_100k_sessions"] = round(after, 1)
    fresh = subprocess.run([sys.executable, __file__, "--rss-only", "--bundle", str(args.bundle)],
                           capture_output=True, text=True, check=True).stdout.split()
    results["rss_mb_sidecar_process_before"] = round(float(fresh[0]), 1)
    results["rss_mb_sidecar_process_with_100k_sessions"] = round(float(fresh[1]), 1)
    if args.json:
        print(json.dumps(results))
        return
    for key, value in results.items():
        if isinstance(value, dict) and "us_per_record" in value:
            print(f"{key:24s} {value['records_per_s']:>10,} records/s "
                  f"{value['us_per_record']:7.2f} us/record CPU "
                  f"({value['wall_us_per_record']:.2f} wall)")
        else:
            print(f"{key:24s} {value}")


if __name__ == "__main__":
    main()

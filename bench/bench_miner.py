"""Template miner benchmark: grouping accuracy on Loghub 2k and throughput, vs Drain3.

One run measures, on the same lines:

* grouping accuracy (GA, Zhu et al., ICSE-SEIP 2019) on each of the 16 Loghub 2k systems
  with the corrected ground truth (lines grouped by ``EventId`` of
  ``<Sys>_2k.log_structured_corrected.csv``). A line is correctly grouped when the set of
  lines in its predicted group equals the set in its true group. Every miner parses the
  ``Content`` column, the message after the log header, as Drain does. One fresh miner
  per system, one default configuration for all. Ours is reported twice: grouped by the
  final template table (each line matched after learning) and by the id ``add``
  returned when the line arrived (online);
* throughput on a mixed stream: all 16 x 2,000 lines repeated to 200,000 lines and
  shuffled (fixed seed); "cold" = a fresh miner learning the stream, "second pass" =
  the same miner fed the same stream again. Ours is also run with a one-entry shape
  cache, so that every line walks the tree: the cost without the fast path. Figures are
  lines per CPU-second of this process (robust on a shared machine), medians of
  ``--repeats`` runs that interleave the miners.

Drain3 0.9.11 runs with its library defaults, and with the masking list of its example
config (``examples/drain3.ini``). It is a benchmark-only dependency
(``pip install drain3==0.9.11``).

Run from the repository root:  python bench/bench_miner.py
"""

from __future__ import annotations

import argparse
import csv
import gc
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sidecar.templates import MinerSettings, TemplateMiner  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "loghub_2k"
STREAM_LINES = 200_000
SEED = 20261124

# The masking list of Drain3's examples/drain3.ini (logpai/Drain3), as (regex, mask name).
DRAIN3_EXAMPLE_MASKING = [
    (r"((?<=[^A-Za-z0-9])|^)(([0-9a-f]{2,}:){3,}([0-9a-f]{2,}))((?=[^A-Za-z0-9])|$)", "ID"),
    (r"((?<=[^A-Za-z0-9])|^)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})((?=[^A-Za-z0-9])|$)", "IP"),
    (r"((?<=[^A-Za-z0-9])|^)([0-9a-f]{6,} ?){3,}((?=[^A-Za-z0-9])|$)", "SEQ"),
    (r"((?<=[^A-Za-z0-9])|^)([0-9A-F]{4} ?){4,}((?=[^A-Za-z0-9])|$)", "SEQ"),
    (r"((?<=[^A-Za-z0-9])|^)(0x[a-f0-9A-F]+)((?=[^A-Za-z0-9])|$)", "HEX"),
    (r"((?<=[^A-Za-z0-9])|^)([\-\+]?\d+)((?=[^A-Za-z0-9])|$)", "NUM"),
    (r"(?<=executed cmd )(\".+?\")", "CMD"),
]

Parse = Callable[[Sequence[str]], list[int]]


def load_system(data: Path, system: str) -> tuple[list[str], list[str]]:
    """(contents, event ids) of one system's corrected structured file."""
    path = data / system / f"{system}_2k.log_structured_corrected.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["Content"] for row in rows], [row["EventId"] for row in rows]


def grouping_accuracy(predicted: Sequence[object], truth: Sequence[str]) -> float:
    """Share of lines whose predicted group has exactly the lines of their true group."""
    predicted_groups: dict[object, set[int]] = defaultdict(set)
    truth_groups: dict[str, set[int]] = defaultdict(set)
    for line, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        predicted_groups[p].add(line)
        truth_groups[t].add(line)
    pairs = zip(predicted, truth, strict=True)
    return sum(predicted_groups[p] == truth_groups[t] for p, t in pairs) / len(truth)


def ours_online(lines: Sequence[str]) -> list[int]:
    return [result.template_id for result in TemplateMiner().add_batch(lines)]


def ours_final(lines: Sequence[str]) -> list[int]:
    miner = TemplateMiner()
    miner.add_batch(lines)
    return [miner.match(line).template_id for line in lines]  # type: ignore[union-attr]


def drain3_miner(masked: bool) -> Any:
    """A Drain3 TemplateMiner with an explicit config (never a drain3.ini from the cwd)."""
    from drain3 import TemplateMiner as Drain3Miner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()
    config.profiling_enabled = False
    if masked:
        config.masking_instructions = [
            MaskingInstruction(pattern, name) for pattern, name in DRAIN3_EXAMPLE_MASKING
        ]
    return Drain3Miner(config=config)


def drain3_parse(masked: bool) -> Parse:
    def parse(lines: Sequence[str]) -> list[int]:
        miner = drain3_miner(masked)
        return [miner.add_log_message(line)["cluster_id"] for line in lines]

    return parse


def mixed_stream(systems: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    pool = [line for contents, _ in systems.values() for line in contents]
    stream = (pool * (STREAM_LINES // len(pool) + 1))[:STREAM_LINES]
    random.Random(SEED).shuffle(stream)
    return stream


def throughput(miners: dict[str, Callable[[], Callable[[str], object]]], stream: Sequence[str],
               repeats: int) -> dict[str, tuple[float, float]]:
    """Per miner, median lines per CPU-second of (a fresh miner learning ``stream``, a
    second pass of it). Repeats interleave the miners, so that they share the machine's
    load alike; process CPU time keeps other processes' load out of the figures."""
    rates: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in miners}
    for _ in range(repeats):
        for name, make in miners.items():
            feed = make()
            for runs in rates[name]:
                gc.collect()
                start = time.process_time()
                for line in stream:
                    feed(line)
                runs.append(len(stream) / (time.process_time() - start))
    return {name: (statistics.median(cold), statistics.median(warm))
            for name, (cold, warm) in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="loghub_2k folder")
    parser.add_argument("--repeats", type=int, default=5, help="throughput repeats (median)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Drain3 logs every new cluster at INFO
    systems = {name: load_system(args.data, name) for name in sorted(os.listdir(args.data))}
    columns: dict[str, Parse] = {
        "ours, final table": ours_final,
        "ours, online ids": ours_online,
        "Drain3 defaults": drain3_parse(masked=False),
        "Drain3 + example masking": drain3_parse(masked=True),
    }
    accuracy = {
        column: {name: grouping_accuracy(parse(lines), truth)
                 for name, (lines, truth) in systems.items()}
        for column, parse in columns.items()
    }
    stream = mixed_stream(systems)
    speeds = throughput({
        "ours (`add`)": lambda: TemplateMiner().add,
        "ours without fast path (`cache_size=1`)":
            lambda: TemplateMiner(MinerSettings(cache_size=1)).add,
        "Drain3 defaults (`add_log_message`)": lambda: drain3_miner(False).add_log_message,
        "Drain3 + example masking (`add_log_message`)":
            lambda: drain3_miner(True).add_log_message,
    }, stream, args.repeats)
    miner = TemplateMiner()
    miner.add_batch(stream)

    print("## Template miner: grouping accuracy and throughput\n")
    print(f"- data: `{args.data}` ({len(systems)} systems x 2,000 lines, corrected labels); "
          "every miner parses the `Content` column (the message after the log header), "
          "as Drain does; one fresh miner per system, one configuration for all systems")
    print(f"- Python {platform.python_version()}, drain3 {version('drain3')}, "
          f"{os.cpu_count()} CPUs; throughput = lines per CPU-second (process time), median of "
          f"{args.repeats} interleaved runs over a "
          f"{len(stream):,}-line shuffled mix of all systems (seed {SEED}); ours learned "
          f"{len(miner):,} templates from it, {miner.stats.slow_path:,} lines took the slow "
          "path\n")
    names = list(columns)
    print("| system | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for system in systems:
        print(f"| {system} | " + " | ".join(f"{accuracy[c][system]:.3f}" for c in names) + " |")
    means = [statistics.mean(accuracy[c].values()) for c in names]
    print("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |\n")
    print("| miner | cold lines/s | second pass lines/s |")
    print("|---|---:|---:|")
    for name, (cold, warm) in speeds.items():
        print(f"| {name} | {cold:,.0f} | {warm:,.0f} |")


if __name__ == "__main__":
    main()

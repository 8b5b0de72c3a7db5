"""``logminer top``: a live terminal view of one sidecar, for someone on the node.

Strategy: poll the sidecar's ``/metrics`` over HTTP every ``interval`` seconds, parse it
with prometheus_client's text parser into a ``Snapshot`` (sample name and labels ->
value, plus when it was taken), and render one frame from two consecutive snapshots:
counters as per-second rates over the time between them (a counter that went down was
reset, so its new value is the increase, as Prometheus's ``rate()`` has it) next to
their totals, gauges as they are. The live view redraws in place with two plain ANSI
escapes (cursor home, clear screen) and keeps polling through a sidecar restart;
``--once`` polls twice, ``interval`` apart, prints one frame without escapes and exits,
for tests and scripts. Everything shown comes from the metrics, whose label values are
fixed identifiers or (capped) shipper tags, never record content.
"""

from __future__ import annotations

import argparse
import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TextIO

from prometheus_client.parser import text_string_to_metric_families

from sidecar import defaults

DEFAULT_URL = f"http://{defaults.LISTEN_HOST}:{defaults.HTTP_PORT}/metrics"
DEFAULT_INTERVAL = 2.0
REDRAW = "\x1b[H\x1b[2J"
TOP_DETECTORS = 8
WIDTH = 78

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    """One scrape: ``samples[name][labels] = value``; ``at`` in monotonic seconds."""

    samples: dict[str, dict[Labels, float]]
    at: float

    @classmethod
    def parse(cls, text: str, at: float) -> Snapshot:
        """Parse Prometheus text format; ValueError if ``text`` is not that."""
        samples: dict[str, dict[Labels, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
        return cls(dict(samples), at)

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Values of ``name`` summed per value of ``label``, over samples matching ``match``."""
        out: dict[str, float] = defaultdict(float)
        for labels, value in self.samples.get(name, {}).items():
            found = dict(labels)
            if all(found.get(k) == v for k, v in match.items()):
                out[found.get(label, "")] += value
        return dict(out)

    def total(self, name: str, **match: str) -> float:
        return sum(self.by(name, "", **match).values())

    def has(self, name: str) -> bool:
        return name in self.samples


def fetch(url: str, clock: Callable[[], float] = time.monotonic, timeout: float = 5.0) -> Snapshot:
    """Scrape ``url``; OSError naming the URL if it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise OSError(f"cannot read {url}: {reason}") from None
    return Snapshot.parse(text, clock())


class _Rates:
    """Per-second increases of counters between two snapshots."""

    def __init__(self, before: Snapshot, after: Snapshot):
        self._before, self._after = before, after
        self._seconds = max(after.at - before.at, 1e-9)

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        old = self._before.by(name, label, **match)
        return {key: (now - old.get(key, 0.0) if now >= old.get(key, 0.0) else now)
                / self._seconds for key, now in self._after.by(name, label, **match).items()}

    def total(self, name: str, **match: str) -> float:
        return sum(self.by(name, "", **match).values())


def _row(label: str, rate: float, total: float, note: str = "") -> str:
    return f"{label[:34]:<34}{rate:>12.1f}{total:>14.0f}  {note}".rstrip()


def _bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


def _number(value: float, fmt: str) -> str:
    return "n/a" if math.isnan(value) else format(value, fmt)


def render(before: Snapshot, after: Snapshot, url: str) -> str:
    """One frame from two snapshots of the same sidecar."""
    rates, now = _Rates(before, after), after
    title = f"logminer top  {url}"
    for labels in now.samples.get("logminer_scoring_model_info", {}):
        info = dict(labels)
        if info.get("role") == "live":
            title += f"  model {info.get('name')} v{info.get('version')}"
    lines = [title[:WIDTH], f"{'':<34}{'per second':>12}{'total':>14}"]

    def counter(label: str, name: str, breakdown: str | None = None, note: str = "",
                limit: int | None = None, **match: str) -> None:
        lines.append(_row(label, rates.total(name, **match), now.total(name, **match), note))
        if breakdown is None:
            return
        totals, per_second = now.by(name, breakdown, **match), rates.by(name, breakdown, **match)
        ranked = sorted(totals, key=lambda k: (-per_second.get(k, 0.0), -totals[k], k))
        for key in ranked[:limit]:
            lines.append(_row(f"  {key}", per_second.get(key, 0.0), totals[key]))
        if limit is not None and len(ranked) > limit:
            lines.append(f"  ... {len(ranked) - limit} more")

    counter("records in", "logminer_receiver_records_total", "receiver")
    counter("records out", "logminer_exporter_records_total", "exporter")
    scored = rates.total("logminer_scoring_records_total")
    flagged = rates.total("logminer_scoring_anomalies_total", kind="record")
    counter("anomalies", "logminer_scoring_anomalies_total", kind="record",
            note=f"{100 * flagged / scored:.1f}% of scored" if scored else "")
    counter("  session ends flagged", "logminer_scoring_anomalies_total", kind="session_end")
    counter("unseen templates", "logminer_scoring_unseen_templates_total")
    counter("unknown to the model", "logminer_scoring_unknown_keys_total")
    counter("redactions", "logminer_redaction_values_total", "detector", limit=TOP_DETECTORS)
    backlog = max(now.by("logminer_spool_backlog_age_seconds", "exporter").values(),
                  default=0.0)
    lines.append(
        f"queue {now.total('logminer_pipeline_queue_records'):.0f} records | spool "
        f"{_bytes(now.total('logminer_spool_bytes'))}, oldest undelivered {backlog:.1f}s | "
        f"sessions {now.total('logminer_scoring_sessions_live'):.0f} live, "
        f"{rates.total('logminer_scoring_sessions_evicted_total'):.1f}/s evicted")
    if now.has("logminer_drift_template_psi"):
        lines.append(
            "drift: unknown "
            f"{_number(100 * now.total('logminer_drift_unknown_template_share'), '.1f')}%  "
            f"PSI {_number(now.total('logminer_drift_template_psi'), '.3f')}  "
            f"JS {_number(now.total('logminer_drift_template_js'), '.3f')} bits  "
            f"anomaly rate {_number(100 * now.total('logminer_drift_anomaly_rate'), '.1f')}%")
    lines.append(
        f"errors/s: receiver {rates.total('logminer_receiver_errors_total'):.1f}  "
        f"export {rates.total('logminer_exporter_errors_total'):.1f}  "
        f"dropped {rates.total('logminer_pipeline_dropped_records_total'):.1f}")
    return "\n".join(lines) + "\n"


def run(url: str, interval: float, *, once: bool, out: TextIO,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic) -> int:
    """Show frames until interrupted, or one frame with ``once``; returns the exit status.

    With ``once`` an unreachable sidecar raises OSError; the live view shows the error
    and keeps polling.
    """
    if once:
        before = fetch(url, clock)
        sleep(interval)
        out.write(render(before, fetch(url, clock), url))
        return 0
    try:
        _live(url, interval, out, sleep, clock)
    except KeyboardInterrupt:
        return 0


def _live(url: str, interval: float, out: TextIO, sleep: Callable[[float], None],
          clock: Callable[[], float]) -> NoReturn:
    before: Snapshot | None = None
    while True:
        try:
            after: Snapshot | None = fetch(url, clock)
        except OSError as exc:
            after = None
            out.write(f"{REDRAW}{exc}; retrying every {interval:g}s\n")
        else:
            out.write(REDRAW + (render(before, after, url) if before is not None
                                else f"measuring {url} ...\n"))
        out.flush()
        before = after
        sleep(interval)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``logminer top`` options: ``--url``, ``--interval``, ``--once``."""
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the sidecar's metrics endpoint (default {DEFAULT_URL})")
    parser.add_argument("--interval", type=_positive, default=DEFAULT_INTERVAL,
                        metavar="SECONDS",
                        help=f"seconds between polls (default {DEFAULT_INTERVAL:g})")
    parser.add_argument("--once", action="store_true",
                        help="poll twice, print one frame without screen control, and exit")

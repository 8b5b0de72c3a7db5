"""Audit: run the redactor over the seeded synthetic corpus and score it.

Strategy: a planted value *survives* if its raw text still appears in the redacted
line; a decoy is a *false positive* if its raw text no longer does. Recall is counted
per TYPE, false positives per decoy kind, speed as lines per second of ``redact_text``
over the whole corpus (one core, tokens cache warm after the first occurrences, as in
service). The audit fails if any planted value survived. The report holds counts only,
never corpus text, so it is safe to print or ship.

``score`` applies the same scoring to any ``Callable[[str], str]`` (another engine, a
baseline), so benchmarks compare engines on exactly the audit's terms.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sidecar.redact import corpus
from sidecar.redact.redactor import Redactor
from sidecar.redact.settings import RedactionSettings


@dataclass(frozen=True)
class AuditReport:
    """Outcome of one audit run (counts only)."""

    lines: int
    seconds: float
    planted: Counter[str] = field(default_factory=Counter)
    survived: Counter[str] = field(default_factory=Counter)
    decoys: Counter[str] = field(default_factory=Counter)
    decoys_hit: Counter[str] = field(default_factory=Counter)

    @property
    def lines_per_second(self) -> float:
        """Throughput of the redactor over the corpus."""
        return self.lines / self.seconds if self.seconds > 0 else float("inf")

    def recall(self, type_: str) -> float:
        """Share of planted values of ``type_`` that were removed."""
        planted = self.planted[type_]
        return 1.0 - self.survived[type_] / planted if planted else 1.0

    def false_positive_rate(self, kind: str | None = None) -> float:
        """Share of decoys (of ``kind``, or of all kinds) that were altered."""
        total = self.decoys[kind] if kind else sum(self.decoys.values())
        hit = self.decoys_hit[kind] if kind else sum(self.decoys_hit.values())
        return hit / total if total else 0.0

    @property
    def passed(self) -> bool:
        """True when no planted value survived (the audit's exit decision)."""
        return not any(self.survived.values())

    def render(self) -> str:
        """A plain-text table: recall per TYPE, false positives per decoy kind, speed."""
        rows = [f"{'TYPE':<16} {'planted':>8} {'survived':>8} {'recall':>8}"]
        for type_ in sorted(self.planted):
            rows.append(
                f"{type_:<16} {self.planted[type_]:>8} {self.survived[type_]:>8}"
                f" {self.recall(type_):>8.2%}"
            )
        rows.append("")
        rows.append(f"{'DECOY':<16} {'placed':>8} {'altered':>8} {'fp rate':>8}")
        for kind in sorted(self.decoys):
            rows.append(
                f"{kind:<16} {self.decoys[kind]:>8} {self.decoys_hit[kind]:>8}"
                f" {self.false_positive_rate(kind):>8.2%}"
            )
        rows.append("")
        rows.append(
            f"lines {self.lines}, {self.lines_per_second:,.0f} lines/s, "
            f"false positives {self.false_positive_rate():.2%}, "
            f"{'PASS' if self.passed else 'FAIL: planted values survived'}"
        )
        return "\n".join(rows)


def score(
    redact: Callable[[str], str],
    sample: Sequence[corpus.CorpusLine],
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> AuditReport:
    """Run ``redact`` over every line of ``sample`` and score its outputs.

    ``redact`` maps a raw line to its redacted text; only that call is timed, with
    ``clock`` (e.g. ``time.process_time`` for CPU time). A planted value survives if its
    raw text is still in the output; a decoy is altered if its raw text is not.
    """
    started = clock()
    outputs = [redact(line.text) for line in sample]
    seconds = clock() - started
    report = AuditReport(lines=len(sample), seconds=seconds)
    for line, output in zip(sample, outputs, strict=True):
        for planted in line.planted:
            report.planted[planted.type] += 1
            if planted.value in output:
                report.survived[planted.type] += 1
        for decoy in line.decoys:
            report.decoys[decoy.kind] += 1
            if decoy.value not in output:
                report.decoys_hit[decoy.kind] += 1
    return report


def run_audit(
    settings: RedactionSettings | None = None,
    *,
    lines: int = 20000,
    seed: int = 0,
    secret: bytes | None = None,
) -> AuditReport:
    """Redact ``lines`` corpus lines (seeded) with ``settings`` and score the result.

    ``secret`` defaults to a random one: tokens do not matter to the audit.
    """
    redactor = Redactor(settings or RedactionSettings(), secret or os.urandom(32))
    return score(lambda text: redactor.redact_text(text)[0], corpus.generate(lines, seed))

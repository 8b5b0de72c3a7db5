"""The demo's summary: numbers from what was sent and what arrived, as text and as HTML.

``summarise`` computes everything once (records in/out, throughput, redactions
per detector, before/after lines, flagged sessions, precision/recall against
the block labels, score series); the two renderers only lay it out. The HTML
page is self-contained: the three charts are inline SVG drawn here (a few
rectangles and circles need no plotting library), so it opens offline.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sidecar.demo.run import BANK_TAG, HDFS_TAG, Outcome
from sidecar.record import Record

BEFORE_AFTER_LINES = 5
FLAGGED_SESSIONS_SHOWN = 10


@dataclass
class Summary:
    sent: int
    arrived: int
    alerts: int
    throughput: float
    redactions: Counter[str]
    before_after: list[tuple[str, str]]
    flagged: list[tuple[str, bool, str]]  # session, labelled anomalous, why (sanitized)
    confusion: dict[str, int]
    scores: list[tuple[float, bool]]  # per HDFS record in order: score, flagged
    session_scores: dict[bool, list[float]]  # labelled anomalous -> max score per session
    failures: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        c = self.confusion
        return c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0

    @property
    def recall(self) -> float:
        c = self.confusion
        return c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0


def _verdicts(record: Record) -> dict[str, Any]:
    return record.attributes.get("logminer") or {}


def summarise(outcome: Outcome) -> Summary:
    sent, arrived = outcome.sent, outcome.arrived
    redactions: Counter[str] = Counter()
    for record in arrived:
        redactions.update(_verdicts(record).get("redactions") or {})
    by_demo_id = {r.attributes.get("demo_id"): r.body for r in arrived
                  if r.tag.endswith(BANK_TAG)}
    planted_per_line = Counter(index for index, _, _ in sent.planted)
    before_after = [(sent.records[i][1]["message"], by_demo_id.get(i, "(did not arrive)"))
                    for i, _ in planted_per_line.most_common(BEFORE_AFTER_LINES)]

    hdfs = [r for r in arrived if r.tag.endswith(HDFS_TAG)]
    why: dict[str, str] = {}
    max_score: dict[str, float] = defaultdict(float)
    scores = []
    for record in hdfs:
        v = _verdicts(record)
        session, score = v.get("session"), float(v.get("score") or 0.0)
        flagged = "anomaly" in (v.get("flags") or [])
        scores.append((score, flagged))
        if session:
            max_score[session] = max(max_score[session], score)
            if flagged and session not in why:
                why[session] = f"unexpected: {v.get('template')}"
    for alert in outcome.alerts:
        v = _verdicts(alert)
        session = v.get("session")
        if session:
            why.setdefault(session, f"ended early after: {v.get('template')}")
            max_score[session] = max(max_score[session], float(v.get("score") or 0.0))
    confusion = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for block, anomalous in sent.labels.items():
        predicted = block in why
        confusion[("t" if predicted == anomalous else "f")
                  + ("p" if predicted else "n")] += 1
    flagged = sorted(((s, sent.labels.get(s, False), w) for s, w in why.items()),
                     key=lambda item: not item[1])[:FLAGGED_SESSIONS_SHOWN]
    session_scores: dict[bool, list[float]] = {True: [], False: []}
    for block, anomalous in sent.labels.items():
        session_scores[anomalous].append(max_score.get(block, 0.0))
    return Summary(
        sent=len(sent.records), arrived=len(arrived), alerts=len(outcome.alerts),
        throughput=len(sent.records) / outcome.replay_seconds if outcome.replay_seconds else 0.0,
        redactions=redactions, before_after=before_after, flagged=flagged,
        confusion=confusion, scores=scores, session_scores=session_scores,
        failures=outcome.failures)


def render_text(s: Summary) -> str:
    lines = ["", "Summary",
             f"  records sent {s.sent:,}, arrived downstream {s.arrived:,} "
             f"(+{s.alerts} session alerts), {s.throughput:,.0f} records/s through the replay",
             "  redactions per detector: " + (", ".join(
                 f"{k} {v}" for k, v in sorted(s.redactions.items())) or "none"),
             "", "Before / after (the before side is what the demo generated)"]
    for before, after in s.before_after:
        lines += [f"  - {before}", f"  + {after}"]
    c = s.confusion
    lines += ["", f"HDFS sessions flagged (labelled: {c['tp'] + c['fn']} anomalous, "
                  f"{c['fp'] + c['tn']} normal)"]
    for session, anomalous, why in s.flagged:
        lines.append(f"  {session:<28} {'anomaly' if anomalous else 'NORMAL '} {why}")
    lines += ["", f"  precision {s.precision:.3f}, recall {s.recall:.3f} "
                  f"(tp {c['tp']}, fp {c['fp']}, fn {c['fn']}, tn {c['tn']})", ""]
    lines.append("  result: " + ("PASS" if not s.failures else "FAIL"))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML + SVG

WIDTH, HEIGHT, PAD = 640, 220, 30


def _svg(body: str, title: str) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{html.escape(title)}"><rect width="100%" height="100%" '
            f'fill="#fafafa"/>{body}</svg>')


def scatter(points: list[tuple[float, bool]], title: str) -> str:
    top = max((p for p, _ in points), default=1.0) or 1.0
    dx = (WIDTH - 2 * PAD) / max(1, len(points) - 1)
    dots = "".join(
        f'<circle cx="{PAD + i * dx:.1f}" cy="{HEIGHT - PAD - y / top * (HEIGHT - 2 * PAD):.1f}" '
        f'r="{2.5 if hot else 1.2}" fill="{"#d62728" if hot else "#1f77b4"}"/>'
        for i, (y, hot) in enumerate(points))
    return _svg(dots + _axis_labels("record (replay order)", f"score (max {top:.1f})"), title)


def histogram(series: dict[str, list[float]], title: str, bins: int = 20) -> str:
    top = max((v for values in series.values() for v in values), default=1.0) or 1.0
    colors = ["#1f77b4", "#d62728"]
    width = (WIDTH - 2 * PAD) / bins
    body = ""
    for (name, values), color in zip(series.items(), colors, strict=False):
        counts = Counter(min(bins - 1, int(v / top * bins)) for v in values)
        biggest = max(counts.values(), default=1)
        for b, n in counts.items():
            h = n / biggest * (HEIGHT - 2 * PAD)
            body += (f'<rect x="{PAD + b * width:.1f}" y="{HEIGHT - PAD - h:.1f}" '
                     f'width="{width - 1:.1f}" height="{h:.1f}" fill="{color}" '
                     f'fill-opacity="0.55"><title>{html.escape(name)}: {n}</title></rect>')
    legend = "".join(f'<text x="{WIDTH - 200}" y="{20 + 16 * i}" fill="{c}" font-size="12">'
                     f'{html.escape(n)}</text>' for i, (n, c) in enumerate(zip(series, colors,
                                                                               strict=False)))
    return _svg(body + legend + _axis_labels(f"session max score (0-{top:.1f})", "sessions"),
                title)


def bars(values: Counter[str], title: str) -> str:
    """Horizontal bars, one row per label (long label lists stay readable)."""
    items = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    top = max(values.values(), default=1)
    row, label_width = 16, 130
    height = PAD + row * len(items)
    body = ""
    for i, (name, n) in enumerate(items):
        y = 10 + i * row
        w = n / top * (WIDTH - label_width - 60)
        body += (f'<text x="{label_width - 6}" y="{y + 11}" font-size="11" '
                 f'text-anchor="end">{html.escape(name)}</text><rect x="{label_width}" '
                 f'y="{y}" width="{w:.1f}" height="{row - 4}" fill="#2ca02c"/><text '
                 f'x="{label_width + w + 4:.1f}" y="{y + 11}" font-size="11">{n}</text>')
    return (f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="{html.escape(title)}"><rect width="100%" height="100%" '
            f'fill="#fafafa"/>{body}</svg>')


def _axis_labels(x: str, y: str) -> str:
    return (f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle">'
            f'{html.escape(x)}</text><text x="8" y="16" font-size="11">{html.escape(y)}</text>')


def render_html(s: Summary) -> str:
    esc = html.escape
    c = s.confusion
    pairs = "".join(f"<tr><th>before</th><td class=b>{esc(b)}</td></tr>"
                    f"<tr><th>after</th><td class=a>{esc(a)}</td></tr>"
                    for b, a in s.before_after)
    flagged = "".join(f"<tr><th>{esc(x)}</th><th>{'anomaly' if a else 'normal'}</th>"
                      f"<td>{esc(w)}</td></tr>" for x, a, w in s.flagged)
    verdict = "PASS" if not s.failures else "FAIL: " + "; ".join(s.failures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>LogMiner demo report</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}td{{padding:2px 8px;
vertical-align:top;overflow-wrap:anywhere}}th{{text-align:left;font-weight:normal;
white-space:nowrap;padding:2px 8px;vertical-align:top}}td.b{{color:#a00}}td.a{{color:#060}}
table{{border-collapse:collapse}}td.a,td.b{{font-family:monospace;font-size:12px}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>LogMiner Sidecar demo</h1><p><b>{esc(verdict)}</b></p>
<p>{s.sent:,} records sent, {s.arrived:,} arrived downstream (+{s.alerts} session alerts),
{s.throughput:,.0f} records/s. Precision {s.precision:.3f}, recall {s.recall:.3f}
(tp {c['tp']}, fp {c['fp']}, fn {c['fn']}, tn {c['tn']}) over the labelled HDFS blocks.</p>
<h2>Anomaly score over time (HDFS records; red = flagged)</h2>
{scatter(s.scores, "anomaly score over time")}
<h2>Score distributions per session</h2>
{histogram({"normal sessions": s.session_scores[False],
            "anomalous sessions": s.session_scores[True]}, "score distributions")}
<h2>Redactions by type</h2>{bars(s.redactions, "redactions by type")}
<h2>Before / after</h2><p>The before side is what the demo generated, not read back.</p>
<table>{pairs}</table>
<h2>Flagged sessions</h2><table>{flagged}</table>
</body></html>
"""

"""Flows from judged sessions: the common paths of normal sessions, and the anomalous ones.

Strategy, per kind of session:

- *Path*: a session's templates with loops collapsed, left to right: at each position the
  shortest block of 1..`MAX_LOOP` templates that repeats back to back becomes one loop,
  "one or more times" (``3 3 3 3`` -> ``(3)+``, ``11 9 11 9 11 9`` -> ``(11 9)+``). Loops
  are not nested.
- *Common flows*: the distinct paths of normal sessions by support (the number of
  sessions; ties by text), each with support >= ``min_support``, taken in that order until
  they cover ``coverage`` of the normal sessions or ``max_scenarios`` are taken.
- *Anomalous flows*: flagged sessions grouped by their steps up to the rejected one and
  that step (or the end) - exact, not collapsed, since the model's verdict depends on
  every repetition - by sessions then text, at most ``max_scenarios``. A flow names the
  templates most of its sessions were expected to log instead.
- *Parameters*: every wildcard of a shown step is a slot, which each session of the flow
  fills with a sanitized value (a loop with its first pass). Slots whose values agree in
  every session share one parameter; a slot with one value throughout is written inline;
  the others become ``<param1>``, ``<param2>``... in order of appearance, and the distinct
  rows of values are the examples, most frequent first, at most ``max_examples``. Sessions
  whose bodies did not fit their templates give no values; a flow without any keeps its
  wildcards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sidecar.scenarios import wildcards
from sidecar.scenarios.sessions import Divergence, Event, ScoredSession

#: The longest block of templates collapsed into a loop.
MAX_LOOP = 4


@dataclass(frozen=True)
class FlowSettings:
    """How flows are chosen; each field is one CLI option."""

    coverage: float = 0.9
    min_support: int = 2
    max_scenarios: int = 20
    max_examples: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")
        for name in ("min_support", "max_scenarios", "max_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")


class Segment(NamedTuple):
    """A run of a session's events: the ``period`` events from ``start``, ``repeats`` times
    back to back (a loop when more than once)."""

    start: int
    period: int
    repeats: int


def collapse(templates: Sequence[str]) -> list[Segment]:
    """Segments of a template sequence with loops collapsed (see the module docstring)."""
    segments, position, size = [], 0, len(templates)
    while position < size:
        segment = Segment(position, 1, 1)
        for period in range(1, min(MAX_LOOP, (size - position) // 2) + 1):
            block = templates[position:position + period]
            repeats = 1
            while templates[position + repeats * period:
                            position + (repeats + 1) * period] == block:
                repeats += 1
            if repeats > 1:
                segment = Segment(position, period, repeats)
                break
        segments.append(segment)
        position += segment.period * segment.repeats
    return segments


@dataclass(frozen=True)
class Step:
    """A shown step: its template, its text (wildcards as ``<paramN>`` or values), and on
    the last step of a loop the number of steps that repeat one or more times (else 0)."""

    template: str
    text: str
    repeat: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "text": self.text, "repeat_last": self.repeat}


@dataclass(frozen=True)
class Anomaly:
    """Where an anomalous flow diverged: the step number (1-based; one past the steps when
    the end was rejected), the templates expected there, best first, the step seen instead
    (None: the session ended) and whether its template is unknown to the bundle."""

    position: int
    expected: tuple[str, ...]
    seen: Step | None
    unknown: bool


@dataclass(frozen=True)
class Flow:
    """A common flow (``anomaly`` None) or an anomalous one (its steps before the rejected
    one), with its sessions and the parameters and example rows of its steps."""

    steps: tuple[Step, ...]
    sessions: int
    parameters: tuple[str, ...]
    examples: tuple[tuple[str, ...], ...]
    anomaly: Anomaly | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "sessions": self.sessions, "steps": [s.to_json() for s in self.steps],
            "parameters": list(self.parameters), "examples": [list(r) for r in self.examples]}
        if self.anomaly is not None:
            seen = self.anomaly.seen
            document |= {"diverged_at_step": self.anomaly.position,
                         "expected": list(self.anomaly.expected),
                         "seen": None if seen is None else seen.to_json(),
                         "unknown_template": self.anomaly.unknown}
        return document


@dataclass(frozen=True)
class FeatureFlows:
    """The flows of one kind of session, and the counts behind them."""

    kind: str
    sessions: int
    normal: int
    events: int
    distinct_paths: int
    common: tuple[Flow, ...]
    anomalous: tuple[Flow, ...]

    @property
    def flagged(self) -> int:
        return self.sessions - self.normal

    @property
    def covered(self) -> int:
        """Normal sessions whose path is one of the common flows."""
        return sum(flow.sessions for flow in self.common)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "sessions": {"total": self.sessions, "normal": self.normal,
                             "flagged": self.flagged, "events": self.events},
                "common": {"distinct_paths": self.distinct_paths, "covered": self.covered,
                           "flows": [flow.to_json() | {"coverage": coverage(flow, self)}
                                     for flow in self.common]},
                "anomalous": [flow.to_json() for flow in self.anomalous]}


def coverage(flow: Flow, feature: FeatureFlows) -> float:
    """The share of the feature's normal sessions that follow ``flow``."""
    return round(flow.sessions / feature.normal, 4) if feature.normal else 0.0


def mine(sessions: Sequence[ScoredSession], settings: FlowSettings) -> tuple[FeatureFlows, ...]:
    """The flows of each kind of session, kinds in name order."""
    kinds: dict[str, list[ScoredSession]] = {}
    for session in sessions:
        kinds.setdefault(session.kind, []).append(session)
    return tuple(_feature(kind, kinds[kind], settings) for kind in sorted(kinds))


#: The shown steps of one session: per step its template, the number of steps of the loop
#: it ends (0: none) and the values the session gave its wildcards.
_Shown = list[tuple[str, int, tuple[str, ...] | None]]


def _feature(kind: str, sessions: list[ScoredSession], settings: FlowSettings) -> FeatureFlows:
    normal = [s for s in sessions if s.divergence is None]
    paths: dict[tuple[tuple[str, int], ...], list[_Shown]] = {}
    for session in normal:
        shown = _path(session.events)
        paths.setdefault(tuple((t, r) for t, r, _ in shown), []).append(shown)
    common: list[Flow] = []
    covered = 0
    for _, group in sorted(paths.items(), key=lambda item: (-len(item[1]), item[0])):
        if (len(group) < settings.min_support or len(common) >= settings.max_scenarios
                or covered >= settings.coverage * len(normal)):
            break
        common.append(_flow(group, settings))
        covered += len(group)
    return FeatureFlows(kind, len(sessions), len(normal), sum(len(s.events) for s in sessions),
                        len(paths), tuple(common), _anomalous(sessions, settings))


def _path(events: Sequence[Event]) -> _Shown:
    """The shown steps of a normal session: its path, each loop shown by its first pass."""
    shown: _Shown = []
    for start, period, repeats in collapse([event.template for event in events]):
        for offset, event in enumerate(events[start:start + period]):
            ends_loop = repeats > 1 and offset == period - 1
            shown.append((event.template, period if ends_loop else 0, event.values))
    return shown


def _anomalous(sessions: list[ScoredSession], settings: FlowSettings) -> tuple[Flow, ...]:
    groups: dict[tuple[tuple[str, ...], str | None], list[tuple[ScoredSession, Divergence]]] = {}
    for session in sessions:
        divergence = session.divergence
        if divergence is None:
            continue
        prefix = tuple(event.template for event in session.events[:divergence.position])
        seen = (session.events[divergence.position].template
                if divergence.position < len(session.events) else None)
        groups.setdefault((prefix, seen), []).append((session, divergence))
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0][0],
                                                      item[0][1] is None, item[0][1] or ""))
    return tuple(_anomalous_flow(group, settings) for _, group in ranked[:settings.max_scenarios])


def _anomalous_flow(group: list[tuple[ScoredSession, Divergence]],
                    settings: FlowSettings) -> Flow:
    """The flow of sessions rejected at the same step after the same steps."""
    first, divergence = group[0]
    ended = divergence.position == len(first.events)
    flow = _flow([[(e.template, 0, e.values) for e in session.events[:d.position + 1]]
                  for session, d in group], settings)
    expected = Counter(d.expected for _, d in group)
    anomaly = Anomaly(divergence.position + 1,
                      min(expected.items(), key=lambda item: (-item[1], item[0]))[0],
                      None if ended else flow.steps[-1], any(d.unknown for _, d in group))
    return Flow(flow.steps if ended else flow.steps[:-1], flow.sessions, flow.parameters,
                flow.examples, anomaly)


def _flow(group: list[_Shown], settings: FlowSettings) -> Flow:
    """A flow over sessions with the same shown steps, parametrised from their values."""
    templates = [template for template, _, _ in group[0]]
    widths = [wildcards.count(template) for template in templates]
    usable: list[list[tuple[str, ...]]] = []
    for shown in group:
        values = [step_values for _, _, step_values in shown]
        if all(v is not None and len(v) == w for v, w in zip(values, widths, strict=True)):
            usable.append([v for v in values if v is not None])
    columns: dict[tuple[str, ...], str] = {}
    steps = []
    for step, ((template, repeat, _), width) in enumerate(zip(group[0], widths, strict=True)):
        fillers: list[str | None] = [None] * width
        for slot in range(width) if usable else ():
            column = tuple(values[step][slot] for values in usable)
            if len(set(column)) == 1:
                fillers[slot] = column[0]
            else:
                fillers[slot] = f"<{columns.setdefault(column, f'param{len(columns) + 1}')}>"
        steps.append(Step(template, wildcards.fill(template, fillers), repeat))
    rows = Counter(tuple(column[i] for column in columns) for i in range(len(usable)))
    examples = sorted(rows.items(), key=lambda item: (-item[1], item[0]))
    return Flow(tuple(steps), len(group), tuple(columns.values()),
                tuple(row for row, _ in examples[:settings.max_examples]) if columns else ())

"""What alert exporters (SIEM, webhook) send: anomaly alerts and per-batch summaries.

Metadata only: an ``Alert`` carries the template id, the sanitized template, the
session key, the score and the model, never a record's body or attributes; a
``BatchSummary`` counts records, anomalies, flagged session ends and redactions
per detector type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sidecar.record import Batch, Flag, Record
from sidecar.stages import ALERT_TAG

SESSION_END_REASONS = frozenset({"end_marker", "idle", "close"})

ModelInfo = Callable[[], tuple[str, int]]
"""Returns the live model's (name, version); called for anomalies that do not carry it."""


# --------------------------------------------------------------------------- what is exported


@dataclass(frozen=True)
class Alert:
    """What leaves the process about one anomaly: metadata only, no body, no attributes."""

    kind: Literal["record", "session_end"]
    time_ns: int
    tag: str
    template_id: int | None
    template: str | None
    session: str | None
    score: float | None
    model: str | None
    model_version: int | None
    reason: str | None
    """Why a flagged session ended (``end_marker``, ``idle``, ``close``); None for records."""

    def fields(self) -> list[tuple[str, str]]:
        """The set fields (all but the time) as text, in a fixed order starting with kind."""
        values = (("kind", self.kind), ("tag", self.tag), ("template_id", self.template_id),
                  ("template", self.template), ("session", self.session),
                  ("score", None if self.score is None else f"{self.score:.6g}"),
                  ("model", self.model), ("model_version", self.model_version),
                  ("reason", self.reason))
        return [(name, str(value)) for name, value in values if value not in (None, "")]


def alert_of(record: Record, model: ModelInfo | None = None) -> Alert:
    """The Alert for an anomalous record; alert records carry their own model and reason.

    Only attributes the scoring stage itself sets on alert records are read, and only
    when they have the expected type and value; the model of other anomalies comes
    from ``model`` (the live model), if given.
    """
    attrs = record.attributes if record.tag == ALERT_TAG else {}
    name, version, reason = attrs.get("model"), attrs.get("model_version"), attrs.get("reason")
    if not isinstance(name, str) or type(version) is not int:
        name, version = model() if model is not None else (None, None)
    return Alert(
        kind="session_end" if record.tag == ALERT_TAG else "record", time_ns=record.time_ns,
        tag=record.tag, template_id=record.template_id, template=record.template,
        session=record.session, score=record.score, model=name, model_version=version,
        reason=reason if reason in SESSION_END_REASONS else None)


def alerts_in(batch: Batch, model: ModelInfo | None = None) -> list[Alert]:
    """The Alerts for every record of ``batch`` flagged ``anomaly``, in batch order."""
    return [alert_of(r, model) for r in batch if Flag.ANOMALY in r.flags]


@dataclass(frozen=True)
class BatchSummary:
    """Counts for one batch: log records, anomalous ones, flagged session ends, redactions."""

    records: int
    anomalies: int
    session_ends: int
    redactions: tuple[tuple[str, int], ...]
    """Per detector type (and ``failed``/``oversized``/``dropped``), sorted, counts > 0."""

    @property
    def redacted(self) -> int:
        return sum(count for _, count in self.redactions)


def summarize(batch: Batch) -> BatchSummary:
    """Sum the batch's redaction counts per type; alert records count as session ends only."""
    counts: Counter[str] = Counter()
    records = anomalies = session_ends = 0
    for record in batch:
        if record.tag == ALERT_TAG:
            session_ends += Flag.ANOMALY in record.flags
            continue
        records += 1
        anomalies += Flag.ANOMALY in record.flags
        counts.update(record.redactions)
    return BatchSummary(records, anomalies, session_ends,
                        tuple(sorted((k, v) for k, v in counts.items() if v > 0)))


# --------------------------------------------------------------------------- settings

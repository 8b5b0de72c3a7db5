"""The one internal data type: a log Record, and a Batch of them.

Receivers build Records from whatever their protocol carries; every later stage
fills in its own fields (redaction counts, template, session, score, flags) in
place. A Batch is the unit that moves through the pipeline, is acknowledged to
its sender, and is exported. Records are mutable on purpose: stages are plain
functions over a batch and annotating in place avoids a copy per stage.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Flag(StrEnum):
    """Verdicts a stage can attach to a record."""

    ANOMALY = "anomaly"
    UNSEEN_TEMPLATE = "unseen_template"
    REDACTION_FAILED = "redaction_failed"
    DECODE_REPLACED = "decode_replaced"


_FLAGS = {flag.value: flag for flag in Flag}


@dataclass(slots=True)
class Record:
    """One log record.

    ``body`` is text; structured bodies (maps from Fluentd, kvlist from OTLP)
    travel in ``attributes`` with the message text in ``body``. ``time_ns`` is
    nanoseconds since the Unix epoch. Until the redaction stage has run, every
    string here may hold raw personal data and must not leave the process.
    """

    body: str
    time_ns: int = field(default_factory=time.time_ns)
    tag: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    severity: str = ""
    # Filled by later stages.
    redactions: Counter[str] = field(default_factory=Counter)
    template_id: int | None = None
    template: str | None = None
    session: str | None = None
    score: float | None = None
    flags: set[Flag] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form used by exporters (flags sorted for stable output)."""
        return {
            "time_ns": self.time_ns,
            "tag": self.tag,
            "body": self.body,
            "attributes": self.attributes,
            "resource": self.resource,
            "severity": self.severity,
            "redactions": dict(self.redactions),
            "template_id": self.template_id,
            "template": self.template,
            "session": self.session,
            "score": self.score,
            "flags": sorted(flag.value for flag in self.flags),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Inverse of ``to_dict`` (used to read records back from the spool)."""
        redactions, flags = data["redactions"], data["flags"]
        return cls(
            body=data["body"], time_ns=data["time_ns"], tag=data["tag"],
            attributes=data["attributes"], resource=data["resource"],
            severity=data["severity"], redactions=Counter(redactions) if redactions else Counter(),
            template_id=data["template_id"], template=data["template"],
            session=data["session"], score=data["score"],
            flags={_FLAGS[f] for f in flags} if flags else set())


@dataclass(slots=True)
class Batch:
    """Records from one sender, moved and acknowledged together.

    ``source`` names the receiver that produced the batch (for per-receiver
    counts); it never carries peer-supplied text.
    """

    records: list[Record]
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

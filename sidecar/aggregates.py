"""Hourly counts of what the pipeline processed: the exact input of the DP aggregate reports.

Strategy: a stage after scoring (``process``) adds every record to the bucket of the UTC
hour in which the sidecar processed it - the sidecar's clock, not the sender's timestamp,
which is arbitrary - so buckets are contiguous and retention is well defined. Per hour it
counts records, anomalies (records flagged ``anomaly``), redactions per detector TYPE and
records per template id. Session-end alert records (``logminer.alert``, no template id) are
not counted: they are derived from a whole session, not one record.

One record's contribution is bounded, because ``sidecar.privacy`` calibrates its noise to
it: 1 record, at most 1 anomaly, 1 template bucket, and at most ``redaction_clip``
redactions *in total across detectors*. A record with more redactions has its counts scaled
down to exactly ``redaction_clip`` (largest-remainder apportionment, ties by TYPE name);
clipping per detector alone would not bound the total, since the number of TYPEs comes from
the config. So reported redaction counts, exact ones included, are clipped counts; the
unclipped totals are in ``logminer_redaction_values_total``.

Memory is bounded: hours older than ``retention_hours`` are dropped; at most
``max_templates`` template ids are tracked at once, first come first tracked (records of
further ones count under template ``other``; ids no retained hour refers to are
forgotten); detector TYPEs are fixed by the redaction config. Template texts live in a
separate table: they are mined from sanitized bodies, so they are not personal data.

``query`` returns exact counts and exists for ``sidecar.privacy`` alone: exact counts must
never reach a log line, a metric or an error message (the loader's errors name fields, never
values). Persistence: ``aggregates.json`` under data_dir, rewritten every
``save_interval_seconds`` and at ``close`` through a temporary file, fsync, ``os.replace``
and a directory fsync, so a crash leaves the previous file or the new one. The lock makes
the pipeline thread's ``process`` safe against concurrent ``query`` calls from report
handlers.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sidecar.durable import write_json_atomic
from sidecar.record import Batch, Flag, Record
from sidecar.stages import ALERT_TAG

AGGREGATES_FILE = "aggregates.json"
FORMAT = "logminer-aggregates"
VERSION = 1
HOUR_SECONDS = 3600
OTHER_TEMPLATE = "other"


class Measure(StrEnum):
    """What a count counts."""

    RECORDS = "records"
    ANOMALIES = "anomalies"
    REDACTIONS = "redactions"
    TEMPLATE_RECORDS = "template_records"


class Breakdown(StrEnum):
    """How a report may split its counts."""

    HOUR = "hour"
    TEMPLATE = "template"
    DETECTOR = "detector"


KEYED_MEASURES = {Breakdown.DETECTOR: Measure.REDACTIONS,
                  Breakdown.TEMPLATE: Measure.TEMPLATE_RECORDS}
"""Measures whose keys (detector TYPE, template id) come from the data, by breakdown."""


def measures_for(group_by: Iterable[Breakdown]) -> tuple[Measure, ...]:
    """The measures a report grouped by ``group_by`` releases: totals always, keyed on demand."""
    asked = set(group_by)
    return (Measure.RECORDS, Measure.ANOMALIES,
            *(measure for breakdown, measure in KEYED_MEASURES.items() if breakdown in asked))


@dataclass(frozen=True)
class AggregateSettings:
    """Settings of the hourly aggregates behind the DP reports."""

    retention_hours: int = field(
        default=168, metadata={"doc": "Hours of aggregates kept; older hours are dropped.",
                               "min": 1, "max": 24 * 366})
    max_templates: int = field(
        default=1000, metadata={"doc": "Template ids tracked at once; records of further "
                                       "templates count under template `other`.",
                                "min": 1, "max": 100_000})
    redaction_clip: int = field(
        default=10, metadata={"doc": "Most redactions one record adds to the counts (in total "
                                     "across detectors); bounds the DP sensitivity.",
                              "min": 1, "max": 1000})
    save_interval_seconds: float = field(
        default=60.0, metadata={"doc": "How often aggregates.json is rewritten (also at "
                                       "shutdown).", "min": 0.0, "max": 86400.0})


class AggregatesError(ValueError):
    """aggregates.json is unreadable, corrupt, or was kept under another redaction_clip."""


@dataclass
class HourCounts:
    """The counts of one UTC hour."""

    records: int = 0
    anomalies: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    templates: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Cell:
    """One exact count: a measure, optionally for one hour and one key."""

    measure: Measure
    hour: int | None
    """Start of the UTC hour (Unix seconds) when grouped by hour, else None."""
    key: str | None
    """Detector TYPE or template id for keyed measures, else None."""
    count: int


@dataclass(frozen=True)
class ExactCounts:
    """Exact counts for one query. Internal: only ``sidecar.privacy`` may see these."""

    since: int
    """Start of the first hour covered (Unix seconds)."""
    until: int
    """End of the last hour covered (Unix seconds, exclusive)."""
    cells: tuple[Cell, ...]
    """Every hour for records and anomalies (zeros included); keyed cells only where non-zero."""
    template_texts: Mapping[str, str]
    """Sanitized template text per template id (not for ``other``)."""


def clip_redactions(counts: Mapping[str, int], clip: int) -> dict[str, int]:
    """A record's redaction counts scaled down to at most ``clip`` in total.

    Counts within the clip are kept; above it, each TYPE gets its proportional share
    rounded down, and the remaining units go to the largest remainders (ties by name).
    """
    positive = {name: n for name, n in counts.items() if n > 0}
    total = sum(positive.values())
    if total <= clip:
        return positive
    shares = {name: n * clip // total for name, n in positive.items()}
    left = clip - sum(shares.values())
    for name in sorted(positive, key=lambda name: (-(positive[name] * clip % total), name))[:left]:
        shares[name] += 1
    return {name: n for name, n in shares.items() if n}


class AggregateCounts:
    """Hourly counts, bounded and persisted; a pipeline stage (``name``, ``process``).

    With ``path`` the counts are loaded from it if it exists (``AggregatesError`` if it
    cannot be used) and saved to it; without, they live in memory only. ``clock`` gives
    Unix seconds (injectable for tests).
    """

    name = "aggregates"

    def __init__(self, settings: AggregateSettings, path: Path | None = None, *,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._hours: dict[int, HourCounts] = {}
        self._texts: dict[str, str] = {}
        self._dirty = False
        if path is not None and path.exists():
            self._load(path)
        self._saved_at = time.monotonic()

    @classmethod
    def read(cls, path: Path, settings: AggregateSettings, *,
             clock: Callable[[], float] = time.time) -> AggregateCounts:
        """A read-only snapshot of the counts a sidecar saved at ``path`` (never written back)."""
        if not path.exists():
            raise AggregatesError(f"{path}: no aggregates yet (the sidecar writes them every "
                                  "save_interval_seconds and at shutdown)")
        counts = cls(settings, clock=clock)
        counts._load(path)
        return counts

    # ------------------------------------------------------------------ counting

    def process(self, batch: Batch) -> None:
        """Count the batch's records; save if ``save_interval_seconds`` has passed."""
        self.observe(batch)
        if time.monotonic() - self._saved_at >= self.settings.save_interval_seconds:
            self.save()

    def observe(self, batch: Batch) -> None:
        """Add each record (except alert records) to the current hour's bucket."""
        hour = int(self._clock() // HOUR_SECONDS)
        with self._lock:
            self._expire(hour)
            if not batch.records:
                return
            bucket = self._hours.setdefault(hour, HourCounts())
            for record in batch:
                if record.tag == ALERT_TAG and record.template_id is None:
                    continue
                bucket.records += 1
                bucket.anomalies += int(Flag.ANOMALY in record.flags)
                bucket.redactions.update(
                    clip_redactions(record.redactions, self.settings.redaction_clip))
                bucket.templates[self._template_key(record)] += 1
            self._dirty = True

    def _template_key(self, record: Record) -> str:
        if record.template_id is None:
            return OTHER_TEMPLATE
        key = str(record.template_id)
        if key not in self._texts and len(self._texts) >= self.settings.max_templates:
            return OTHER_TEMPLATE
        if record.template is not None:
            self._texts[key] = record.template  # Drain generalises texts: keep the latest
        return key

    def _expire(self, current_hour: int) -> None:
        """Drop hours outside the retention window and template texts no hour refers to."""
        oldest = current_hour - self.settings.retention_hours + 1
        expired = [hour for hour in self._hours if hour < oldest]
        if not expired:
            return
        for hour in expired:
            del self._hours[hour]
        used = {key for bucket in self._hours.values() for key in bucket.templates}
        self._texts = {key: text for key, text in self._texts.items() if key in used}
        self._dirty = True

    # ------------------------------------------------------------------ querying

    def window(self, since: int | None, until: int | None) -> range:
        """The retained hour indexes touching ``[since, until)`` (Unix seconds; None = open).

        Raises ValueError if there is none.
        """
        now_hour = int(self._clock() // HOUR_SECONDS)
        first = now_hour - self.settings.retention_hours + 1
        if since is not None:
            first = max(first, since // HOUR_SECONDS)
        end = now_hour + 1
        if until is not None:
            end = min(end, -(-until // HOUR_SECONDS))
        if first >= end:
            raise ValueError("the time range covers none of the retained hours (the last "
                             f"{self.settings.retention_hours} UTC hours, up to now)")
        return range(first, end)

    def query(self, since: int | None, until: int | None,
              group_by: Iterable[Breakdown]) -> ExactCounts:
        """Exact counts over the hours ``window(since, until)`` for ``measures_for(group_by)``.

        Grouped by hour, every hour of the window has a records and an anomalies cell.
        """
        group_by = frozenset(group_by)
        hours = self.window(since, until)
        per_hour = Breakdown.HOUR in group_by
        with self._lock:
            self._expire(int(self._clock() // HOUR_SECONDS))
            groups: dict[int | None, list[HourCounts]] = (
                {hour * HOUR_SECONDS: [self._hours[hour]] if hour in self._hours else []
                 for hour in hours} if per_hour
                else {None: [self._hours[h] for h in hours if h in self._hours]})
            cells = [cell for label, buckets in groups.items()
                     for cell in _cells(label, buckets, group_by)]
            texts = dict(self._texts)
        return ExactCounts(since=hours.start * HOUR_SECONDS, until=hours.stop * HOUR_SECONDS,
                           cells=tuple(cells), template_texts=texts)

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        """Write aggregates.json if anything changed (no-op without a path)."""
        with self._lock:
            if self._path is not None and self._dirty:
                write_json_atomic(self._path, self._document())
                self._dirty = False
            self._saved_at = time.monotonic()

    def close(self) -> None:
        """Save at shutdown."""
        self.save()

    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "redaction_clip": self.settings.redaction_clip,
            "templates": self._texts,
            "hours": {str(hour): {"records": b.records, "anomalies": b.anomalies,
                                  "redactions": dict(b.redactions),
                                  "templates": dict(b.templates)}
                      for hour, b in sorted(self._hours.items())},
        }

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_bytes().decode("utf-8"))
            doc = _mapping(document, "document",
                           {"format", "version", "redaction_clip", "templates", "hours"})
            if doc["format"] != FORMAT or doc["version"] != VERSION:
                raise ValueError(f"format: not a version {VERSION} {FORMAT} file")
            if doc["redaction_clip"] != self.settings.redaction_clip:
                raise ValueError("redaction_clip: kept under another privacy.aggregates."
                                 "redaction_clip; restore that setting or move the file away")
            texts = _mapping(doc["templates"], "templates", None)
            if not all(isinstance(text, str) for text in texts.values()):
                raise ValueError("templates: expected template texts")
            hours = {_integer(int(hour) if hour.isdecimal() else None, "hours.<key>"):
                     _hour(value, f"hours.{hour}")
                     for hour, value in _mapping(doc["hours"], "hours", None).items()}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AggregatesError(f"{path}: cannot read ({type(exc).__name__})") from None
        except ValueError as exc:
            raise AggregatesError(f"{path}: {exc}") from None
        self._texts, self._hours = dict(texts), hours
        self._expire(int(self._clock() // HOUR_SECONDS))


def _cells(hour: int | None, buckets: list[HourCounts],
           group_by: frozenset[Breakdown]) -> list[Cell]:
    cells = [Cell(Measure.RECORDS, hour, None, sum(b.records for b in buckets)),
             Cell(Measure.ANOMALIES, hour, None, sum(b.anomalies for b in buckets))]
    for breakdown, measure in KEYED_MEASURES.items():
        if breakdown in group_by:
            totals: Counter[str] = Counter()
            for bucket in buckets:
                totals.update(bucket.redactions if measure is Measure.REDACTIONS
                              else bucket.templates)
            cells += [Cell(measure, hour, key, n) for key, n in sorted(totals.items()) if n]
    return cells




def _mapping(value: object, where: str, keys: set[str] | None) -> dict[str, Any]:
    """``value`` as a dict with string keys (exactly ``keys`` if given); errors name ``where``."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: expected a mapping")
    if keys is not None and set(value) != keys:
        raise ValueError(f"{where}: expected the keys {', '.join(sorted(keys))}")
    return value


def _integer(value: object, where: str) -> int:
    """``value`` if it is a non-negative int; the error never quotes it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected a non-negative integer")
    return value


def _counter(value: object, where: str) -> Counter[str]:
    return Counter({key: _integer(n, f"{where}.<value>")
                    for key, n in _mapping(value, where, None).items()})


def _hour(value: object, where: str) -> HourCounts:
    raw = _mapping(value, where, {"records", "anomalies", "redactions", "templates"})
    return HourCounts(records=_integer(raw["records"], f"{where}.records"),
                      anomalies=_integer(raw["anomalies"], f"{where}.anomalies"),
                      redactions=_counter(raw["redactions"], f"{where}.redactions"),
                      templates=_counter(raw["templates"], f"{where}.templates"))

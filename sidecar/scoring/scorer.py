"""The scoring stage: template miner -> bundle vocabulary -> session -> model step -> flags.

Strategy: ``Scorer.process`` is a plain synchronous function over a batch, run by
the pipeline thread. Between batches it polls for a new live or shadow bundle and
ends idle sessions. For the batch it mines each record's template (flagging
``unseen_template`` when the miner reports it new), maps the template to a bundle
key (0 when the bundle does not know it), derives the session key and whether the
record is an end marker, and then hands arrays to the live ``SessionModel``: one
interpreter call per wave of distinct sessions, state gathered from and scattered
back to the session table. A record outside the top-g predictions for its session
(or with an unknown key) is flagged ``anomaly``; every record gets its surprise as
``score``. When a session ends (end marker, idle timeout, or ``close_all`` at the
end of input) its end key is judged against the last prediction; a flagged end is
counted and raised as a ``SessionAlert`` through the ``on_alert`` callback.

A shadow bundle, if configured, sees the same templates and session keys (mirroring
the live table's sessions, evictions and expiries) and its verdicts are only
compared with the live ones and exported as agreement metrics; it never flags.
Batches larger than ``max_sessions`` are scored in chunks of that size, which keeps
every session a chunk touches in the table until the chunk is done.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.record import Batch, Flag, Record
from sidecar.scoring.bundle import Bundle
from sidecar.scoring.drift import DriftMonitor, DriftSettings
from sidecar.scoring.reload import BundleWatcher, ReloadMetrics
from sidecar.scoring.runner import UNKNOWN_KEY, SessionModel, Verdicts
from sidecar.scoring.sessions import SessionKeyer, TextPattern


@dataclass(frozen=True)
class ScoringSettings:
    model_dir: str = field(
        default="models/hdfs", metadata={"doc": "Live model bundle directory (models/<name>/)."})
    shadow_dir: str | None = field(
        default=None,
        metadata={"doc": "Candidate bundle scored alongside the live one, without flags."})
    g: int | None = field(
        default=None, metadata={"doc": "Top-g for the live bundle (default: its card's).",
                                "min": 1, "max": 1_000_000})
    session_key: str | None = field(
        default=None, metadata={"doc": "Session key: \"regex:<RE2 pattern>\", \"attr:<name>\" "
                                       "or \"stream\" (default: the live card's)."})
    end_marker: str | None = field(
        default=None, metadata={"doc": "RE2 pattern marking a session's last record in the "
                                       "sanitized body (default: the live card's)."})
    idle_timeout_seconds: float | None = field(
        default=None, metadata={"doc": "Idle time that ends a session (default: the card's).",
                                "min": 0.001})
    max_sessions: int = field(
        default=100_000, metadata={"doc": "Live sessions kept; beyond it the least recently "
                                          "used is evicted.", "min": 1, "max": 10_000_000})
    reload_poll_seconds: float = field(
        default=5.0, metadata={"doc": "How often to check the bundle directories for changes.",
                               "min": 0.0})

    drift: DriftSettings = field(
        default=DriftSettings(),
        metadata={"doc": "How drift from the live bundle's training data is measured."})

    def __post_init__(self) -> None:
        try:
            if self.session_key is not None:
                SessionKeyer(self.session_key)
            if self.end_marker is not None:
                TextPattern(self.end_marker)
        except ValueError as exc:
            raise ValueError(f"scoring: {exc}") from None


@dataclass(frozen=True)
class SessionAlert:
    """A session whose end the live model flagged (it stopped where more was expected)."""

    session: str
    reason: str
    """What ended it: ``end_marker``, ``idle`` or ``close``."""
    score: float
    """-log p(end of session)."""
    model: str
    model_version: int
    template: str | None
    """Sanitized template of the session's last record."""


class MinedTemplate(Protocol):
    @property
    def template_id(self) -> int: ...
    @property
    def template(self) -> str: ...
    @property
    def is_new(self) -> bool: ...


class Miner(Protocol):
    """The template miner: ``add`` mines one sanitized body."""

    def add(self, body: str) -> MinedTemplate: ...


class KeyMap(Protocol):
    """Maps a live miner template to a bundle key (None: the bundle does not know it).

    Called once per record, so it should remember its answers (``VocabularyMap`` does).
    """

    def key_for(self, miner_template: str) -> int | None: ...


class ScoringMetrics:
    """The scoring stage's metrics (bundle loads are in ``ReloadMetrics``)."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.records = Counter("logminer_scoring_records", "Records scored by the live model.",
                               registry=r)
        self.anomalies = Counter(
            "logminer_scoring_anomalies", "Anomalies flagged, by kind (record, session_end).",
            ["kind"], registry=r)
        self.unseen = Counter("logminer_scoring_unseen_templates",
                              "Records whose template the miner had never seen.", registry=r)
        self.unknown = Counter("logminer_scoring_unknown_keys",
                               "Records whose template the live bundle does not know.",
                               registry=r)
        self.sessions_live = Gauge("logminer_scoring_sessions_live",
                                   "Sessions in the live table.", registry=r)
        self.ended = Counter(
            "logminer_scoring_sessions_ended", "Sessions whose end was scored, by reason "
            "(end_marker, idle, close).", ["reason"], registry=r)
        self.evicted = Counter(
            "logminer_scoring_sessions_evicted", "Sessions removed from the table by eviction, "
            "by reason (idle: ended too; lru: table full; reload: new bundle).", ["reason"],
            registry=r)
        self.batch_seconds = Histogram(
            "logminer_scoring_batch_seconds", "Time to score one batch.", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.shadow_agreements = Counter(
            "logminer_scoring_shadow_agreements", "Verdicts where the shadow bundle agreed "
            "with the live one, by kind (record, session_end).", ["kind"], registry=r)
        self.shadow_disagreements = Counter(
            "logminer_scoring_shadow_disagreements", "Verdicts where the shadow bundle "
            "disagreed with the live one, by kind (record, session_end).", ["kind"], registry=r)


class _Scoring:
    """A bundle wired for scoring: its session model and miner-template -> key map."""

    def __init__(self, bundle: Bundle, *, g: int | None, max_sessions: int,
                 vocabulary: Callable[[Mapping[int, str]], KeyMap]):
        self.bundle = bundle
        self.model = SessionModel(bundle, g or bundle.card.scoring.g, max_sessions)
        self._map = vocabulary(bundle.vocab.templates)

    def key_for(self, template: str) -> int:
        return self._map.key_for(template) or UNKNOWN_KEY


class Scorer:
    """The pipeline stage that scores records with the live bundle (and a shadow, if any).

    Raises BundleError if the live bundle cannot be loaded. ``vocabulary`` builds the
    miner-template -> bundle-key map for a bundle's templates (``VocabularyMap``, or a
    stand-in in tests). ``on_alert`` receives
    flagged session ends, synchronously. ``clock`` gives monotonic seconds for idle
    expiry and reload polling. All methods must be called from one thread (the
    pipeline's); between batches, ``process(Batch([]))`` or ``expire_idle()`` ends
    idle sessions when no records arrive.
    """

    def __init__(self, settings: ScoringSettings, miner: Miner,
                 vocabulary: Callable[[Mapping[int, str]], KeyMap],
                 registry: CollectorRegistry, *,
                 on_alert: Callable[[SessionAlert], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._miner = miner
        self._on_alert = on_alert
        self._clock = clock
        self._metrics = ScoringMetrics(registry)
        reload_metrics = ReloadMetrics(registry)
        build = functools.partial(_Scoring, max_sessions=settings.max_sessions,
                                  vocabulary=vocabulary)
        self._live_watcher = BundleWatcher(
            settings.model_dir, "live", functools.partial(build, g=settings.g), reload_metrics,
            settings.reload_poll_seconds, clock)
        self._live = self._live_watcher.load()
        self._configure()
        self._drift = DriftMonitor(self._live.bundle.card, registry, settings.drift)
        self._shadow: _Scoring | None = None
        self._shadow_watcher: BundleWatcher[_Scoring] | None = None
        if settings.shadow_dir is not None:
            self._shadow_watcher = BundleWatcher(  # the shadow keeps its card's g
                settings.shadow_dir, "shadow", functools.partial(build, g=None), reload_metrics,
                settings.reload_poll_seconds, clock)
            self._shadow = self._shadow_watcher.poll()

    @property
    def live_bundle(self) -> Bundle:
        return self._live.bundle

    @property
    def shadow_bundle(self) -> Bundle | None:
        return self._shadow.bundle if self._shadow is not None else None

    def process(self, batch: Batch) -> None:
        """Score ``batch`` in place: template fields, session, score and flags on each record.

        Before scoring, picks up a changed bundle (sessions restart their state) and
        ends sessions idle for longer than the idle timeout. An empty batch just does that.
        """
        started = time.perf_counter()
        now = self._clock()
        self._reload()
        self.expire_idle(now)
        records, size = batch.records, self._settings.max_sessions
        for first in range(0, len(records), size):
            self._score(records[first:first + size], now)
        self._metrics.sessions_live.set(len(self._live.model.table))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)

    def expire_idle(self, now: float | None = None) -> None:
        """End (and judge) sessions idle for longer than the idle timeout."""
        now = self._clock() if now is None else now
        live = self._live.model.table.expire(now, self._idle_seconds)
        shadow = (self._shadow.model.table.expire(now, self._idle_seconds)
                  if self._shadow is not None else [])
        self._metrics.evicted.labels(reason="idle").inc(len(live))
        self._end_sessions("idle", live, shadow)

    def close_all(self) -> None:
        """End (and judge) every live session, e.g. at the end of an input being evaluated."""
        shadow = self._shadow.model.table.drain() if self._shadow is not None else []
        self._end_sessions("close", self._live.model.table.drain(), shadow)
        self._metrics.sessions_live.set(0)

    def _configure(self) -> None:
        """Session key, end marker and idle timeout: settings first, else the live card."""
        card, settings = self._live.bundle.card.scoring, self._settings
        self._keyer = SessionKeyer(settings.session_key or card.session_key)
        end_marker = settings.end_marker or card.end_marker
        self._end_marker = TextPattern(end_marker) if end_marker else None
        self._idle_seconds = settings.idle_timeout_seconds or card.idle_timeout_seconds

    def _reload(self) -> None:
        fresh = self._live_watcher.poll()
        if fresh is not None:
            self._metrics.evicted.labels(reason="reload").inc(len(self._live.model.table))
            self._live = fresh
            self._configure()
            self._drift.reset(fresh.bundle.card)
            if self._shadow is not None:
                self._shadow.model.reset()  # keep mirroring the live sessions
        if self._shadow_watcher is not None:
            fresh = self._shadow_watcher.poll()
            if fresh is not None:
                self._shadow = fresh

    def _score(self, records: Sequence[Record], now: float) -> None:
        live, shadow, metrics = self._live, self._shadow, self._metrics
        templates: list[str] = []
        sessions: list[str] = []
        keys: list[int] = []
        unseen = 0
        mine, key_for, keyer = self._miner.add, live.key_for, self._keyer  # hot loop
        for record in records:
            mined = mine(record.body)
            record.template_id = mined.template_id
            record.template = template = mined.template
            if mined.is_new:
                record.flags.add(Flag.UNSEEN_TEMPLATE)
                unseen += 1
            templates.append(template)
            keys.append(key_for(template))
            record.session = session = keyer(record)
            sessions.append(session)
        marker = self._end_marker
        ends = [marker.find(r.body) is not None for r in records] if marker else None

        assigned = live.model.table.assign(sessions, now, ends)
        key_array = np.array(keys, np.int32)
        verdicts = live.model.step(assigned.slots, key_array)
        last_template = live.model.table.last_template
        for record, slot, template, anomalous, score in zip(
                records, assigned.slots.tolist(), templates, verdicts.anomalous.tolist(),
                verdicts.scores.tolist(), strict=True):
            record.score = score
            last_template[slot] = template
            if anomalous:
                record.flags.add(Flag.ANOMALY)
        metrics.records.inc(len(records))
        flagged = int(verdicts.anomalous.sum())
        metrics.anomalies.labels(kind="record").inc(flagged)
        self._drift.observe(key_array, flagged)
        metrics.unseen.inc(unseen)
        metrics.unknown.inc(int((key_array == UNKNOWN_KEY).sum()))
        metrics.evicted.labels(reason="lru").inc(assigned.evicted)

        shadow_closed: list[tuple[str, int]] = []
        if shadow is not None:
            shadow_assigned = shadow.model.table.assign(sessions, now, ends)
            shadow_verdicts = shadow.model.step(
                shadow_assigned.slots, np.array([shadow.key_for(t) for t in templates], np.int32))
            self._compare("record", verdicts, shadow_verdicts)
            shadow_closed = shadow_assigned.closed
        self._end_sessions("end_marker", assigned.closed, shadow_closed)

    def _end_sessions(self, reason: str, closed: list[tuple[str, int]],
                      shadow_closed: list[tuple[str, int]]) -> None:
        """Judge the end key of sessions removed from the tables, alert, free their slots."""
        if not closed and not shadow_closed:
            return
        live = self._live
        slots = [slot for _, slot in closed]
        verdicts = live.model.end(slots)
        self._metrics.ended.labels(reason=reason).inc(len(closed))
        self._metrics.anomalies.labels(kind="session_end").inc(int(verdicts.anomalous.sum()))
        card = live.bundle.card
        for (session, slot), anomalous, score in zip(closed, verdicts.anomalous.tolist(),
                                                     verdicts.scores.tolist(), strict=True):
            if anomalous and self._on_alert is not None:
                self._on_alert(SessionAlert(session, reason, score, card.name, card.version,
                                            live.model.table.last_template[slot]))
        if self._shadow is not None and shadow_closed:
            shadow_model = self._shadow.model
            shadow_verdicts = shadow_model.end([slot for _, slot in shadow_closed])
            live_index = {session: i for i, (session, _) in enumerate(closed)}
            pairs = [(live_index[s], i) for i, (s, _) in enumerate(shadow_closed)
                     if s in live_index]
            if pairs:
                live_rows, shadow_rows = (np.array(rows) for rows in zip(*pairs, strict=True))
                self._compare("session_end", _rows(verdicts, live_rows),
                              _rows(shadow_verdicts, shadow_rows))
            shadow_model.table.release([slot for _, slot in shadow_closed])
        live.model.table.release(slots)

    def _compare(self, kind: str, live: Verdicts, shadow: Verdicts) -> None:
        same = int((live.anomalous == shadow.anomalous).sum())
        self._metrics.shadow_agreements.labels(kind=kind).inc(same)
        self._metrics.shadow_disagreements.labels(kind=kind).inc(len(live.anomalous) - same)


def _rows(verdicts: Verdicts, rows: np.ndarray) -> Verdicts:
    return Verdicts(verdicts.anomalous[rows], verdicts.scores[rows])

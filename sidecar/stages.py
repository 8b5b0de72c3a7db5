"""The processing stages, built from config: redact -> template + sessionize + score.

Redaction comes first and alone sees raw text (bodies, attributes, resource, and
the shipper's tag, which can hold a user name); the scoring stage mines
templates from the sanitized body, so the template table and the model only
ever hold sanitized text. The scoring stage also:

- turns each flagged session end (a session that stopped early) into an alert
  record in the same batch (tag ``logminer.alert``, flag ``anomaly``), so
  alerts travel the same durable path as records, to every exporter;
- saves the template table under ``data_dir`` every ``save_interval_seconds``
  and at shutdown (crash-safe writes), so template ids survive restarts.
  Sessions are not ended at shutdown: a stop is not a session end.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.pipeline import Stage
from sidecar.record import Batch, Flag, Record
from sidecar.redact.redactor import Redactor
from sidecar.redact.settings import RedactionSettings
from sidecar.redact.store import TokenStore
from sidecar.scoring.scorer import Scorer, ScoringSettings, SessionAlert
from sidecar.telemetry import Telemetry
from sidecar.templates.miner import MinerSettings, TemplateMiner
from sidecar.templates.store import TemplateStoreError, load_miner, save_miner
from sidecar.templates.vocabulary import VocabularyMap

log = logging.getLogger(__name__)

ALERT_TAG = "logminer.alert"
MAX_CACHED_TAGS = 10_000


@dataclass(frozen=True)
class TemplateTableSettings:
    miner: MinerSettings = field(default_factory=MinerSettings,
                                 metadata={"doc": "Template mining (Drain-style) parameters."})
    save_interval_seconds: float = field(
        default=30.0, metadata={"doc": "How often the template table is saved.", "min": 0.0})


def resolve_bundle_dir(path: str) -> str:
    """Find a bundle directory: as given, else the shipped ``models/`` (checkout or install).

    ``pip install .`` puts the shipped bundles under ``<prefix>/share/logminer/models``; an
    editable install or a checkout has them beside the package.
    """
    given = Path(path)
    if given.is_absolute() or given.exists():
        return path
    relative = given.relative_to("models") if given.parts[:1] == ("models",) else given
    for root in (Path(__file__).resolve().parent.parent / "models",
                 Path(sys.prefix) / "share" / "logminer" / "models"):
        if (root / relative).is_dir():
            return str(root / relative)
    return path


def alert_record(alert: SessionAlert) -> Record:
    """A record announcing that a session ended where the model expected more."""
    record = Record(body=f"session ended early after: {alert.template}", tag=ALERT_TAG,
                    attributes={"reason": alert.reason, "model": alert.model,
                                "model_version": alert.model_version},
                    session=alert.session, score=alert.score, template=alert.template)
    record.flags.add(Flag.ANOMALY)
    return record


class ScoringStage:
    """Scorer plus alert records plus template-table persistence."""

    name = "score"

    def __init__(self, settings: ScoringSettings, templates: TemplateTableSettings,
                 table_path: Path, registry: CollectorRegistry):
        self._templates = templates
        self._path = table_path
        self.miner = self._load_miner()
        self._alerts: list[Record] = []
        settings = replace(
            settings, model_dir=resolve_bundle_dir(settings.model_dir),
            shadow_dir=settings.shadow_dir and resolve_bundle_dir(settings.shadow_dir))
        self.scorer = Scorer(settings, self.miner, VocabularyMap, registry,
                             on_alert=lambda a: self._alerts.append(alert_record(a)))
        self._saved_at = time.monotonic()

    def _load_miner(self) -> TemplateMiner:
        if not self._path.exists():
            return TemplateMiner(self._templates.miner)
        try:
            return load_miner(self._path, self._templates.miner)
        except TemplateStoreError as exc:
            raise ValueError(f"template table {self._path}: {exc}") from None

    def process(self, batch: Batch) -> None:
        self.scorer.process(batch)
        self._flush_alerts(batch)
        if time.monotonic() - self._saved_at >= self._templates.save_interval_seconds:
            self.save()

    def _flush_alerts(self, batch: Batch) -> None:
        if self._alerts:
            batch.records.extend(self._alerts)
            self._alerts = []

    def save(self) -> None:
        """Persist the template table (also called by the app at shutdown)."""
        save_miner(self.miner, self._path)
        self._saved_at = time.monotonic()


class RedactionStage:
    name = "redact"

    def __init__(self, settings: RedactionSettings, secret: bytes,
                 store: TokenStore | None = None, telemetry: Telemetry | None = None):
        self.store = store
        self._telemetry = telemetry
        hook = store.put if store is not None else None  # an empty store is falsy
        self.redactor = Redactor(settings, secret, on_token=hook)
        self._tag_redactor = Redactor(settings, secret, on_token=hook)
        self._tag_lock = threading.Lock()
        self._tags: dict[str, str] = {}

    def clean_tag(self, tag: str) -> str:
        """The tag with any personal data in it replaced (tags are few: results are cached).

        Thread-safe: telemetry asks from the event loop, the stage from the worker thread.
        """
        clean = self._tags.get(tag)
        if clean is None:
            with self._tag_lock:
                clean = self._tag_redactor.redact_text(tag)[0]
                if len(self._tags) < MAX_CACHED_TAGS:
                    self._tags[tag] = clean
        return clean

    def process(self, batch: Batch) -> None:
        self.redactor.redact_batch(batch.records)
        for record in batch:
            record.tag = self.clean_tag(record.tag)
        if self._telemetry is not None:
            totals: Counter[str] = Counter()
            for record in batch:
                totals.update(record.redactions)
            for detector, n in totals.items():
                self._telemetry.redactions.labels(detector=detector).inc(n)
        if self.store is not None:
            self.store.flush()  # originals durable before their tokens are acknowledged


def as_stage(component: RedactionStage | ScoringStage) -> Stage:
    return Stage(component.name, component.process)

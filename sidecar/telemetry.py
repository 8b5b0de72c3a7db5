"""The app-owned Prometheus registry and the sidecar's health state.

Every component gets the one ``Telemetry`` object the app builds and counts
through its methods, so metric names and label sets live in one place and no
component touches the global registry. Label values are fixed identifiers
(receiver, stage, exporter, error kind) or shipper tags; tags are capped at
``max_tags`` distinct values (the rest count as ``other``) so a shipper that
puts pod names in tags cannot blow up cardinality. No label ever carries
record content.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.record import Batch

OTHER_TAG = "other"
REDACTED_TAG = "redacted"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0)


@dataclass
class Health:
    """Liveness and readiness, as named conditions.

    The process is live while its event loop answers; it is ready when every
    registered condition is true (receivers listening, model loaded, ...).
    """

    _conditions: dict[str, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, ok: bool) -> None:
        with self._lock:
            self._conditions[name] = ok

    def ready(self) -> bool:
        with self._lock:
            return bool(self._conditions) and all(self._conditions.values())

    def conditions(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._conditions)


class Telemetry:
    """Metrics and health for one sidecar instance."""

    def __init__(self, registry: CollectorRegistry | None = None, *, max_tags: int = 100):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.health = Health()
        # Tags arrive before redaction: the app sets this to the redactor's verdict, so a tag
        # holding personal data (e.g. a user's e-mail) never becomes a label value.
        self.tag_is_clean: Callable[[str], bool] = lambda tag: True
        self._max_tags = max_tags
        self._tags: set[str] = set()
        self._tags_lock = threading.Lock()
        r = self.registry
        self.received = Counter(
            "logminer_receiver_records", "Records accepted from senders.",
            ["receiver", "tag"], registry=r)
        self.receiver_errors = Counter(
            "logminer_receiver_errors", "Inputs rejected or connections closed, by kind.",
            ["receiver", "kind"], registry=r)
        self.stage_in = Counter(
            "logminer_pipeline_records_in", "Records entering a pipeline stage.",
            ["stage"], registry=r)
        self.stage_out = Counter(
            "logminer_pipeline_records_out", "Records leaving a pipeline stage.",
            ["stage"], registry=r)
        self.stage_errors = Counter(
            "logminer_pipeline_errors", "Batches a stage failed on.", ["stage"], registry=r)
        self.dropped = Counter(
            "logminer_pipeline_dropped_records", "Records dropped, by reason (never silent).",
            ["reason"], registry=r)
        self.queue_depth = Gauge(
            "logminer_pipeline_queue_records", "Records waiting in the pipeline queue.",
            registry=r)
        self.pipeline_errors = Counter(
            "logminer_pipeline_failures", "Pipeline failures by kind (e.g. spool_write).",
            ["kind"], registry=r)
        self.spool_bytes = Gauge(
            "logminer_spool_bytes", "Bytes held in the spool.", registry=r)
        self.spool_torn_bytes = Counter(
            "logminer_spool_torn_bytes", "Bytes of torn tails cut off at spool recovery.",
            registry=r)
        self.spool_backlog_seconds = Gauge(
            "logminer_spool_backlog_age_seconds",
            "Age of the oldest spooled entry an exporter has not delivered.",
            ["exporter"], registry=r)
        self.redactions = Counter(
            "logminer_redaction_values", "Values replaced, by detector type.", ["detector"],
            registry=r)
        self.ingest_latency = Histogram(
            "logminer_pipeline_ingest_latency_seconds",
            "From a sender's submit to its records being durable in the spool.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.delivery_latency = Histogram(
            "logminer_exporter_delivery_latency_seconds",
            "From a batch entering the spool to its delivery by an exporter.", ["exporter"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.exported = Counter(
            "logminer_exporter_records", "Records an exporter delivered.",
            ["exporter"], registry=r)
        self.export_errors = Counter(
            "logminer_exporter_errors", "Failed export attempts, by kind.",
            ["exporter", "kind"], registry=r)

    def tag_label(self, tag: str) -> str:
        """``tag`` as a label value; ``redacted`` if it holds personal data, ``other`` past
        the cap."""
        with self._tags_lock:
            if tag in self._tags:
                return tag
            if len(self._tags) >= self._max_tags:
                return OTHER_TAG
        if not self.tag_is_clean(tag):
            return REDACTED_TAG
        with self._tags_lock:
            self._tags.add(tag)
        return tag

    def count_received(self, receiver: str, batch: Batch) -> None:
        """Count a batch a receiver accepted, per tag."""
        per_tag: dict[str, int] = {}
        for record in batch.records:
            per_tag[record.tag] = per_tag.get(record.tag, 0) + 1
        for tag, n in per_tag.items():
            self.received.labels(receiver=receiver, tag=self.tag_label(tag)).inc(n)

    def watch_privacy(self, epsilon_spent: Callable[[], Mapping[str, float]]) -> None:
        """Export ``logminer_privacy_epsilon_spent{consumer}``, read from the ledger per scrape.

        Consumer ids are client-chosen: one that holds personal data becomes ``redacted``.
        """
        telemetry = self

        class PrivacyCollector(Collector):
            def collect(self) -> Iterable[GaugeMetricFamily]:
                family = GaugeMetricFamily(
                    "logminer_privacy_epsilon_spent",
                    "Differential-privacy epsilon spent per report consumer (ledger).",
                    labels=["consumer"])
                spent: dict[str, float] = {}
                for consumer, epsilon in epsilon_spent().items():
                    label = consumer if telemetry.tag_is_clean(consumer) else REDACTED_TAG
                    spent[label] = spent.get(label, 0.0) + epsilon
                for label, epsilon in sorted(spent.items()):
                    family.add_metric([label], epsilon)
                yield family

        self.registry.register(PrivacyCollector())

    def count_pipeline_error(self, kind: str) -> None:
        self.pipeline_errors.labels(kind=kind).inc()

    def count_receiver_error(self, receiver: str, kind: str, n: int = 1) -> None:
        """Count a rejected input; ``kind`` is a fixed identifier, never peer text."""
        self.receiver_errors.labels(receiver=receiver, kind=kind).inc(n)

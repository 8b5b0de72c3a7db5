"""Drift: how far live traffic has moved from the live bundle's training data.

Strategy: the scorer calls ``observe`` once per scored chunk with the chunk's bundle keys
(``UNKNOWN_KEY`` = a template the bundle does not know) and how many of its records it
flagged. A sliding window of the most recent chunks keeps per-key counts; whole chunks are
evicted while the rest still holds ``window_records`` records, so an update costs
O(chunk + vocabulary). After each update four gauges are set:

- ``logminer_drift_unknown_template_share``: share of the window's records whose template
  the bundle does not know;
- ``logminer_drift_template_psi``: population stability index of the window's known-key
  distribution p against the card's ``template_distribution`` q,
  PSI = sum_i (p_i - q_i) ln(p_i / q_i), with every share floored at ``SHARE_FLOOR`` so a
  template absent on one side counts as rare rather than as infinite drift;
- ``logminer_drift_template_js``: Jensen-Shannon divergence of the same p and q in bits,
  JS = (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2 and log base 2, between 0
  (identical) and 1 (disjoint); unlike PSI it needs no floor;
- ``logminer_drift_anomaly_rate``: records flagged / records in the window.

Unknown keys are left out of PSI and JS (they have their own share), so the divergences say
whether the mix of known templates changed and the unknown share whether new templates
appeared. Until the window holds ``min_records`` records every gauge reads NaN (not enough
data; alert expressions comparing NaN are false), and PSI and JS stay NaN while the window
holds no known key. ``reset(card)`` - on a model reload - empties the window and takes the
new card's distribution.

Reading the gauges (rules of thumb; tune per service):

- PSI < 0.1: stable; 0.1-0.25: moderate shift, watch; > 0.25: the traffic no longer looks
  like the training data, retrain (or check what changed upstream).
- JS (bits) < 0.02: stable; 0.02-0.05: watch; > 0.05: retrain. For small shifts JS is about
  PSI / 8 in nats, i.e. PSI * 0.18 in bits, so these match the PSI bands.
- Unknown share: a few percent after a deploy is normal while templates settle; sustained
  above 0.2, the bundle misses a fifth of the traffic and its verdicts on it are "unknown".
- Anomaly rate: compare with the card's validation ``fpr``; a rate far above it with high
  PSI is drift, not an incident; a rate near 0 on busy traffic suggests a misconfigured g.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from sidecar.scoring.bundle import ModelCard
from sidecar.scoring.runner import UNKNOWN_KEY

SHARE_FLOOR = 1e-4
"""Smallest share PSI uses on either side (a template seen on one side only)."""


@dataclass(frozen=True)
class DriftSettings:
    window_records: int = field(
        default=10_000, metadata={"doc": "Records in the sliding window drift is measured over.",
                                  "min": 1, "max": 10_000_000})
    min_records: int = field(
        default=1_000, metadata={"doc": "Records the window needs before drift is reported "
                                        "(the gauges read NaN until then).",
                                 "min": 1, "max": 10_000_000})

    def __post_init__(self) -> None:
        if self.min_records > self.window_records:
            raise ValueError(f"drift: min_records ({self.min_records}) must not exceed "
                             f"window_records ({self.window_records})")


def _shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum()


def psi(live: np.ndarray, reference: np.ndarray, floor: float = SHARE_FLOOR) -> float:
    """Population stability index of ``live`` against ``reference`` (counts or shares).

    Both are normalised to shares, then floored at ``floor``.
    """
    p = np.maximum(_shares(np.asarray(live, float)), floor)
    q = np.maximum(_shares(np.asarray(reference, float)), floor)
    return float(np.sum((p - q) * np.log(p / q)))


def js_bits(live: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon divergence of ``live`` and ``reference`` (counts or shares), in bits."""
    p, q = _shares(np.asarray(live, float)), _shares(np.asarray(reference, float))
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0  # 0 log 0 = 0; m > 0 wherever a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return max(0.0, (kl(p) + kl(q)) / 2)


class DriftMonitor:
    """Drift gauges for the live bundle, fed per scored chunk (see the module docstring).

    ``observe`` and ``reset`` must be called from one thread (the scorer's).
    """

    def __init__(self, card: ModelCard, registry: CollectorRegistry,
                 settings: DriftSettings | None = None):
        self._settings = settings or DriftSettings()
        r = registry
        self._unknown_share = Gauge(
            "logminer_drift_unknown_template_share",
            "Share of recent records whose template the live bundle does not know.", registry=r)
        self._psi = Gauge(
            "logminer_drift_template_psi",
            "PSI of recent known templates against the bundle's training distribution "
            "(< 0.1 stable, > 0.25 retrain).", registry=r)
        self._js = Gauge(
            "logminer_drift_template_js",
            "Jensen-Shannon divergence (bits) of recent known templates against the "
            "bundle's training distribution (< 0.02 stable, > 0.05 retrain).", registry=r)
        self._anomaly_rate = Gauge(
            "logminer_drift_anomaly_rate", "Share of recent records flagged anomalous.",
            registry=r)
        self.reset(card)

    def reset(self, card: ModelCard) -> None:
        """Empty the window and measure against ``card``'s template distribution from now on.

        Distribution keys that are not template keys of the card's vocabulary are ignored.
        """
        size = card.architecture.vocab_size
        reference = np.zeros(size)
        for key, share in card.template_distribution.items():
            index = int(key) if str(key).isdigit() else UNKNOWN_KEY
            if UNKNOWN_KEY < index < size and isinstance(share, (int, float)) and share > 0:
                reference[index] = share
        self._reference = reference
        self._chunks: deque[tuple[np.ndarray, int]] = deque()
        self._counts = np.zeros(size, np.int64)
        self._records = 0
        self._anomalies = 0
        self._publish()

    def observe(self, keys: np.ndarray | Sequence[int], anomalies: int) -> None:
        """Add one scored chunk: its records' bundle keys and how many of them were flagged.

        A key outside the card's vocabulary counts as unknown.
        """
        size = len(self._counts)
        chunk = np.asarray(keys, np.int64).ravel()
        chunk = np.where((chunk > UNKNOWN_KEY) & (chunk < size), chunk, UNKNOWN_KEY)
        if not len(chunk):
            return
        self._chunks.append((chunk, anomalies))
        self._counts += np.bincount(chunk, minlength=size)
        self._records += len(chunk)
        self._anomalies += anomalies
        while self._records - len(self._chunks[0][0]) >= self._settings.window_records:
            old, old_anomalies = self._chunks.popleft()
            self._counts -= np.bincount(old, minlength=size)
            self._records -= len(old)
            self._anomalies -= old_anomalies
        self._publish()

    def _publish(self) -> None:
        nan = float("nan")
        if self._records < self._settings.min_records:
            for gauge in (self._unknown_share, self._psi, self._js, self._anomaly_rate):
                gauge.set(nan)
            return
        self._unknown_share.set(self._counts[UNKNOWN_KEY] / self._records)
        self._anomaly_rate.set(self._anomalies / self._records)
        known = self._counts.copy()
        known[UNKNOWN_KEY] = 0
        measurable = known.sum() > 0 and self._reference.sum() > 0
        self._psi.set(psi(known, self._reference) if measurable else nan)
        self._js.set(js_bits(known, self._reference) if measurable else nan)

"""Drift gauges: PSI and Jensen-Shannon against hand-computed values, the unknown share,
the anomaly rate, the sliding window and resets, read back from a real registry."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.scoring.bundle import Bundle, ModelCard
from sidecar.scoring.drift import DriftMonitor, DriftSettings, js_bits, psi

# Hand-computed for p = (0.5, 0.3, 0.2) against q = (0.4, 0.4, 0.2).
P, Q = (0.5, 0.3, 0.2), (0.4, 0.4, 0.2)
PSI_PQ = (0.5 - 0.4) * math.log(0.5 / 0.4) + (0.3 - 0.4) * math.log(0.3 / 0.4)  # ~0.0511
M = (0.45, 0.35, 0.2)
JS_PQ = (0.5 * math.log2(0.5 / 0.45) + 0.3 * math.log2(0.3 / 0.35)
         + 0.4 * math.log2(0.4 / 0.45) + 0.4 * math.log2(0.4 / 0.35)) / 2  # ~0.0092
GAUGES = ("unknown_template_share", "template_psi", "template_js", "anomaly_rate")


def card(tiny: Bundle, distribution: dict[str, float], vocab_size: int = 6) -> ModelCard:
    return replace(tiny.card, template_distribution=distribution,
                   architecture=replace(tiny.card.architecture, vocab_size=vocab_size))


def keys(*counts: tuple[int, int]) -> np.ndarray:
    """A chunk with ``n`` records of each ``(key, n)``."""
    return np.concatenate([np.full(n, key, np.int32) for key, n in counts])


def read(registry: CollectorRegistry) -> dict[str, float | None]:
    return {name: registry.get_sample_value(f"logminer_drift_{name}") for name in GAUGES}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_identical_distributions_have_no_divergence():
    assert psi(np.array(P), np.array(P)) == pytest.approx(0, abs=1e-12)
    assert js_bits(np.array(P), np.array(P)) == pytest.approx(0, abs=1e-12)
    # Counts and shares are the same thing.
    assert psi(np.array([50, 30, 20]), np.array(P)) == pytest.approx(0, abs=1e-12)


def test_known_psi_and_js_values():
    assert PSI_PQ == pytest.approx(0.051082, abs=1e-6)
    assert psi(np.array(P), np.array(Q)) == pytest.approx(PSI_PQ, rel=1e-9)
    assert js_bits(np.array(P), np.array(Q)) == pytest.approx(JS_PQ, rel=1e-9)
    assert psi(np.array(Q), np.array(P)) == pytest.approx(PSI_PQ, rel=1e-9)  # symmetric


def test_disjoint_distributions_diverge_fully():
    live, reference = np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.5, 0.5])
    assert js_bits(live, reference) == pytest.approx(1.0)
    # Floored at 1e-4: four bins of (0.5 - 1e-4) * ln(0.5 / 1e-4).
    assert psi(live, reference) == pytest.approx(4 * (0.5 - 1e-4) * math.log(5000))
    assert psi(live, reference) > 0.25


def test_monitor_exports_divergence_unknown_share_and_anomaly_rate(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 0.5, "2": 0.3, "3": 0.2}), registry,
                           DriftSettings(window_records=1000, min_records=1000))
    monitor.observe(keys((1, 500), (2, 300), (3, 200)), anomalies=10)
    assert read(registry) == pytest.approx({"unknown_template_share": 0.0, "template_psi": 0.0,
                                            "template_js": 0.0, "anomaly_rate": 0.01}, abs=1e-12)
    # The next chunk fills the window alone: its known keys follow Q, a quarter is unknown.
    monitor.observe(keys((1, 300), (2, 300), (3, 150), (0, 250)), anomalies=250)
    assert read(registry) == pytest.approx({
        "unknown_template_share": 0.25, "template_psi": PSI_PQ, "template_js": JS_PQ,
        "anomaly_rate": 0.25})


def test_gauges_read_nan_until_the_window_has_min_records(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 1.0}), registry,
                           DriftSettings(window_records=100, min_records=100))
    assert all(math.isnan(v) for v in read(registry).values())
    monitor.observe(keys((1, 99)), anomalies=0)
    assert all(math.isnan(v) for v in read(registry).values())
    monitor.observe([1], anomalies=0)
    assert read(registry) == pytest.approx({"unknown_template_share": 0.0, "template_psi": 0.0,
                                            "template_js": 0.0, "anomaly_rate": 0.0})


def test_only_unknown_keys_leave_divergence_undefined(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 1.0}), registry, DriftSettings(10, 10))
    monitor.observe(keys((0, 10)), anomalies=10)
    values = read(registry)
    assert values["unknown_template_share"] == 1.0 and values["anomaly_rate"] == 1.0
    assert math.isnan(values["template_psi"]) and math.isnan(values["template_js"])


def test_keys_outside_the_vocabulary_count_as_unknown(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 1.0}, vocab_size=4), registry, DriftSettings(10, 10))
    monitor.observe([1, 1, 1, 1, 1, 4, 99, -3, 0, 0], anomalies=0)
    assert read(registry)["unknown_template_share"] == pytest.approx(0.5)
    assert read(registry)["template_psi"] == pytest.approx(0.0)


def test_disjoint_live_traffic_reads_as_drift(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 0.5, "2": 0.5}), registry, DriftSettings(100, 100))
    monitor.observe(keys((3, 50), (4, 50)), anomalies=0)
    values = read(registry)
    assert values["template_js"] == pytest.approx(1.0)
    assert values["template_psi"] > 0.25


def test_window_slides_by_whole_chunks(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 1.0}), registry,
                           DriftSettings(window_records=1000, min_records=1))
    monitor.observe(keys((1, 400)), anomalies=400)
    monitor.observe(keys((1, 400)), anomalies=0)
    monitor.observe(keys((1, 400)), anomalies=0)
    # 1200 records held: dropping the first chunk would leave fewer than 1000.
    assert read(registry)["anomaly_rate"] == pytest.approx(400 / 1200)
    monitor.observe(keys((1, 400)), anomalies=0)
    assert read(registry)["anomaly_rate"] == 0.0


def test_reset_empties_the_window_and_takes_the_new_distribution(tiny, registry):
    monitor = DriftMonitor(card(tiny, {"1": 1.0}), registry, DriftSettings(10, 10))
    monitor.observe(keys((2, 10)), anomalies=3)
    assert read(registry)["template_js"] == pytest.approx(1.0)
    monitor.reset(card(tiny, {"2": 1.0}))
    assert all(math.isnan(v) for v in read(registry).values())
    monitor.observe(keys((2, 10)), anomalies=0)
    assert read(registry)["template_js"] == pytest.approx(0.0)
    assert read(registry)["anomaly_rate"] == 0.0


def test_min_records_above_the_window_is_refused():
    with pytest.raises(ValueError, match="min_records"):
        DriftSettings(window_records=10, min_records=11)

"""DP reports (sidecar/privacy.py): the exact samplers against their pmfs, calibration,
the budget accountant (composition, denial, persistence, fail-closed), the Reporter, and
that no exact count leaks through an error message or a log line.

The statistical tests draw from a seeded ``random.Random`` injected in place of the OS
source, so they are deterministic; their bounds are generous on top of that."""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from sidecar.aggregates import HOUR_SECONDS, AggregateCounts, AggregateSettings, Breakdown, Measure
from sidecar.privacy import (
    LEDGER_FILE,
    Budget,
    BudgetExceeded,
    ExactReportsDisabled,
    LedgerError,
    PrivacyAccountant,
    PrivacySettings,
    Reporter,
    ReportMechanism,
    ReportQuery,
    as_fraction,
    bernoulli_exp,
    calibrate,
    discrete_gaussian,
    discrete_laplace,
    render_table,
)
from sidecar.record import Batch, Flag, Record

SAMPLES = 20_000
NOW = 1_700_000_000 // HOUR_SECONDS * HOUR_SECONDS + 60


class IntegerOnlyRandom:
    """A seeded source offering only ``randrange(int)``: a sampler asking for a float fails."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def randrange(self, stop: int) -> int:
        assert type(stop) is int and stop > 0
        return self._rng.randrange(stop)


def laplace_pmf(scale: float) -> Callable[[int], float]:
    q = math.exp(-1 / scale)
    return lambda x: (1 - q) / (1 + q) * q ** abs(x)


def gaussian_pmf(sigma2: float) -> Callable[[int], float]:
    reach = int(50 * math.sqrt(sigma2)) + 50
    norm = sum(math.exp(-y * y / (2 * sigma2)) for y in range(-reach, reach + 1))
    return lambda x: math.exp(-x * x / (2 * sigma2)) / norm


def chi_square(samples: list[int], pmf: Callable[[int], float]) -> tuple[float, int]:
    """Pearson's statistic over bins with >= 5 expected samples, tails pooled; and its dof."""
    n = len(samples)
    top = 0
    while n * pmf(top + 1) >= 5:
        top += 1
    seen = Counter(max(-top - 1, min(top + 1, x)) for x in samples)
    tail = (1 - sum(pmf(x) for x in range(-top, top + 1))) / 2
    expected = {x: n * pmf(x) for x in range(-top, top + 1)}
    expected[-top - 1] = expected[top + 1] = n * tail
    statistic = sum((seen[x] - e) ** 2 / e for x, e in expected.items())
    return statistic, len(expected) - 1


def chi_square_bound(dof: int, z: float = 4.5) -> float:
    """Wilson-Hilferty upper quantile of chi-square(dof) at z standard deviations (p ~ 3e-6)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


# --------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_exp_is_true_with_probability_exp_minus_gamma(gamma: Fraction) -> None:
    rng = IntegerOnlyRandom(11)
    n = 40_000
    hits = sum(bernoulli_exp(gamma, rng) for _ in range(n))
    p = math.exp(-gamma)
    assert abs(hits / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(4), Fraction(7, 3)])
def test_discrete_laplace_matches_its_pmf_and_variance(scale: Fraction) -> None:
    rng = IntegerOnlyRandom(1)
    samples = [discrete_laplace(scale, rng) for _ in range(SAMPLES)]
    statistic, dof = chi_square(samples, laplace_pmf(float(scale)))
    assert statistic < chi_square_bound(dof)
    q = math.exp(-1 / float(scale))
    variance = 2 * q / (1 - q) ** 2
    assert sum(x * x for x in samples) / SAMPLES == pytest.approx(variance, rel=0.06)
    assert abs(sum(samples) / SAMPLES) < 5 * math.sqrt(variance / SAMPLES)


def test_discrete_laplace_chi_square_rejects_a_scale_20_percent_off() -> None:
    rng = IntegerOnlyRandom(2)
    samples = [discrete_laplace(Fraction(4), rng) for _ in range(SAMPLES)]
    statistic, dof = chi_square(samples, laplace_pmf(4.8))
    assert statistic > 3 * chi_square_bound(dof)  # the test above has teeth


@pytest.mark.parametrize("sigma2", [Fraction(1, 2), Fraction(9, 2), Fraction(40)])
def test_discrete_gaussian_matches_its_pmf_and_variance(sigma2: Fraction) -> None:
    rng = IntegerOnlyRandom(3)
    samples = [discrete_gaussian(sigma2, rng) for _ in range(SAMPLES)]
    pmf = gaussian_pmf(float(sigma2))
    statistic, dof = chi_square(samples, pmf)
    assert statistic < chi_square_bound(dof)
    variance = sum(x * x * pmf(x) for x in range(-200, 201))  # at most sigma2 (CKS 2020)
    assert variance <= float(sigma2) * (1 + 1e-9)
    assert sum(x * x for x in samples) / SAMPLES == pytest.approx(variance, rel=0.06)


# --------------------------------------------------------------------------- calibration


ALL = (Measure.RECORDS, Measure.ANOMALIES, Measure.REDACTIONS, Measure.TEMPLATE_RECORDS)
COST = Budget(Fraction(1), Fraction(1, 100_000))


def test_calibrate_laplace_splits_epsilon_and_scales_by_sensitivity() -> None:
    noise = {n.measure: n for n in calibrate("laplace", COST, ALL, redaction_clip=10)}
    assert noise[Measure.RECORDS].parameter == 4  # b = 1 / (1/4)
    assert noise[Measure.REDACTIONS].parameter == 40  # b = 10 / (1/4)
    assert noise[Measure.RECORDS].threshold is None
    # Epsilon composes to the report's: sum of sensitivity / b over the measures.
    assert sum(Fraction(n.sensitivity) / n.parameter for n in noise.values()) == COST.epsilon


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_calibrate_thresholds_bound_the_chance_a_one_record_key_appears(mechanism) -> None:
    noise = calibrate(mechanism, COST, ALL, redaction_clip=10)
    keyed = [n for n in noise if n.threshold is not None]
    assert {n.measure for n in keyed} == {Measure.REDACTIONS, Measure.TEMPLATE_RECORDS}
    budget = float(COST.delta) / (2 if mechanism == "gaussian" else 1) / len(keyed)
    for n in keyed:
        pmf = (gaussian_pmf(float(n.parameter)) if n.gaussian
               else laplace_pmf(float(n.parameter)))
        reach = n.threshold + 60 * int(n.scale)
        # Every cell a record alone creates holds at most `sensitivity`, and there are at most
        # `sensitivity` of them: together they pass with probability <= the delta share.
        passing = sum(pmf(x) for x in range(n.threshold - n.sensitivity, reach))
        assert n.sensitivity * passing <= budget


def test_calibrate_gaussian_meets_the_zcdp_to_dp_conversion() -> None:
    noise = calibrate("gaussian", COST, ALL, redaction_clip=10)
    rho = sum(n.sensitivity ** 2 / (2 * float(n.parameter)) for n in noise)  # CKS Thm 14
    log_inverse = math.log(2 / float(COST.delta))  # half of delta goes to the conversion
    assert rho + 2 * math.sqrt(rho * log_inverse) <= float(COST.epsilon)


def test_privacy_settings_refuse_a_report_bigger_than_the_budget() -> None:
    with pytest.raises(ValueError, match="must fit in the budget"):
        PrivacySettings(epsilon_per_report=2.0, epsilon_budget=1.0)
    assert as_fraction(0.1) == Fraction(1, 10) and as_fraction(1e-05) == Fraction(1, 100_000)


# --------------------------------------------------------------------------- accountant


def accountant(tmp_path: Path, epsilon: str = "3", delta: str = "1/1000",
               max_consumers: int = 10) -> PrivacyAccountant:
    return PrivacyAccountant(tmp_path / LEDGER_FILE, Budget(Fraction(epsilon), Fraction(delta)),
                             max_consumers)


def test_accountant_composes_exactly_and_denies_the_charge_that_would_overrun(
        tmp_path: Path) -> None:
    ledger = accountant(tmp_path)
    tenth = Budget(Fraction(1, 10), Fraction(0))
    for _ in range(30):  # 30 x 0.1 is exactly 3: no float drift either way
        ledger.charge("auditor", tenth)
    assert ledger.remaining("auditor") == Budget(Fraction(0), Fraction(1, 1000))
    with pytest.raises(BudgetExceeded, match="remain") as caught:
        ledger.charge("auditor", tenth)
    assert "'auditor'" in str(caught.value)
    assert ledger.account("auditor").reports == 30  # the denied charge spent nothing
    assert ledger.remaining("other") == ledger.budget  # budgets are per consumer


def test_accountant_denies_on_delta_alone(tmp_path: Path) -> None:
    ledger = accountant(tmp_path, delta="1/1000")
    ledger.charge("a", Budget(Fraction(1, 100), Fraction(1, 1000)))
    with pytest.raises(BudgetExceeded, match="delta"):
        ledger.charge("a", Budget(Fraction(1, 100), Fraction(1, 10**9)))


def test_accountant_ledger_persists_and_is_shared_by_every_accountant(tmp_path: Path) -> None:
    sidecar, cli = accountant(tmp_path), accountant(tmp_path)  # e.g. serve + logminer report
    sidecar.charge("a", Budget(Fraction(1), Fraction(0)))
    cli.charge("a", Budget(Fraction(1), Fraction(0)))
    sidecar.record_exact("a")
    reopened = accountant(tmp_path)
    assert reopened.account("a").epsilon_spent == 2
    assert (reopened.account("a").reports, reopened.account("a").exact_reports) == (2, 1)
    reopened.charge("a", Budget(Fraction(1), Fraction(0)))
    with pytest.raises(BudgetExceeded):
        sidecar.charge("a", Budget(Fraction(1, 1000), Fraction(0)))


def test_accountant_caps_the_number_of_consumers(tmp_path: Path) -> None:
    ledger = accountant(tmp_path, max_consumers=2)
    ledger.charge("a", Budget(Fraction(1), Fraction(0)))
    ledger.charge("b", Budget(Fraction(1), Fraction(0)))
    with pytest.raises(BudgetExceeded, match="max_consumers"):
        ledger.charge("c", Budget(Fraction(1), Fraction(0)))
    ledger.charge("a", Budget(Fraction(1), Fraction(0)))


@pytest.mark.parametrize("content", [b"not json", b'{"format": "logminer-privacy-ledger"}',
                                     b'{"format": "logminer-privacy-ledger", "version": 1, '
                                     b'"consumers": {"a": {"epsilon_spent": "-1", '
                                     b'"delta_spent": "0", "reports": 1, "exact_reports": 0}}}'])
def test_accountant_fails_closed_on_a_corrupt_ledger(tmp_path: Path, content: bytes) -> None:
    (tmp_path / LEDGER_FILE).write_bytes(content)
    with pytest.raises(LedgerError):
        accountant(tmp_path)


# --------------------------------------------------------------------------- reporter

EXACT = {"records": 7920, "anomalies": 1103, "EMAIL": 2711, "template 1": 6007,
         "template 2": 1912}
"""The true counts planted below: distinctive numbers, so a leak of any is easy to spot."""


def planted_counts(tmp_path: Path) -> AggregateCounts:
    counts = AggregateCounts(AggregateSettings(redaction_clip=1),
                             tmp_path / "aggregates.json", clock=lambda: NOW)
    records = [Record(body="x", template_id=1, template="user <*> logged in")
               for _ in range(EXACT["template 1"])]
    records += [Record(body="x", template_id=2, template="rare <*>")
                for _ in range(EXACT["template 2"])]
    records.append(Record(body="y", template_id=3, template="one of a kind"))
    for r in records[:EXACT["anomalies"]]:
        r.flags.add(Flag.ANOMALY)
    for r in records[-EXACT["EMAIL"]:]:
        r.redactions["EMAIL"] = 1
    assert len(records) == EXACT["records"]
    counts.observe(Batch(records))
    return counts


def reporter(tmp_path: Path, seed: int | None = 5, **settings: object) -> Reporter:
    s = PrivacySettings(aggregates=AggregateSettings(redaction_clip=1), **settings)
    return Reporter(s, planted_counts(tmp_path), PrivacyAccountant.from_settings(tmp_path, s),
                    rng=None if seed is None else random.Random(seed))


def leaked(text: str) -> list[int]:
    return [n for n in EXACT.values() if str(n) in text]


def test_reporter_releases_noisy_counts_near_the_truth_and_withholds_rare_keys(
        tmp_path: Path) -> None:
    report = reporter(tmp_path).report(ReportQuery(
        "auditor", group_by=frozenset({Breakdown.TEMPLATE, Breakdown.DETECTOR})))
    assert report.mechanism is ReportMechanism.DISCRETE_LAPLACE
    values = {(r.measure, r.key): r for r in report.rows}
    # b = 4 for every measure (epsilon 1 over four measures, sensitivity 1 with clip 1).
    assert abs(values[Measure.RECORDS, None].value - 7920) <= 60
    assert abs(values[Measure.ANOMALIES, None].value - 1103) <= 60
    assert abs(values[Measure.REDACTIONS, "EMAIL"].value - 2711) <= 60
    assert abs(values[Measure.TEMPLATE_RECORDS, "1"].value - 6007) <= 60
    assert values[Measure.TEMPLATE_RECORDS, "1"].template == "user <*> logged in"
    assert (Measure.TEMPLATE_RECORDS, "3") not in values  # one record: below the threshold
    assert report.spent == Budget(Fraction(1), Fraction(1, 100_000))
    assert report.remaining == Budget(Fraction(9), Fraction(9, 100_000))


def test_reporter_noise_is_drawn_from_the_os_source_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    draw = secrets.SystemRandom.randrange

    def counting(self: secrets.SystemRandom, *args: int) -> int:
        calls.append(args)
        return draw(self, *args)

    monkeypatch.setattr(secrets.SystemRandom, "randrange", counting)
    reporter(tmp_path, seed=None).report(ReportQuery("auditor"))
    assert calls


def test_reporter_gaussian_reports_say_so(tmp_path: Path) -> None:
    report = reporter(tmp_path, mechanism="gaussian").report(
        ReportQuery("auditor", group_by=frozenset({Breakdown.HOUR})))
    assert report.mechanism is ReportMechanism.DISCRETE_GAUSSIAN
    assert all(n.gaussian and n.threshold is None for n in report.noise)
    hourly = [r for r in report.rows if r.measure is Measure.RECORDS]
    assert len(hourly) == 168 and all(r.value >= 0 for r in hourly)  # every hour, clamped


def test_reporter_denies_past_the_budget_without_leaking_a_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    subject = reporter(tmp_path, epsilon_per_report=4.0, epsilon_budget=10.0)
    query = ReportQuery("auditor", group_by=frozenset(Breakdown))
    with caplog.at_level(logging.DEBUG, logger="sidecar"):
        subject.report(query)
        subject.report(query)
        with pytest.raises(BudgetExceeded) as caught:
            subject.report(query)
    message = str(caught.value)
    assert "2 epsilon" in message and "auditor" in message
    assert leaked(message) == [] and leaked(caplog.text) == []


def test_reporter_refuses_exact_reports_unless_the_config_allows_them(
        tmp_path: Path) -> None:
    subject = reporter(tmp_path)
    with pytest.raises(ExactReportsDisabled, match="allow_exact_reports") as caught:
        subject.report(ReportQuery("auditor", exact=True))
    assert leaked(str(caught.value)) == []
    ledger = PrivacyAccountant.from_settings(tmp_path, PrivacySettings())
    assert ledger.account("auditor").exact_reports == 0


def test_reporter_exact_report_is_logged_recorded_and_charges_no_epsilon(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    subject = reporter(tmp_path, allow_exact_reports=True)
    with caplog.at_level(logging.INFO, logger="sidecar"):
        report = subject.report(ReportQuery("audit-team", exact=True,
                                            group_by=frozenset({Breakdown.TEMPLATE})))
    assert report.mechanism is ReportMechanism.EXACT and report.noise == ()
    assert {(r.measure, r.key): r.value for r in report.rows} == {
        (Measure.RECORDS, None): 7920, (Measure.ANOMALIES, None): 1103,
        (Measure.TEMPLATE_RECORDS, "1"): 6007, (Measure.TEMPLATE_RECORDS, "2"): 1912,
        (Measure.TEMPLATE_RECORDS, "3"): 1}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "audit-team" in warnings[0].getMessage()
    assert leaked(caplog.text) == []
    ledger = PrivacyAccountant.from_settings(tmp_path, PrivacySettings())
    assert ledger.account("audit-team").exact_reports == 1
    assert ledger.remaining("audit-team") == report.remaining == ledger.budget


def test_reporter_bad_queries_cost_nothing(tmp_path: Path) -> None:
    subject = reporter(tmp_path)
    with pytest.raises(ValueError, match="consumer"):
        subject.report(ReportQuery("\n"))
    with pytest.raises(ValueError, match="retained hours"):
        subject.report(ReportQuery("auditor", since=NOW + 10 * HOUR_SECONDS))
    ledger = PrivacyAccountant.from_settings(tmp_path, PrivacySettings())
    assert ledger.account("auditor").reports == 0


def test_report_renders_as_json_and_as_a_table(tmp_path: Path) -> None:
    report = reporter(tmp_path).report(ReportQuery(
        "auditor", group_by=frozenset({Breakdown.TEMPLATE})))
    data = report.to_dict()
    assert data["mechanism"] == "discrete_laplace" and data["epsilon_remaining"] == 9.0
    assert {c["measure"] for c in data["counts"]} == {"records", "anomalies",
                                                      "template_records"}
    table = render_table(report)
    assert "user <*> logged in" in table and "rows below" in table
    assert len(table.splitlines()) == 3 + len(report.noise) + len(report.rows)


def test_epsilon_spent_per_consumer_is_a_metric_with_clean_labels(tmp_path):
    import asyncio

    from support import in_process_app

    from sidecar.privacy import ReportQuery

    async def main():
        app = in_process_app(tmp_path)
        await app.start()
        try:
            app.reporter.report(ReportQuery(consumer="audit-team"))
            app.reporter.report(ReportQuery(consumer="jane.doe@example.com"))
        finally:
            await app.stop()
        registry = app.telemetry.registry
        assert registry.get_sample_value("logminer_privacy_epsilon_spent",
                                         {"consumer": "audit-team"}) == 1.0
        assert registry.get_sample_value("logminer_privacy_epsilon_spent",
                                         {"consumer": "redacted"}) == 1.0

    asyncio.run(main())

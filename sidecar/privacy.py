"""Differentially private aggregate reports: exact discrete noise, per-consumer budgets, Reporter.

Noise. Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential Privacy"
(arXiv:2004.00010): integer noise sampled exactly with integer and ``Fraction`` arithmetic,
never floats, so the floating-point attacks on textbook Laplace noise (Mironov 2012) do not
apply. ``bernoulli_exp`` is their Algorithm 1, ``discrete_laplace`` Algorithm 2 and
``discrete_gaussian`` Algorithm 3. All randomness comes from one ``randrange`` source:
``secrets.SystemRandom`` (the OS CSPRNG) unless a test injects a seeded one.

Unit of privacy: one log record together with what the pipeline derived for it (its
anomaly flag, template id, redaction counts); neighbouring datasets differ by one such
record added or removed. Sensitivity per measure (``sidecar.aggregates`` bounds it): a record
adds 1 to records, at most 1 to anomalies, 1 to one template cell and at most
C = ``redaction_clip`` to the redaction cells (so C bounds its L1, L2 and per-cell change,
and the number of detector cells it can add). Grouping by hour adds nothing: a record lies
in one hour. Not covered: the pipeline is stateful (the LSTM scores a record in the context
of its session, Drain's online mining can regroup later lines, the template cap is filled
in arrival order), so a raw record can also change how *later* records are annotated; and
this is record-level, not user-level, privacy (a customer with many records is protected
per record). ``/metrics`` exposes exact totals: restrict it to operators.

Calibration. A report's epsilon is split equally across the measures it releases.
Discrete Laplace: scale b = sensitivity / share, pure epsilon-DP per measure. Discrete
Gaussian: (epsilon, delta_g) becomes rho-zCDP with epsilon = rho + 2 sqrt(rho ln(1/delta_g))
(Bun & Steinke 2016, Prop. 1.3), rho is split equally and sigma^2 = sensitivity^2 / (2 rho_m)
(CKS 2020, Thm. 14: the multivariate discrete Gaussian is (L2 sensitivity / sigma)^2 / 2-zCDP).
Detector TYPEs and template ids come from the data, so a keyed cell is released only if its
noisy count reaches a threshold set so that the cells one record alone could have created
pass with probability at most delta_k in total (partition selection by thresholding:
Korolova et al. 2009; Wilson et al. 2020, sec. 3): Laplace tail P[X >= k] <= exp(-k/b), the
discrete Gaussian's sub-Gaussian tail exp(-k^2/(2 sigma^2)) (CKS 2020). That is where delta
goes: all of it under Laplace, half under Gaussian (the other half to the zCDP conversion),
split equally across the keyed measures. Hours come from the query, so every hour is
released, zero or not. Negative values are clamped at 0 (post-processing).

Accounting: basic composition (Dwork & Roth 2014, Thm. 3.16). Every report charges its
consumer the configured (epsilon_per_report, delta_per_report) - fixed, whatever it releases
- and a report that would take the spent epsilon or delta above the budget is refused
before anything is released, with a message that states what remains and never a count.
Spent amounts are exact fractions in ``privacy-ledger.json`` under data_dir; every charge
re-reads and rewrites it (temp file + fsync + ``os.replace``) under an exclusive ``flock``,
so the running sidecar and ``logminer report`` share one budget, and the charge is durable
before the report is returned. A ledger that cannot be read fails closed (``LedgerError``).

Exact reports (DP off) exist for auditors: only with ``allow_exact_reports``, only when a
report asks, logged at WARNING with the consumer (never the counts) and counted in the
ledger as ``exact_reports``. They charge no epsilon: an exact release has no DP guarantee
to account for.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

from sidecar.aggregates import (
    KEYED_MEASURES,
    AggregateCounts,
    AggregateSettings,
    Breakdown,
    ExactCounts,
    Measure,
    measures_for,
)
from sidecar.durable import write_json_atomic

log = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.json"
LEDGER_FORMAT = "logminer-privacy-ledger"
LEDGER_VERSION = 1
CONSUMER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:@/=+,-]{0,127}")


# --------------------------------------------------------------------------- sampling


class RandomSource(Protocol):
    """Uniform integers in ``range(stop)``: ``secrets.SystemRandom`` or, in tests, ``Random``."""

    def randrange(self, stop: int, /) -> int: ...


def bernoulli(p: Fraction, rng: RandomSource) -> bool:
    """True with probability exactly ``p`` (0 <= p <= 1)."""
    return rng.randrange(p.denominator) < p.numerator


def bernoulli_exp(gamma: Fraction, rng: RandomSource) -> bool:
    """True with probability exactly exp(-gamma), gamma >= 0 (CKS 2020, Algorithm 1)."""
    while gamma > 1:  # exp(-gamma) = exp(-1) * exp(-(gamma - 1))
        if not _bernoulli_exp_unit(Fraction(1), rng):
            return False
        gamma -= 1
    return _bernoulli_exp_unit(gamma, rng)


def _bernoulli_exp_unit(gamma: Fraction, rng: RandomSource) -> bool:
    """exp(-gamma) for 0 <= gamma <= 1: the first K with Bernoulli(gamma/K) false is odd."""
    k = 1
    while bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def discrete_laplace(scale: Fraction, rng: RandomSource) -> int:
    """An integer X with P[X = x] proportional to exp(-|x| / scale) (CKS 2020, Algorithm 2).

    Its variance is 2 e^(-1/scale) / (1 - e^(-1/scale))^2.
    """
    s, t = scale.denominator, scale.numerator  # scale = t / s
    while True:
        u = rng.randrange(t)
        if not bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while bernoulli_exp(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s  # (u + t v) is geometric: P ∝ exp(-x/t)
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue  # zero would otherwise be drawn twice as often
        return -y if negative else y


def discrete_gaussian(sigma2: Fraction, rng: RandomSource) -> int:
    """An integer X with P[X = x] proportional to exp(-x^2 / (2 sigma2)) (CKS 2020, Algorithm 3)."""
    t = math.isqrt(math.floor(sigma2)) + 1  # floor(sigma) + 1
    while True:
        y = discrete_laplace(Fraction(t), rng)
        if bernoulli_exp((abs(y) - sigma2 / t) ** 2 / (2 * sigma2), rng):
            return y


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PrivacySettings:
    """Settings of the differentially private aggregate reports."""

    enabled: bool = field(
        default=True, metadata={"doc": "Keep hourly aggregates and answer aggregate reports "
                                       "(gRPC Aggregates, `logminer report`)."})
    mechanism: Literal["laplace", "gaussian"] = field(
        default="laplace", metadata={"doc": "Noise: discrete Laplace (pure epsilon-DP) or "
                                            "discrete Gaussian."})
    epsilon_per_report: float = field(
        default=1.0, metadata={"doc": "Epsilon each report costs its consumer.",
                               "min": 0.01, "max": 100.0})
    delta_per_report: float = field(
        default=1e-5, metadata={"doc": "Delta each report costs its consumer (write 1.0e-5: "
                                       "YAML reads 1e-5 as text).", "min": 1e-12, "max": 0.01})
    epsilon_budget: float = field(
        default=10.0, metadata={"doc": "Total epsilon per consumer, across restarts (basic "
                                       "composition).", "min": 0.01, "max": 1e6})
    delta_budget: float = field(
        default=1e-4, metadata={"doc": "Total delta per consumer, across restarts.",
                                "min": 1e-12, "max": 0.1})
    allow_exact_reports: bool = field(
        default=False, metadata={"doc": "Let a report ask for exact counts (no noise), for "
                                        "auditors; each one is logged and recorded."})
    max_consumers: int = field(
        default=100, metadata={"doc": "Most consumers the ledger takes (each has its own "
                                      "budget).", "min": 1, "max": 100_000})
    aggregates: AggregateSettings = field(
        default_factory=AggregateSettings,
        metadata={"doc": "The hourly counts the reports draw on (data_dir/aggregates.json)."})

    def __post_init__(self) -> None:
        if (self.epsilon_per_report > self.epsilon_budget
                or self.delta_per_report > self.delta_budget):
            raise ValueError("one report (epsilon_per_report, delta_per_report) must fit in "
                             "the budget (epsilon_budget, delta_budget)")


def as_fraction(value: float) -> Fraction:
    """A config number as the fraction its decimal form says (0.1 -> 1/10, 1e-05 -> 1/100000)."""
    return Fraction(repr(value))


# --------------------------------------------------------------------------- accountant


class ReportDenied(Exception):
    """A report was refused; the message says why and never contains a count."""


class BudgetExceeded(ReportDenied):
    """The report would take the consumer's spent epsilon or delta above its budget."""


class ExactReportsDisabled(ReportDenied):
    """An exact report was asked for, but the config does not allow them."""


class LedgerError(ValueError):
    """The privacy ledger cannot be read or is corrupt: no report may be released."""


@dataclass(frozen=True)
class Budget:
    """An amount of privacy loss: epsilon and delta."""

    epsilon: Fraction
    delta: Fraction


@dataclass(frozen=True)
class ConsumerAccount:
    """What one consumer has spent."""

    epsilon_spent: Fraction = Fraction(0)
    delta_spent: Fraction = Fraction(0)
    reports: int = 0
    exact_reports: int = 0


def _show(value: Fraction) -> str:
    return f"{float(value):.6g}"


class PrivacyAccountant:
    """Per-consumer privacy loss against one budget, by basic composition, in a durable ledger.

    The ledger at ``path`` is read (and checked: ``LedgerError``) at construction and
    again, under an exclusive lock shared with other processes, for every operation.
    """

    def __init__(self, path: Path, budget: Budget, max_consumers: int):
        self.path = path
        self.budget = budget
        self._max_consumers = max_consumers
        self._lock = threading.Lock()
        with self._exclusive():
            self._read()

    @classmethod
    def from_settings(cls, data_dir: Path, settings: PrivacySettings) -> PrivacyAccountant:
        """The accountant of ``data_dir/privacy-ledger.json`` with the configured budget."""
        return cls(data_dir / LEDGER_FILE,
                   Budget(as_fraction(settings.epsilon_budget), as_fraction(settings.delta_budget)),
                   settings.max_consumers)

    def charge(self, consumer: str, cost: Budget) -> Budget:
        """Spend ``cost`` for ``consumer`` durably and return what remains.

        Raises ``BudgetExceeded`` (nothing spent) if that would exceed the budget.
        """
        with self._exclusive():
            accounts = self._read()
            account = self._account(accounts, consumer)
            left = self._left(account)
            if cost.epsilon > left.epsilon or cost.delta > left.delta:
                raise BudgetExceeded(
                    f"privacy budget exceeded for consumer {consumer!r}: a report costs "
                    f"epsilon {_show(cost.epsilon)} and delta {_show(cost.delta)}, "
                    f"{_show(left.epsilon)} epsilon and {_show(left.delta)} delta remain (of "
                    f"{_show(self.budget.epsilon)} and {_show(self.budget.delta)}); nothing "
                    "was charged or released")
            accounts[consumer] = replace(
                account, epsilon_spent=account.epsilon_spent + cost.epsilon,
                delta_spent=account.delta_spent + cost.delta, reports=account.reports + 1)
            self._write(accounts)
            return self._left(accounts[consumer])

    def record_exact(self, consumer: str) -> Budget:
        """Record an exact release for ``consumer`` durably; return its (unchanged) remainder."""
        with self._exclusive():
            accounts = self._read()
            account = self._account(accounts, consumer)
            accounts[consumer] = replace(account, exact_reports=account.exact_reports + 1)
            self._write(accounts)
            return self._left(account)

    def account(self, consumer: str) -> ConsumerAccount:
        """What ``consumer`` has spent so far (zero for an unknown consumer)."""
        with self._exclusive():
            return self._read().get(consumer, ConsumerAccount())

    def epsilon_spent(self) -> dict[str, float]:
        """Epsilon spent so far per consumer (for the ``logminer_privacy_*`` metric)."""
        with self._exclusive():
            return {name: float(a.epsilon_spent) for name, a in self._read().items()}

    def remaining(self, consumer: str) -> Budget:
        """What ``consumer`` may still spend."""
        return self._left(self.account(consumer))

    def _left(self, account: ConsumerAccount) -> Budget:
        return Budget(self.budget.epsilon - account.epsilon_spent,
                      self.budget.delta - account.delta_spent)

    def _account(self, accounts: dict[str, ConsumerAccount], consumer: str) -> ConsumerAccount:
        if consumer not in accounts and len(accounts) >= self._max_consumers:
            raise BudgetExceeded(
                f"consumer {consumer!r} has no privacy budget: the ledger already holds the "
                f"most consumers allowed (privacy.max_consumers = {self._max_consumers})")
        return accounts.get(consumer, ConsumerAccount())

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the thread lock and an exclusive flock on the ledger's lock file."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
                yield

    def _read(self) -> dict[str, ConsumerAccount]:
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_bytes().decode("utf-8"))
            return _accounts(document)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"{self.path}: cannot read ({type(exc).__name__})") from None
        except ValueError as exc:
            raise LedgerError(f"{self.path}: {exc}") from None

    def _write(self, accounts: dict[str, ConsumerAccount]) -> None:
        write_json_atomic(self.path, {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "consumers": {name: {"epsilon_spent": str(a.epsilon_spent),
                                 "delta_spent": str(a.delta_spent),
                                 "reports": a.reports, "exact_reports": a.exact_reports}
                          for name, a in sorted(accounts.items())},
        })


def _accounts(document: object) -> dict[str, ConsumerAccount]:
    if not isinstance(document, dict) or set(document) != {"format", "version", "consumers"}:
        raise ValueError("expected the keys consumers, format, version")
    if document["format"] != LEDGER_FORMAT or document["version"] != LEDGER_VERSION:
        raise ValueError(f"format: not a version {LEDGER_VERSION} {LEDGER_FORMAT} file")
    consumers = document["consumers"]
    if not isinstance(consumers, dict):
        raise ValueError("consumers: expected a mapping")
    return {name: _consumer_account(entry, f"consumers.{name}")
            for name, entry in consumers.items()}


def _fraction(value: object, where: str) -> Fraction:
    try:
        number = Fraction(value) if isinstance(value, str) else None
    except (ValueError, ZeroDivisionError):
        number = None
    if number is None or number < 0:
        raise ValueError(f"{where}: expected a non-negative fraction")
    return number


def _consumer_account(entry: object, where: str) -> ConsumerAccount:
    fields = {"epsilon_spent", "delta_spent", "reports", "exact_reports"}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise ValueError(f"{where}: expected the keys {', '.join(sorted(fields))}")
    spent = {name: _fraction(entry[name], f"{where}.{name}")
             for name in ("epsilon_spent", "delta_spent")}
    for name in ("reports", "exact_reports"):
        if isinstance(entry[name], bool) or not isinstance(entry[name], int) or entry[name] < 0:
            raise ValueError(f"{where}.{name}: expected a non-negative integer")
    return ConsumerAccount(reports=entry["reports"], exact_reports=entry["exact_reports"],
                           **spent)


# --------------------------------------------------------------------------- calibration


class ReportMechanism(StrEnum):
    DISCRETE_LAPLACE = "discrete_laplace"
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    EXACT = "exact"


@dataclass(frozen=True)
class MeasureNoise:
    """How one measure's counts are noised."""

    measure: Measure
    sensitivity: int
    parameter: Fraction
    """The discrete Laplace scale b, or the discrete Gaussian's sigma^2."""
    gaussian: bool
    threshold: int | None
    """Keyed measures: cells whose noisy count is below this are withheld."""

    @property
    def scale(self) -> float:
        """b (Laplace: P ∝ exp(-|x|/b)) or sigma (Gaussian: P ∝ exp(-x^2/(2 sigma^2)))."""
        return math.sqrt(self.parameter) if self.gaussian else float(self.parameter)

    def sample(self, rng: RandomSource) -> int:
        return (discrete_gaussian(self.parameter, rng) if self.gaussian
                else discrete_laplace(self.parameter, rng))


def sensitivity(measure: Measure, redaction_clip: int) -> int:
    """The most one record changes ``measure`` (L1, L2 and per cell alike; see module doc)."""
    return redaction_clip if measure is Measure.REDACTIONS else 1


def calibrate(mechanism: Literal["laplace", "gaussian"], cost: Budget,
              measures: Sequence[Measure], redaction_clip: int) -> tuple[MeasureNoise, ...]:
    """Noise per measure so that releasing ``measures`` is (cost.epsilon, cost.delta)-DP."""
    keyed = [m for m in measures if m in KEYED_MEASURES.values()]
    gaussian = mechanism == "gaussian"
    selection_delta = (cost.delta / 2 if gaussian else cost.delta) if keyed else Fraction(0)
    rho = _zcdp_rho(cost.epsilon, cost.delta - selection_delta) if gaussian else 0.0
    noise = []
    for measure in measures:
        size = sensitivity(measure, redaction_clip)
        if gaussian:  # sigma^2 = size^2 / (2 rho / n), rounded up to 1/1000 over float error
            parameter = Fraction(math.ceil(size ** 2 * len(measures) / (2 * rho) * 1000) + 1,
                                 1000)
        else:
            parameter = size * len(measures) / cost.epsilon
        threshold = (_threshold(size, parameter, gaussian, selection_delta / len(keyed))
                     if measure in keyed else None)
        noise.append(MeasureNoise(measure, size, parameter, gaussian, threshold))
    return tuple(noise)


def _threshold(size: int, parameter: Fraction, gaussian: bool, delta: Fraction) -> int:
    """A threshold that each cell holding at most ``size`` passes w.p. <= delta / size.

    One record creates at most ``size`` new cells, so together they pass w.p. <= delta.
    Tails: Laplace P[X >= k] <= exp(-k/b); Gaussian P[X >= k] <= exp(-k^2 / (2 sigma^2)).
    The + 1 covers float error in the logarithm.
    """
    log_term = math.log(size / float(delta))
    tail = (math.sqrt(2 * float(parameter) * log_term) if gaussian
            else float(parameter) * log_term)
    return size + math.ceil(tail) + 1


def _zcdp_rho(epsilon: Fraction, delta: Fraction) -> float:
    """The rho with rho + 2 sqrt(rho ln(1/delta)) = epsilon, lowered by 1e-9 relative."""
    log_inverse = math.log(1 / float(delta))
    return (math.sqrt(log_inverse + float(epsilon)) - math.sqrt(log_inverse)) ** 2 * (1 - 1e-9)


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ReportQuery:
    """What a consumer asks for. ``since``/``until``: Unix seconds, None = open."""

    consumer: str
    since: int | None = None
    until: int | None = None
    group_by: frozenset[Breakdown] = frozenset()
    exact: bool = False


@dataclass(frozen=True)
class ReportRow:
    """One released count."""

    measure: Measure
    hour: int | None
    key: str | None
    value: int
    template: str | None = None


@dataclass(frozen=True)
class Report:
    """A released report and what it cost."""

    consumer: str
    mechanism: ReportMechanism
    since: int
    until: int
    group_by: tuple[Breakdown, ...]
    rows: tuple[ReportRow, ...]
    noise: tuple[MeasureNoise, ...]
    spent: Budget
    remaining: Budget

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (``logminer report --json``)."""
        return {
            "consumer": self.consumer,
            "mechanism": self.mechanism.value,
            "since_unix_seconds": self.since,
            "until_unix_seconds": self.until,
            "group_by": [b.value for b in self.group_by],
            "epsilon_spent": float(self.spent.epsilon),
            "delta_spent": float(self.spent.delta),
            "epsilon_remaining": float(self.remaining.epsilon),
            "delta_remaining": float(self.remaining.delta),
            "noise": [{"measure": n.measure.value, "sensitivity": n.sensitivity,
                       "scale": n.scale, "threshold": n.threshold} for n in self.noise],
            "counts": [{"measure": r.measure.value, "hour_unix_seconds": r.hour, "key": r.key,
                        "template": r.template, "value": r.value} for r in self.rows],
        }


def check_consumer(consumer: str) -> str:
    """``consumer`` if it is a usable id, else ValueError."""
    if not CONSUMER_PATTERN.fullmatch(consumer):
        raise ValueError("consumer must be 1 to 128 characters: letters, digits, space and "
                         "._:@/=+,- (starting with a letter or digit)")
    return consumer


class Reporter:
    """Answers report queries from ``counts``, charging ``accountant``; thread-safe.

    ``report`` raises ValueError for a bad query (nothing charged), ``ReportDenied`` for a
    refused one, ``LedgerError``/``OSError`` if the charge could not be made durable
    (nothing released).
    """

    def __init__(self, settings: PrivacySettings, counts: AggregateCounts,
                 accountant: PrivacyAccountant, *, rng: RandomSource | None = None):
        self._settings = settings
        self._counts = counts
        self._accountant = accountant
        self._rng: RandomSource = rng if rng is not None else secrets.SystemRandom()
        self._cost = Budget(as_fraction(settings.epsilon_per_report),
                            as_fraction(settings.delta_per_report))

    def report(self, query: ReportQuery) -> Report:
        """The report ``query`` asks for, charged to its consumer (see the class doc)."""
        consumer = check_consumer(query.consumer)
        group_by = tuple(b for b in Breakdown if b in query.group_by)
        if query.exact and not self._settings.allow_exact_reports:
            raise ExactReportsDisabled(
                "exact reports are disabled on this sidecar (privacy.allow_exact_reports is "
                "false); ask without exact for a differentially private report")
        counts = self._counts.query(query.since, query.until, group_by)  # ValueError: bad range
        if query.exact:
            remaining = self._accountant.record_exact(consumer)
            log.warning("exact aggregate report (no differential privacy) released to "
                        "consumer %r", consumer)
            return _report(consumer, ReportMechanism.EXACT, group_by, counts, (),
                           Budget(Fraction(0), Fraction(0)), remaining, self._rng)
        s = self._settings
        noise = calibrate(s.mechanism, self._cost, measures_for(group_by),
                          self._counts.settings.redaction_clip)  # the clip the counts had
        remaining = self._accountant.charge(consumer, self._cost)
        log.info("aggregate report for consumer %r: epsilon %s and delta %s spent, %s and %s "
                 "remain", consumer, _show(self._cost.epsilon), _show(self._cost.delta),
                 _show(remaining.epsilon), _show(remaining.delta))
        mechanism = (ReportMechanism.DISCRETE_GAUSSIAN if s.mechanism == "gaussian"
                     else ReportMechanism.DISCRETE_LAPLACE)
        return _report(consumer, mechanism, group_by, counts, noise, self._cost, remaining,
                       self._rng)


def _report(consumer: str, mechanism: ReportMechanism, group_by: tuple[Breakdown, ...],
            counts: ExactCounts, noise: Iterable[MeasureNoise], spent: Budget,
            remaining: Budget, rng: RandomSource) -> Report:
    """The report: each cell plus its measure's noise (none if exact), thresholded, clamped."""
    noise = tuple(noise)
    by_measure = {n.measure: n for n in noise}
    rows = []
    for cell in counts.cells:
        value = cell.count
        how = by_measure.get(cell.measure)
        if how is not None:
            value += how.sample(rng)
            if how.threshold is not None and value < how.threshold:
                continue
        template = (counts.template_texts.get(cell.key)
                    if cell.measure is Measure.TEMPLATE_RECORDS and cell.key else None)
        rows.append(ReportRow(cell.measure, cell.hour, cell.key, max(value, 0), template))
    return Report(consumer, mechanism, counts.since, counts.until, group_by, tuple(rows), noise,
                  spent, remaining)


def render_table(report: Report) -> str:
    """The report as text for a terminal (``logminer report``)."""
    def when(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%MZ")

    lines = [f"consumer {report.consumer!r}, {report.mechanism.value}, "
             f"{when(report.since)} .. {when(report.until)}",
             f"spent epsilon {_show(report.spent.epsilon)}, delta {_show(report.spent.delta)}; "
             f"remaining epsilon {_show(report.remaining.epsilon)}, "
             f"delta {_show(report.remaining.delta)}"]
    lines += [f"noise {n.measure.value}: scale {n.scale:.4g}"
              + (f", rows below {n.threshold} withheld" if n.threshold is not None else "")
              for n in report.noise]
    lines.append(f"{'measure':<17} {'hour':<17} {'key':<12} {'value':>10}  template")
    lines += [f"{r.measure.value:<17} {when(r.hour) if r.hour is not None else '-':<17} "
              f"{r.key or '-':<12} {r.value:>10}  {r.template or ''}".rstrip()
              for r in report.rows]
    return "\n".join(lines)

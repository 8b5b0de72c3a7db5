"""Session scoring over key sequences, and the metrics that judge it.

Strategy: a *step model* is anything with ``initial_state(batch)`` and
``step(keys, state) -> (logits, state)``: the bundle's quantised model run by the sidecar's
own `StepRunner`, its float reference, the n-gram baseline. `score_sessions` applies the
bundle's scoring semantics to whole sessions in batches: zero state, feed the start key;
for each key k, its rank in the previous prediction (keys with a strictly higher
log-probability; k = 0, unknown, always counts as anomalous) and its score -log softmax[k],
computed exactly as the runner judges a live record; then feed k; finally the end key is
ranked and scored the same way. A session keeps only its worst rank and its highest score,
which is all the metrics need: it is flagged at ``g`` iff its worst rank >= g (so one pass
gives the verdicts for every g), and its score ranks it for ROC AUC. Sessions are sorted by
length so each batch runs about as many steps as its longest member needs. `first_divergences`
walks the same steps and keeps, per session, the first key flagged at g and the keys the
model expected there instead.

The float reference is the trained weights (``reference.npz``) stepped in numpy, so what
quantisation costs is measurable without TensorFlow. `evaluate` (``logminer evaluate``) takes
labelled raw logs through the sidecar's redactor and its scoring stage (miner, vocabulary map,
sessions, model), or labelled key sequences through template texts, leaves out what the bundle
was trained or validated on, and reports the shipped model, its float reference and an n-gram
baseline trained on the bundle's own training sessions, at the bundle's g and over g.
`run_live` and `session_runs` are that raw-log path on its own, for other tools over logs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.record import Batch, Flag, Record
from sidecar.redact import RedactionSettings, Redactor
from sidecar.scoring.baseline import NGramModel
from sidecar.scoring.bundle import Bundle, load_bundle
from sidecar.scoring.datasets import (
    UNKNOWN_KEY,
    DataError,
    DataSpec,
    Session,
    SessionSource,
    TemplateTable,
    Vocabulary,
    direct_keys,
    file_sha256,
    load_training_data,
    read_labels,
    read_log_records,
    read_sessions,
    read_templates,
    session_ref,
    session_texts,
)
from sidecar.scoring.runner import StepRunner, log_softmax
from sidecar.scoring.scorer import Scorer, ScoringSettings, SessionAlert
from sidecar.scoring.sessions import SessionKeyer, TextPattern
from sidecar.templates import MinerSettings, TemplateMiner, VocabularyMap

#: The float reference's weights, next to the models in a bundle.
REFERENCE_FILE = "reference.npz"

#: Rank given to an unknown key: above any g, so it is always flagged.
UNKNOWN_RANK = np.iinfo(np.int32).max


class StepModel(Protocol):
    """One step of a next-key model over a batch of sessions."""

    def initial_state(self, batch: int) -> list[np.ndarray]:
        """The state of ``batch`` fresh sessions (arrays with the batch as first axis)."""
        ...

    def step(self, keys: np.ndarray, state: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed one key per session; return next-key logits [B, V] and the new state."""
        ...


class BundleStepModel:
    """A bundle's ``model.tflite`` run by the sidecar's own `StepRunner`, as a step model."""

    def __init__(self, bundle: Bundle) -> None:
        self._runner = StepRunner(bundle)
        self._parts = len(bundle.state_names)
        self._hidden = bundle.card.architecture.hidden

    def initial_state(self, batch: int) -> list[np.ndarray]:
        """Zero h and c for every layer (h0, c0, h1, c1, ...)."""
        return [np.zeros((batch, self._hidden), np.float32) for _ in range(self._parts)]

    def step(self, keys: np.ndarray, state: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed one key per session; return next-key logits and the new state."""
        return self._runner.step(np.ascontiguousarray(keys, np.int32), np.stack(state))


@dataclass(frozen=True)
class SessionScores:
    """Per session: the worst rank and the highest score of its keys, end key included."""

    rank: np.ndarray
    score: np.ndarray

    def flags(self, g: int) -> np.ndarray:
        """Sessions flagged with top-``g`` prediction (some key outside the top g)."""
        return self.rank >= g


def score_sessions(model: StepModel, sequences: Sequence[np.ndarray], *, start_key: int,
                   end_key: int, batch_size: int = 512) -> SessionScores:
    """Score whole sessions (key arrays, no start/end keys) with the bundle semantics."""
    rank = np.zeros(len(sequences), dtype=np.int64)
    score = np.zeros(len(sequences), dtype=np.float64)
    for index in _batches(sequences, batch_size):
        batch_rank, batch_score = _score_batch(model, [sequences[i] for i in index],
                                               start_key, end_key)
        rank[index], score[index] = batch_rank, batch_score
    return SessionScores(rank, score)


@dataclass(frozen=True)
class Divergences:
    """Per session: where the model first rejected it and what it expected there.

    ``position[i]`` is the index of session i's first key outside the top g (or unknown),
    ``len(session)`` when that is its end key, -1 when the model accepts the whole session.
    ``expected[i]`` holds the keys the model ranked highest at that position, best first
    (template keys and the end key; ties: the lower key first); -1 pads a row.
    """

    position: np.ndarray
    expected: np.ndarray


def first_divergences(model: StepModel, sequences: Sequence[np.ndarray], *, start_key: int,
                      end_key: int, g: int, top: int = 3, batch_size: int = 512
                      ) -> Divergences:
    """The first key of each session flagged with top-``g`` prediction, and the ``top``
    keys expected instead (a session is flagged here iff `score_sessions` flags it at g)."""
    position = np.full(len(sequences), -1, dtype=np.int64)
    expected = np.full((len(sequences), top), -1, dtype=np.int64)
    for index in _batches(sequences, batch_size):
        found = np.zeros(len(index), dtype=bool)
        for step in _steps(model, [sequences[i] for i in index], start_key, end_key):
            new = step.live & ~found & (step.rank >= g)
            if not new.any():
                continue
            candidates = step.logp[new]
            candidates[:, [UNKNOWN_KEY, start_key]] = -np.inf
            best = np.argsort(-candidates, axis=1, kind="stable")[:, :top]
            ranked = np.take_along_axis(candidates, best, axis=1)
            position[index[new]] = step.t
            expected[index[new], :best.shape[1]] = np.where(np.isfinite(ranked), best, -1)
            found |= new
    return Divergences(position, expected)


def _batches(sequences: Sequence[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Indices of the sessions in batches, longest sessions first, so each batch runs about
    as many steps as its longest member needs."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for begin in range(0, len(order), batch_size):
        yield order[begin:begin + batch_size]


@dataclass(frozen=True)
class _Step:
    """One position ``t`` of a batch of sessions: each session's key there (its end key at
    and past its end), the log-probabilities it is judged against, their value at the key,
    its rank and whether ``t`` is still inside the session (``t <= len``)."""

    t: int
    target: np.ndarray
    logp: np.ndarray
    chosen: np.ndarray
    rank: np.ndarray
    live: np.ndarray


def _steps(model: StepModel, sequences: list[np.ndarray], start_key: int,
           end_key: int) -> Iterator[_Step]:
    """Feed a batch of sessions from the start key and judge every key, then the end key."""
    size = len(sequences)
    lengths = np.array([len(s) for s in sequences])
    targets = np.full((size, lengths.max() + 1), end_key, dtype=np.int32)
    for row, sequence in enumerate(sequences):
        targets[row, :len(sequence)] = sequence
    rows = np.arange(size)
    logits, state = model.step(np.full(size, start_key, dtype=np.int32),
                               model.initial_state(size))
    for t in range(targets.shape[1]):
        target = targets[:, t]
        logp = log_softmax(logits.astype(np.float32))
        chosen = logp[rows, target]
        rank = np.where(target == UNKNOWN_KEY, UNKNOWN_RANK,
                        (logp > chosen[:, None]).sum(axis=1))
        yield _Step(t, target, logp, chosen, rank, t <= lengths)
        if t < lengths.max():
            logits, state = model.step(target, state)


def _score_batch(model: StepModel, sequences: list[np.ndarray], start_key: int,
                 end_key: int) -> tuple[np.ndarray, np.ndarray]:
    size = len(sequences)
    worst_rank = np.zeros(size, dtype=np.int64)
    worst_score = np.zeros(size, dtype=np.float64)
    for step in _steps(model, sequences, start_key, end_key):
        step_score = -step.chosen.astype(np.float64)
        worst_rank = np.where(step.live, np.maximum(worst_rank, step.rank), worst_rank)
        worst_score = np.where(step.live, np.maximum(worst_score, step_score), worst_score)
    return worst_rank, worst_score


# --------------------------------------------------------------------------- float reference


@dataclass(frozen=True)
class Weights:
    """Float weights of the model: embedding, per-layer LSTM cell weights, output layer.

    LSTM gate order is Keras's (input, forget, cell, output); ``kernels[l]`` is [in, 4H],
    ``recurrent[l]`` [H, 4H], ``biases[l]`` [4H]; ``dense_kernel`` [H, V].
    """

    embedding: np.ndarray
    kernels: tuple[np.ndarray, ...]
    recurrent: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    dense_kernel: np.ndarray
    dense_bias: np.ndarray

    @property
    def layers(self) -> int:
        return len(self.kernels)

    @property
    def hidden(self) -> int:
        return self.recurrent[0].shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.embedding.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.embedding.shape[0]

    def save(self, path: Path) -> None:
        """Write as ``.npz`` (float32 arrays, no pickles)."""
        arrays = {"embedding": self.embedding, "dense_kernel": self.dense_kernel,
                  "dense_bias": self.dense_bias}
        for layer in range(self.layers):
            arrays |= {f"kernel{layer}": self.kernels[layer],
                       f"recurrent{layer}": self.recurrent[layer],
                       f"bias{layer}": self.biases[layer]}
        with path.open("wb") as handle:
            np.savez(handle, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})

    @classmethod
    def load(cls, path: Path) -> Weights:
        """Read weights written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            layers = sum(1 for name in data.files if name.startswith("kernel"))
            return cls(data["embedding"],
                       tuple(data[f"kernel{i}"] for i in range(layers)),
                       tuple(data[f"recurrent{i}"] for i in range(layers)),
                       tuple(data[f"bias{i}"] for i in range(layers)),
                       data["dense_kernel"], data["dense_bias"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


class ReferenceModel:
    """The float model in numpy: same step semantics as ``model.tflite``, no TensorFlow."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights

    def initial_state(self, batch: int) -> list[np.ndarray]:
        """Zero h and c for every layer (h0, c0, h1, c1, ...)."""
        return [np.zeros((batch, self.weights.hidden), np.float32)
                for _ in range(2 * self.weights.layers)]

    def step(self, keys: np.ndarray, state: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed one key per session; return next-key logits and the new state."""
        w = self.weights
        x = w.embedding[keys]
        new_state = []
        for layer in range(w.layers):
            h, c = state[2 * layer], state[2 * layer + 1]
            z = x @ w.kernels[layer] + h @ w.recurrent[layer] + w.biases[layer]
            i, f, g, o = np.split(z, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            new_state += [h, c]
            x = h
        return x @ w.dense_kernel + w.dense_bias, new_state



def load_reference(bundle: Bundle) -> ReferenceModel:
    """The float reference of a loaded bundle; DataError if missing or not the card's."""
    entry = bundle.card.training.get("float_reference") or {}
    path = bundle.path / REFERENCE_FILE
    if not path.is_file() or file_sha256(path) != entry.get("sha256"):
        raise DataError(f"{path}: missing, or its sha256 is not the one in the card")
    return ReferenceModel(Weights.load(path))



# --------------------------------------------------------------------------- metrics


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class Metrics:
    """Confusion counts of session verdicts and the rates derived from them.

    A rate whose denominator is zero is None (e.g. recall without anomalous sessions).
    ``roc_auc`` ranks sessions by score (None unless both classes are present).
    """

    tp: int
    fp: int
    fn: int
    tn: int
    roc_auc: float | None

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def fpr(self) -> float | None:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_json(self) -> dict[str, Any]:
        """Counts and rates as a plain dict (rates rounded to 6 places)."""
        rates = {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                 "fpr": self.fpr, "roc_auc": self.roc_auc}
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                **{k: None if v is None else round(v, 6) for k, v in rates.items()}}


def session_metrics(flags: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> Metrics:
    """Metrics of session verdicts ``flags`` against ``labels`` (True = anomalous)."""
    flags, labels = np.asarray(flags, dtype=bool), np.asarray(labels, dtype=bool)
    return Metrics(tp=int((flags & labels).sum()), fp=int((flags & ~labels).sum()),
                   fn=int((~flags & labels).sum()), tn=int((~flags & ~labels).sum()),
                   roc_auc=roc_auc(scores, labels))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); None for one class."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True,
                                   return_counts=True)
    ends = np.cumsum(counts)
    average_rank = (ends - (counts - 1) / 2.0)[inverse]
    u = average_rank[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def metrics_over_g(scores: SessionScores, labels: np.ndarray, g_values: Sequence[int]
                   ) -> list[Metrics]:
    """The metrics at each top-g value (one scoring pass serves them all)."""
    return [session_metrics(scores.flags(g), labels, scores.score) for g in g_values]


def choose_g(scores: SessionScores, labels: np.ndarray, *, max_g: int, max_fpr: float) -> int:
    """The g to ship, chosen on labelled *validation* sessions.

    Among g in 1..max_g whose false-positive rate is at most ``max_fpr``, the one with the
    highest recall (ties: the lower FPR, then the smaller g). Without anomalous sessions,
    recall is unknown and the smallest such g is taken (most sensitive within the FPR
    budget). If no g meets the budget, the g with the lowest FPR.
    """
    g_values = range(1, max_g + 1)
    results = metrics_over_g(scores, labels, g_values)
    candidates = [(g, m) for g, m in zip(g_values, results, strict=True)
                  if (m.fpr or 0.0) <= max_fpr]
    if not candidates:
        return min(zip(g_values, results, strict=True), key=lambda gm: (gm[1].fpr, gm[0]))[0]
    if not np.any(labels):
        return candidates[0][0]
    return min(candidates, key=lambda gm: (-(gm[1].recall or 0.0), gm[1].fpr or 0.0, gm[0]))[0]


def format_metrics_table(rows: Sequence[tuple[str, Metrics]], *, title: str) -> str:
    """A fixed-width table of metrics, one row per model."""
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = (f"{title:<36} {'tp':>6} {'fp':>6} {'fn':>6} {'tn':>7} {'prec':>7} {'recall':>7} "
              f"{'f1':>7} {'fpr':>7} {'auc':>7}")
    lines = [header, "-" * len(header)]
    for name, m in rows:
        lines.append(f"{name:<36} {m.tp:>6} {m.fp:>6} {m.fn:>6} {m.tn:>7} {cell(m.precision):>7} "
                     f"{cell(m.recall):>7} {cell(m.f1):>7} {cell(m.fpr):>7} {cell(m.roc_auc):>7}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything ``logminer evaluate`` takes; each field is one CLI option.

    Either raw labelled logs (``logs`` + ``labels``; the session key defaults to the card's)
    or key sequences (``normal`` / ``abnormal`` session files, with ``templates`` and
    ``key_map`` when their ids are not the bundle's keys). ``g`` defaults to the card's.
    With ``exclude_seen``, sessions the bundle was trained or validated on (re-read from
    the card's training data) are left out and counted as excluded. ``hash_secret`` is the
    redaction key (LOGMINER_HASH_SECRET); it matters only where tokens end up in session keys.
    """

    model: Path
    logs: tuple[Path, ...] = ()
    labels: Path | None = None
    session_key: str | None = None
    normal: tuple[SessionSource, ...] = ()
    abnormal: tuple[SessionSource, ...] = ()
    templates: Path | None = None
    key_map: Mapping[str, str] = field(default_factory=dict)
    g: int | None = None
    exclude_seen: bool = True
    max_g: int = 20
    json_path: Path | None = None
    plot_path: Path | None = None
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    miner: MinerSettings = field(default_factory=MinerSettings)
    hash_secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EvaluationReport:
    """The result of `evaluate`: metrics of the shipped (quantised) model at ``g``, of its
    float reference and of the n-gram baseline, the session counts behind them, and the
    metrics over g = 1..max_g (``curves``) and session scores (``scores``) for plots."""

    model: str
    version: int
    source: str
    g: int
    quantised: Metrics
    float: Metrics | None
    baseline: Metrics | None
    baseline_order: int
    counts: Mapping[str, int]
    missing: tuple[str, ...]
    notes: tuple[str, ...]
    curves: Mapping[str, tuple[Metrics, ...]]
    scores: Mapping[str, np.ndarray] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: the quantised model's counts and rates at top level."""
        def over_g(rows: tuple[Metrics, ...]) -> list[dict[str, Any]]:
            return [{"g": g, **{k: v for k, v in m.to_json().items()
                                if k in ("precision", "recall", "f1", "fpr")}}
                    for g, m in enumerate(rows, 1)]

        return {**self.quantised.to_json(), "g": self.g,
                "model": {"name": self.model, "version": self.version},
                "source": self.source, "sessions": dict(self.counts),
                "missing_sample": list(self.missing[:20]), "notes": list(self.notes),
                "float": None if self.float is None else self.float.to_json(),
                "baseline": None if self.baseline is None else
                {**self.baseline.to_json(), "order": self.baseline_order},
                "over_g": {name: over_g(rows) for name, rows in self.curves.items()}}

    def table(self) -> str:
        """A printable summary: what was evaluated, then one metrics row per model."""
        rows = [("quantised (shipped)", self.quantised)]
        if self.float is not None:
            rows.append(("float reference", self.float))
        if self.baseline is not None:
            rows.append((f"n-gram baseline (order {self.baseline_order})", self.baseline))
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        lines = [f"{self.model} v{self.version}, {self.source}, g = {self.g}: {counts}",
                 format_metrics_table(rows, title="sessions")]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


@dataclass
class _Labelled:
    """Evaluated sessions: id, label, their key runs (end-marker splits; none = never seen)
    and, for logs, the live scoring stage's verdict."""

    ids: list[str] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    runs: list[list[np.ndarray]] = field(default_factory=list)
    live: list[bool] = field(default_factory=list)


def evaluate(config: EvaluationConfig) -> EvaluationReport:
    """Evaluate a bundle on labelled sessions; write ``json_path`` / ``plot_path`` if set.

    Every labelled session is counted exactly once: a labelled session that never appears
    in the logs is a false negative if anomalous, a true negative if normal (reported as
    missing); sessions in the logs without a label are reported, not counted. The baseline
    is trained here on the bundle's own training sessions (re-read from its card); if they
    are unavailable, it is left out with a note. DataError for unusable input, BundleError
    for a bundle the runtime refuses.
    """
    bundle = load_bundle(config.model)
    g = config.g or bundle.card.scoring.g
    vocab = Vocabulary.from_templates(bundle.vocab.templates)
    notes: list[str] = []
    training = None
    try:
        training = load_training_data(DataSpec.from_card(
            bundle.card.training, bundle.card.scoring.session_key, config.hash_secret))
    except DataError as exc:
        notes.append(f"training data unavailable, so no baseline and no overlap check ({exc})")
    if config.logs:
        if config.labels is None:
            raise DataError("evaluating logs needs a label file (--labels)")
        labelled, counts, missing = _log_sessions(config, bundle, g)
        source = "raw logs: " + ", ".join(map(str, config.logs))
    else:
        labelled, counts, missing = _key_sessions(config, vocab), {}, ()
        source = "key sequences: " + ", ".join(map(str, config.normal + config.abnormal))
    if config.exclude_seen and training is not None:
        labelled, counts["excluded_seen_in_training"] = _exclude(labelled, training.seen)
    labels = np.array(labelled.labels, dtype=bool)
    counts = {"normal": int((~labels).sum()), "anomalous": int(labels.sum()), **counts}
    if not len(labels):
        raise DataError("no labelled sessions to evaluate")

    kwargs = {"start_key": vocab.start_key, "end_key": vocab.end_key}
    models: dict[str, StepModel] = {"quantised": BundleStepModel(bundle)}
    try:
        models["float"] = load_reference(bundle)
    except DataError as exc:
        notes.append(f"no float reference in the bundle ({exc})")
    order = int(bundle.card.training.get("baseline_order", 3))
    if training is not None:
        models["baseline"] = NGramModel.fit(training.train, vocab_size=vocab.size, order=order,
                                            **kwargs)
    scores = {name: _session_scores(model, labelled.runs, **kwargs)
              for name, model in models.items()}
    results = {name: session_metrics(s.flags(g), labels, s.score) for name, s in scores.items()}
    if config.logs:
        live = np.array(labelled.live, dtype=bool)
        results["quantised"] = session_metrics(live, labels, scores["quantised"].score)
        agree = int((live == scores["quantised"].flags(g)).sum())
        notes.append(f"quantised verdicts are the live scoring stage's; they agree with "
                     f"whole-session scoring on {agree} of {len(live)} sessions")
    report = EvaluationReport(
        model=bundle.card.name, version=bundle.card.version, source=source, g=g,
        quantised=results["quantised"], float=results.get("float"),
        baseline=results.get("baseline"), baseline_order=order, counts=counts,
        missing=missing, notes=tuple(notes),
        curves={name: tuple(metrics_over_g(s, labels, range(1, config.max_g + 1)))
                for name, s in scores.items()},
        scores={"normal": scores["quantised"].score[~labels],
                "anomalous": scores["quantised"].score[labels]})
    if config.json_path is not None:
        config.json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n",
                                    encoding="utf-8")
    if config.plot_path is not None:
        plot(report, config.plot_path)
    return report


def _session_scores(model: StepModel, runs: list[list[np.ndarray]], **kwargs: int
                    ) -> SessionScores:
    """Per labelled session, the worst rank / highest score over its runs (a session that
    never appeared: rank -1, score 0 - never flagged)."""
    flat = [run for session in runs for run in session]
    owner = np.repeat(np.arange(len(runs)), [len(session) for session in runs])
    run_scores = score_sessions(model, flat, **kwargs)
    rank = np.full(len(runs), -1, dtype=np.int64)
    score = np.zeros(len(runs), dtype=np.float64)
    np.maximum.at(rank, owner, run_scores.rank)
    np.maximum.at(score, owner, run_scores.score)
    return SessionScores(rank, score)


def _exclude(labelled: _Labelled, seen: frozenset[str]) -> tuple[_Labelled, int]:
    keep = [i for i, ref in enumerate(labelled.ids) if ref not in seen]
    kept = _Labelled([labelled.ids[i] for i in keep], [labelled.labels[i] for i in keep],
                     [labelled.runs[i] for i in keep],
                     [labelled.live[i] for i in keep] if labelled.live else [])
    return kept, len(labelled.ids) - len(keep)


def session_keys(sessions: Sequence[Session], vocab: Vocabulary, table: TemplateTable | None,
                 key_map: Mapping[str, str]) -> list[np.ndarray]:
    """The bundle keys of sessions read from a session file: through the template texts of
    ``table`` when one is given, else read as the bundle's own keys (unknown -> 0)."""
    if table is None:
        return direct_keys(sessions, vocab)
    return [vocab.encode(t) for t in session_texts(sessions, table, key_map, strict=False)]


def _key_sessions(config: EvaluationConfig, vocab: Vocabulary) -> _Labelled:
    """Labelled key sequences, mapped to the bundle's keys (through template texts when a
    template table is given, else read as the bundle's own keys)."""
    if not config.normal and not config.abnormal:
        raise DataError("nothing to evaluate: give logs and labels, or --normal/--abnormal")
    table = read_templates(config.templates) if config.templates is not None else None
    labelled = _Labelled()
    for anomalous, sources in ((False, config.normal), (True, config.abnormal)):
        for source in sources:
            sessions = read_sessions(source)
            digest = file_sha256(source.path)
            sequences = session_keys(sessions, vocab, table, config.key_map)
            for session, sequence in zip(sessions, sequences, strict=True):
                labelled.ids.append(session_ref(digest, session.id))
                labelled.labels.append(anomalous)
                labelled.runs.append([sequence])
    return labelled


@dataclass(frozen=True)
class LiveRun:
    """Records after the sidecar's redactor and scoring stage, and the sessions it flagged.

    ``records`` are sanitized, with template, session, score and flags set; ``keys[i]`` is
    the bundle key of ``records[i]``'s template (0 = unknown); ``flagged`` holds the sessions
    with a flagged record or a flagged end.
    """

    records: list[Record]
    keys: list[int]
    flagged: frozenset[str]


def run_live(logs: Sequence[Path], model: Path, bundle: Bundle, *, g: int,
             session_key: str | None, redactor: Redactor, miner: TemplateMiner) -> LiveRun:
    """Run raw logs through ``redactor`` and the scoring stage (``miner``, vocabulary map,
    sessions, the bundle in ``model``), every session ending at the end of input.

    The sanitized records are held in memory (the stage's session table is sized to hold
    every session, so none is evicted). ``session_key`` defaults to the card's.
    """
    records = []
    for path in logs:
        for record in read_log_records(path):
            redactor.redact_record(record)
            records.append(record)
    keyer = SessionKeyer(session_key or bundle.card.scoring.session_key)
    capacity = len({keyer(record) for record in records}) + 1
    settings = ScoringSettings(model_dir=str(model), g=g, session_key=session_key,
                               max_sessions=capacity)
    alerts: list[SessionAlert] = []
    scorer = Scorer(settings, miner, VocabularyMap, CollectorRegistry(),
                    on_alert=alerts.append, clock=lambda: 0.0)
    for first in range(0, len(records), 4096):
        scorer.process(Batch(records[first:first + 4096]))
    scorer.close_all()
    key_of = VocabularyMap(bundle.vocab.templates).key_for
    keys = [key_of(record.template or "") or UNKNOWN_KEY for record in records]
    flagged = {alert.session for alert in alerts}
    flagged.update(record.session or "" for record in records if Flag.ANOMALY in record.flags)
    return LiveRun(records, keys, frozenset(flagged))


def session_runs(records: Sequence[Record], end_marker: str | None) -> dict[str, list[list[int]]]:
    """Indices of each session's records in order, split into runs where a record matching
    ``end_marker`` (RE2, on the sanitized body) closed the session."""
    marker = TextPattern(end_marker) if end_marker else None
    runs: dict[str, list[list[int]]] = {}
    open_runs: set[str] = set()
    for index, record in enumerate(records):
        session = record.session or ""
        if session not in open_runs:
            runs.setdefault(session, []).append([])
            open_runs.add(session)
        runs[session][-1].append(index)
        if marker is not None and marker.find(record.body) is not None:
            open_runs.discard(session)
    return runs


def _log_sessions(config: EvaluationConfig, bundle: Bundle, g: int
                  ) -> tuple[_Labelled, dict[str, int], tuple[str, ...]]:
    """Run labelled logs through the sidecar's redactor and its scoring stage (`run_live`).

    Returns the labelled sessions (key runs split where an end marker closed a session,
    and the live verdict: a record or the end flagged), counts of unlabelled and missing
    sessions, and the ids of the missing ones.
    """
    labels = read_labels(config.labels)
    redactor = Redactor(config.redaction, config.hash_secret or os.urandom(32))
    live = run_live(config.logs, config.model, bundle, g=g, session_key=config.session_key,
                    redactor=redactor, miner=TemplateMiner(config.miner))
    runs = session_runs(live.records, bundle.card.scoring.end_marker)
    labelled = _Labelled()
    for session_id, anomalous in labels.items():
        labelled.ids.append(session_id)
        labelled.labels.append(anomalous)
        labelled.runs.append([np.array([live.keys[i] for i in run], np.int32)
                              for run in runs.get(session_id, [])])
        labelled.live.append(session_id in live.flagged)
    missing = tuple(i for i in labels if i not in runs)
    counts = {"unlabelled_in_logs": sum(1 for s in runs if s not in labels),
              "missing_normal": sum(1 for i in missing if not labels[i]),
              "missing_anomalous": sum(1 for i in missing if labels[i])}
    return labelled, counts, missing


def plot(report: EvaluationReport, path: Path) -> None:
    """PNG: session score distributions (normal vs anomalous) and precision/recall over g."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(0.0, max(float(np.max(np.concatenate(list(report.scores.values())))),
                                1.0), 60)
    for name, color in (("normal", "tab:blue"), ("anomalous", "tab:red")):
        left.hist(report.scores[name], bins=bins, alpha=0.6, color=color,
                  label=f"{name} ({len(report.scores[name])})")
    left.set_yscale("log")
    left.set_xlabel("session score: max -log p over its keys and its end (quantised model)")
    left.set_ylabel("sessions")
    left.legend()
    for name, style in (("quantised", "-"), ("baseline", ":")):
        rows = report.curves.get(name)
        if rows is None:
            continue
        g_values = range(1, len(rows) + 1)
        right.plot(g_values, [m.precision for m in rows], style, color="tab:green",
                   label=f"precision ({name})")
        right.plot(g_values, [m.recall for m in rows], style, color="tab:purple",
                   label=f"recall ({name})")
    right.axvline(report.g, color="grey", linestyle="--", label=f"g = {report.g}")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("g (top-g predictions accepted)")
    right.set_ylim(0.0, 1.02)
    right.legend(loc="lower left")
    figure.suptitle(f"{report.model} v{report.version}: {report.source}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

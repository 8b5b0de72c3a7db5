"""Train, convert, check and install a scoring bundle (``logminer train``).

Strategy: sessions (from session files plus a template table, or from raw/JSONL logs run
through the sidecar's own redactor and miner) become key sequences over a `Vocabulary`.
A Keras model (Embedding -> L stacked LSTMs -> Dense logits) is trained on *whole* normal
sessions framed as ``start k1 .. kn end``, predicting the next key at every position, so the
stateful single-step model the sidecar streams with is exactly what was trained. Normal
sessions whose keyed id hash falls in the validation fraction are held out for early
stopping and, together with labelled anomalous validation sessions, for choosing g.

The trained weights are copied into two TFLite graphs built from the same Keras layers and
exported with ``keras.export.ExportArchive`` (a plain ``tf.saved_model.save`` keeps
VAR_HANDLE ops that LiteRT turns into NaN): ``model.tflite``, the single step (key, h, c ->
logits, h', c'), and ``window.tflite``, the same cells unrolled over W steps from zero state
(shorter inputs are padded and the logits of their last real step gathered, so both forms
agree exactly). Both are dynamic-range int8 quantised and output logits. The float weights
go into ``reference.npz``; a numpy `ReferenceModel` over them is the float reference that
evaluation and the bundle check compare against, without TensorFlow.

Every bundle is written to a staging directory next to its destination, checked by
`check_bundle` with the sidecar's runtime alone (built-in ops only, the contract's signatures,
finite outputs, agreement with the float reference, window == steps), passed through the
retraining gate (validation F1 / ROC AUC against thresholds and against the current bundle on
the same sessions), and only then installed: into ``--out``, or with ``--shadow`` into the
sibling directory ``<bundle>-shadow`` (the runtime's ``shadow_dir``), file by file with
``card.json`` last - a reloader that looks mid-install sees sha256s that do not match, refuses,
and loads the bundle once the card lands. TensorFlow is imported inside functions only: the
sidecar never needs it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from sidecar.scoring.baseline import NGramModel
from sidecar.scoring.bundle import (
    CARD_FILE,
    MODEL_FILE,
    VOCAB_FILE,
    WINDOW_FILE,
    BundleError,
    load_bundle,
)
from sidecar.scoring.bundle import Vocabulary as BundleVocabulary
from sidecar.scoring.datasets import (
    DataError,
    DataSpec,
    TrainingData,
    Vocabulary,
    file_sha256,
    key_distribution,
    load_training_data,
)
from sidecar.scoring.evaluation import (
    REFERENCE_FILE,
    BundleStepModel,
    Metrics,
    ReferenceModel,
    StepModel,
    Weights,
    choose_g,
    format_metrics_table,
    load_reference,
    score_sessions,
    session_metrics,
)
from sidecar.scoring.runner import WindowRunner

log = logging.getLogger(__name__)

#: Installed in this order; the card always last.
BUNDLE_FILES = (MODEL_FILE, WINDOW_FILE, VOCAB_FILE, REFERENCE_FILE, CARD_FILE)

#: Ops that mean a converted model is not self-contained built-in TFLite.
FORBIDDEN_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "CUSTOM",
                 "DELEGATE")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``logminer train`` takes; each field is one CLI option (the data options,
    session key and seed are in ``data``). ``command`` is recorded in the card verbatim."""

    out: Path
    data: DataSpec
    name: str | None = None
    idle_timeout_seconds: float = 3600.0
    end_marker: str | None = None
    g: int | None = None
    max_fpr: float = 0.01
    layers: int = 2
    hidden: int = 128
    embedding_dim: int = 32
    window: int = 10
    epochs: int = 150
    patience: int = 5
    batch_size: int = 64
    learning_rate: float = 0.003
    baseline_order: int = 3
    gate_f1: float | None = None
    gate_auc: float | None = None
    against: Path | None = None
    shadow: bool = False
    command: str = ""
    progress: bool = True


# --------------------------------------------------------------------------- Keras


def _import_tf() -> tuple[Any, Any]:
    """TensorFlow and Keras, imported on first use (the sidecar itself never needs them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        raise ImportError("training needs TensorFlow: install the train extra "
                          "(pip install 'logminer-sidecar[train]')") from None
    return tf, keras


def _batches(sequences: Sequence[np.ndarray], vocab: Vocabulary, batch_size: int,
             rng: np.random.Generator | None) -> list[tuple[np.ndarray, ...]]:
    """Padded (inputs, targets, weights) batches of similar-length framed sessions.

    Inputs are ``start k1..kn``, targets ``k1..kn end``; padding has weight 0 and comes
    after the session, where a forward LSTM cannot let it change earlier predictions.
    """
    lengths = np.array([len(s) + 1 for s in sequences])
    tiebreak = rng.random(len(sequences)) if rng is not None else np.zeros(len(sequences))
    order = np.lexsort((tiebreak, lengths))
    batches = []
    for begin in range(0, len(order), batch_size):
        index = order[begin:begin + batch_size]
        width = int(lengths[index].max())
        x = np.zeros((len(index), width), np.int32)
        y = np.zeros((len(index), width), np.int32)
        w = np.zeros((len(index), width), np.float32)
        for row, i in enumerate(index):
            n = lengths[i]
            x[row, :n] = [vocab.start_key, *sequences[i]]
            y[row, :n] = [*sequences[i], vocab.end_key]
            w[row, :n] = 1.0
        batches.append((x, y, w))
    if rng is not None:
        rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class FitResult:
    weights: Weights
    epochs: int
    best_epoch: int
    loss: tuple[float, ...]
    val_loss: tuple[float, ...]


def fit(train: Sequence[np.ndarray], validation: Sequence[np.ndarray], vocab: Vocabulary,
        config: TrainConfig) -> FitResult:
    """Train the sequence model with early stopping on validation loss (best weights kept).

    Deterministic for a given seed: seeded initialisation, shuffling and op determinism.
    """
    tf, keras = _import_tf()
    keras.utils.set_random_seed(config.data.seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(config.data.seed)

    spec = (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.float32))
    n_train = len(_batches(train, vocab, config.batch_size, None))

    def train_batches() -> Any:
        yield from _batches(train, vocab, config.batch_size, rng)

    train_ds = tf.data.Dataset.from_generator(train_batches, output_signature=spec)
    train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(n_train))
    val_batches = _batches(validation, vocab, config.batch_size, None)
    val_ds = tf.data.Dataset.from_generator(lambda: iter(val_batches), output_signature=spec)
    val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(len(val_batches)))

    model = _sequence_model(keras, vocab.size, config)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                         restore_best_weights=True)
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=[stop], shuffle=False, verbose=1 if config.progress else 0)
    val_loss = tuple(float(v) for v in history.history["val_loss"])
    return FitResult(weights=_weights_of(model, config.layers), epochs=len(val_loss),
                     best_epoch=int(np.argmin(val_loss)) + 1,
                     loss=tuple(float(v) for v in history.history["loss"]), val_loss=val_loss)


def _sequence_model(keras: Any, vocab_size: int, config: TrainConfig) -> Any:
    keys = keras.Input((None,), dtype="int32", name="keys")
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="embedding")(keys)
    for layer in range(config.layers):
        x = keras.layers.LSTM(config.hidden, return_sequences=True, name=f"lstm{layer}")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    return keras.Model(keys, logits)


def _weights_of(model: Any, layers: int) -> Weights:
    cells = [model.get_layer(f"lstm{i}").cell.get_weights() for i in range(layers)]
    dense_kernel, dense_bias = model.get_layer("logits").get_weights()
    return Weights(model.get_layer("embedding").get_weights()[0],
                   tuple(c[0] for c in cells), tuple(c[1] for c in cells),
                   tuple(c[2] for c in cells), dense_kernel, dense_bias)


# --------------------------------------------------------------------------- conversion


def convert(weights: Weights, window: int) -> tuple[bytes, bytes]:
    """``model.tflite`` and ``window.tflite`` bytes for ``weights`` (dynamic-range int8).

    Layers are named explicitly: Keras numbers unnamed layers per process, and those names
    end up in the TFLite files, which would make equal weights give different bytes.
    """
    tf, keras = _import_tf()
    embedding = keras.layers.Embedding(weights.vocab_size, weights.embedding_dim,
                                       name="embedding")
    embedding.build((None,))
    embedding.set_weights([weights.embedding])
    cells = []
    for layer in range(weights.layers):
        cell = keras.layers.LSTMCell(weights.hidden, name=f"lstm{layer}")
        cell.build((None, weights.kernels[layer].shape[0]))
        cell.set_weights([weights.kernels[layer], weights.recurrent[layer],
                          weights.biases[layer]])
        cells.append(cell)
    dense = keras.layers.Dense(weights.vocab_size, name="logits")
    dense.build((None, weights.hidden))
    dense.set_weights([weights.dense_kernel, weights.dense_bias])
    hidden, layers = weights.hidden, weights.layers

    def run_cells(x: Any, state: list[Any]) -> tuple[Any, list[Any]]:
        new_state = []
        for layer, cell in enumerate(cells):
            x, (h, c) = cell(x, [state[2 * layer], state[2 * layer + 1]])
            new_state += [h, c]
        return x, new_state

    def step(key: Any, *state: Any) -> dict[str, Any]:
        x, new_state = run_cells(embedding(key), list(state))
        out = {"logits": dense(x)}
        for layer in range(layers):
            out[f"h{layer}_out"], out[f"c{layer}_out"] = new_state[2 * layer:2 * layer + 2]
        return out

    def windowed(keys: Any) -> dict[str, Any]:
        n = tf.shape(keys)[1]
        padded = tf.reshape(tf.pad(keys, [[0, 0], [0, window - n]]), [-1, window])
        state = [tf.zeros([tf.shape(keys)[0], hidden]) for _ in range(2 * layers)]
        outputs = []
        for t in range(window):
            x, state = run_cells(embedding(padded[:, t]), state)
            outputs.append(x)
        last = tf.gather(tf.stack(outputs, axis=1), n - 1, axis=1)
        return {"logits": dense(last)}

    step_spec = [tf.TensorSpec([None], tf.int32, name="key")]
    for layer in range(layers):
        step_spec += [tf.TensorSpec([None, hidden], tf.float32, name=f"h{layer}"),
                      tf.TensorSpec([None, hidden], tf.float32, name=f"c{layer}")]
    window_spec = [tf.TensorSpec([None, None], tf.int32, name="keys")]
    return (_export(tf, keras, [embedding, dense, *cells], step, step_spec),
            _export(tf, keras, [embedding, dense, *cells], windowed, window_spec))


def _export(tf: Any, keras: Any, layers: list[Any], fn: Any, spec: list[Any]) -> bytes:
    archive = keras.export.ExportArchive()
    for layer in layers:
        archive.track(layer)
    archive.add_endpoint("serving_default", fn, input_signature=spec)
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            tmp, signature_keys=["serving_default"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


# --------------------------------------------------------------------------- bundle check


class BundleCheckError(ValueError):
    """A bundle failed its check; ``problems`` lists each failed assertion."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: bundle check failed: " + "; ".join(problems))


@dataclass(frozen=True)
class BundleCheck:
    """What `check_bundle` measured on a bundle that passed."""

    ops: tuple[str, ...]
    steps: int
    max_logit_diff: float
    top1_agreement: float
    topg_agreement: float
    window_max_diff: float


def read_json(path: Path) -> Any:
    """A JSON file's document; DataError if it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None


def _probe_sessions(model: StepModel, vocab: BundleVocabulary, count: int, max_length: int,
                    seed: int) -> list[np.ndarray]:
    """Sessions sampled from ``model`` itself (realistic states), plus random keys
    (the unknown key included) for unusual ones."""
    rng = np.random.default_rng(seed)
    sampled: list[list[int]] = [[] for _ in range(count)]
    alive = np.ones(count, bool)
    logits, state = model.step(np.full(count, vocab.start_key, np.int32),
                               model.initial_state(count))
    for _ in range(max_length):
        p = np.exp(np.asarray(logits, np.float64) - np.max(logits, axis=1, keepdims=True))
        cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        keys = (cumulative < rng.random((count, 1))).sum(axis=1).clip(0, vocab.size - 1)
        keys = keys.astype(np.int32)
        for i in np.flatnonzero(alive):
            if keys[i] in (vocab.end_key, vocab.start_key):
                alive[i] = False
            else:
                sampled[i].append(int(keys[i]))
        if not alive.any():
            break
        logits, state = model.step(keys, state)
    randoms = [rng.integers(0, vocab.start_key, rng.integers(1, max_length)) for _ in range(8)]
    return [np.array(s, np.int32) for s in sampled if s] + [r.astype(np.int32) for r in randoms]


def _stepwise_logits(model: StepModel, sequences: list[np.ndarray], start_key: int
                     ) -> list[np.ndarray]:
    """Per session, the logits after the start key and after each of its keys."""
    width = max(len(s) for s in sequences)
    keys = np.full((len(sequences), width), start_key, np.int32)
    for row, sequence in enumerate(sequences):
        keys[row, :len(sequence)] = sequence
    logits, state = model.step(np.full(len(sequences), start_key, np.int32),
                               model.initial_state(len(sequences)))
    steps = [logits]
    for t in range(width):
        logits, state = model.step(keys[:, t], state)
        steps.append(logits)
    stacked = np.stack(steps, axis=1)
    return [stacked[row, :len(s) + 1] for row, s in enumerate(sequences)]


def check_bundle(path: Path, *, sessions: int = 64, max_length: int = 40, seed: int = 0,
                 min_top1: float = 0.97, min_topg: float = 0.99,
                 max_window_diff: float = 1e-3) -> BundleCheck:
    """Check a bundle with the sidecar's runtime alone (no TensorFlow); BundleCheckError if not.

    Asserts: the runtime loads it (`load_bundle`: sha256s, card, vocabulary, signatures);
    both models use built-in ops only (no VAR_HANDLE/READ_VARIABLE/Flex/custom ops); on
    sessions sampled from the float reference (plus random ones), the quantised step model's
    logits are finite, its top-1 key agrees with the float reference on at least ``min_top1``
    of the steps and its top-g verdict (card g) on at least ``min_topg``; a session's logits
    do not depend on the rest of its batch; and ``window.tflite`` fed ``start`` plus n < W
    keys matches the step model within ``max_window_diff``.
    """
    try:
        bundle = load_bundle(path)
        reference = load_reference(bundle)
    except (BundleError, DataError) as exc:
        raise BundleCheckError(path, [str(exc)]) from None
    problems = []
    ops: set[str] = set()
    for name, content in ((MODEL_FILE, bundle.model), (WINDOW_FILE, bundle.window_model)):
        names = {op["op_name"] for op in Interpreter(model_content=content)._get_ops_details()}
        bad = sorted(o for o in names if o.startswith("Flex") or o in FORBIDDEN_OPS)
        if bad:
            problems.append(f"{name}: non-built-in ops {', '.join(bad)}")
        ops |= names
    vocab, g = bundle.vocab, bundle.card.scoring.g
    step_model = BundleStepModel(bundle)
    probes = _probe_sessions(reference, vocab, sessions, max_length, seed)
    quantised = np.concatenate(_stepwise_logits(step_model, probes, vocab.start_key))
    floats = np.concatenate(_stepwise_logits(reference, probes, vocab.start_key))
    if not np.isfinite(quantised).all():
        raise BundleCheckError(path, [*problems, f"{MODEL_FILE}: non-finite logits"])
    nexts = np.concatenate([np.append(p, vocab.end_key) for p in probes])
    top1 = float((quantised.argmax(1) == floats.argmax(1)).mean())
    rows = np.arange(len(nexts))
    rank_q = (quantised > quantised[rows, nexts][:, None]).sum(1)
    rank_f = (floats > floats[rows, nexts][:, None]).sum(1)
    topg = float(((rank_q < g) == (rank_f < g)).mean())
    if top1 < min_top1 or topg < min_topg:
        problems.append(f"{MODEL_FILE}: agrees with the float reference on {top1:.3f} of top-1 "
                        f"keys and {topg:.3f} of top-{g} verdicts (need {min_top1}, {min_topg})")
    single = _stepwise_logits(step_model, probes[:1], vocab.start_key)[0]
    if not np.allclose(single, quantised[:len(single)], atol=1e-5):
        problems.append(f"{MODEL_FILE}: a session's logits depend on the rest of its batch")
    window_diff = _window_diff(WindowRunner(bundle), probes, quantised, vocab.start_key)
    if window_diff > max_window_diff:
        problems.append(f"{WINDOW_FILE}: differs from the step model by {window_diff:.2e}")
    if problems:
        raise BundleCheckError(path, problems)
    return BundleCheck(ops=tuple(sorted(ops)), steps=len(nexts),
                       max_logit_diff=float(np.abs(quantised - floats).max()),
                       top1_agreement=top1, topg_agreement=topg, window_max_diff=window_diff)


def _window_diff(runner: WindowRunner, probes: list[np.ndarray], step_logits: np.ndarray,
                 start_key: int) -> float:
    """Largest difference between window and step logits over windows ``start`` + n-1 keys."""
    offsets = np.cumsum([0] + [len(p) + 1 for p in probes])
    worst = 0.0
    for n in range(1, runner.window + 1):
        rows = [i for i, p in enumerate(probes) if len(p) >= n - 1]
        keys = np.array([[start_key, *probes[i][:n - 1]] for i in rows], np.int32)
        want = step_logits[[offsets[i] + n - 1 for i in rows]]
        worst = max(worst, float(np.abs(runner.logits(keys) - want).max()))
    return worst


# --------------------------------------------------------------------------- bundle


def bundle_version(*paths: Path) -> int:
    """One more than the highest card version found in ``paths`` (1 if none)."""
    versions = [read_json(p / CARD_FILE).get("version", 0) for p in paths
                if (p / CARD_FILE).is_file()]
    return max(versions, default=0) + 1


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _stage(stage: Path, config: TrainConfig, data: TrainingData, fitted: FitResult,
           models: tuple[bytes, bytes], version: int) -> dict[str, Any]:
    """Write the bundle files into ``stage``; return the card (written with g = 1 and no
    validation figures: the caller scores the staged model, then fills both in)."""
    vocab = data.vocab
    (stage / MODEL_FILE).write_bytes(models[0])
    (stage / WINDOW_FILE).write_bytes(models[1])
    _write_json(stage / VOCAB_FILE, vocab.to_json())
    fitted.weights.save(stage / REFERENCE_FILE)
    card = {
        "format": 1,
        "name": config.name or config.out.name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "sha256": {name: file_sha256(stage / name) for name in
                   (MODEL_FILE, WINDOW_FILE, VOCAB_FILE)},
        "architecture": {"type": "lstm", "layers": config.layers, "hidden": config.hidden,
                         "embedding_dim": config.embedding_dim, "vocab_size": vocab.size,
                         "quantization": "dynamic_range_int8"},
        "scoring": {"g": 1, "window": config.window, "session_key": config.data.session_key,
                    "idle_timeout_seconds": float(config.idle_timeout_seconds),
                    "end_marker": config.end_marker},
        "training": {"command": config.command, "data": data.data, "split": data.split,
                     "sessions": {"train": len(data.train),
                                  "validation": len(data.validation_normal)
                                  + len(data.validation_abnormal),
                                  "validation_abnormal": len(data.validation_abnormal)},
                     "seed": config.data.seed, "epochs": fitted.epochs,
                     "best_epoch": fitted.best_epoch,
                     "key_map": dict(config.data.key_map), "baseline_order": config.baseline_order,
                     "validation_fraction": config.data.validation_fraction,
                     "test_fraction": config.data.test_fraction,
                     "float_reference": {"file": REFERENCE_FILE,
                                         "sha256": file_sha256(stage / REFERENCE_FILE)}},
        "template_distribution": key_distribution(data.train, vocab),
        "validation": {},
    }
    _write_json(stage / CARD_FILE, card)
    return card


def install(stage: Path, dest: Path) -> None:
    """Move a staged bundle into ``dest``, file by file, ``card.json`` last."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        os.replace(stage / name, dest / name)


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class GateResult:
    """Whether the candidate may replace the current bundle, and why not."""

    passed: bool
    reasons: tuple[str, ...]
    current: Metrics | None


def _gate(config: TrainConfig, candidate: Metrics, current: Metrics | None) -> GateResult:
    reasons = []
    f1, auc = candidate.f1 or 0.0, candidate.roc_auc or 0.0
    if config.gate_f1 is not None and f1 < config.gate_f1:
        reasons.append(f"validation F1 {f1:.4f} < gate {config.gate_f1}")
    if config.gate_auc is not None and auc < config.gate_auc:
        reasons.append(f"validation ROC AUC {auc:.4f} < gate {config.gate_auc}")
    if current is not None:
        if f1 < (current.f1 or 0.0):
            reasons.append(f"validation F1 {f1:.4f} < current bundle's {current.f1:.4f}")
        if config.gate_auc is not None and auc < (current.roc_auc or 0.0):
            reasons.append(f"validation ROC AUC {auc:.4f} < current bundle's "
                           f"{current.roc_auc:.4f}")
    return GateResult(not reasons, tuple(reasons), current)


def _current_metrics(against: Path, data: TrainingData) -> Metrics | None:
    """The installed bundle's metrics on the candidate's validation sessions (its own g)."""
    if not (against / CARD_FILE).is_file():
        return None
    bundle = load_bundle(against)
    sequences, labels = data.validation(Vocabulary.from_templates(bundle.vocab.templates))
    scores = score_sessions(BundleStepModel(bundle), sequences,
                            start_key=bundle.vocab.start_key, end_key=bundle.vocab.end_key)
    return session_metrics(scores.flags(bundle.card.scoring.g), labels, scores.score)


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the bundle (if installed), its card and the validation numbers."""

    installed: Path | None
    card: dict[str, Any]
    fit: FitResult
    g: int
    validation: Metrics
    validation_float: Metrics
    validation_baseline: Metrics
    check: BundleCheck
    gate: GateResult | None

    def table(self) -> str:
        """The final summary table (validation sessions)."""
        rows = [("quantised (shipped)", self.validation), ("float", self.validation_float),
                (f"n-gram baseline (order {self.card['training'].get('baseline_order')})",
                 self.validation_baseline)]
        lines = [f"bundle {self.card['name']} v{self.card['version']}: "
                 + (f"installed in {self.installed}" if self.installed else "NOT installed"),
                 f"epochs {self.fit.epochs} (best {self.fit.best_epoch}), val loss "
                 f"{min(self.fit.val_loss):.4f}, g = {self.g}",
                 format_metrics_table(rows, title="validation")]
        if self.gate is not None:
            lines.append("gate: " + ("passed" if self.gate.passed else
                                     "FAILED: " + "; ".join(self.gate.reasons)))
        return "\n".join(lines)


def train(config: TrainConfig) -> TrainResult:
    """Train a bundle, check it, gate it and install it (or not); see `TrainConfig`.

    The bundle goes to ``config.out`` (or, with ``shadow``, to the sibling directory
    ``<against or out>-shadow``) with a version one above any bundle already there or at
    ``against``. With a gate (``gate_f1``, ``gate_auc`` or ``against``) nothing is installed
    when the candidate's validation F1 / ROC AUC is below the thresholds or below the current
    bundle's on the same validation sessions: ``result.installed`` is None and
    ``result.gate.passed`` False (the CLI exits non-zero). Raises DataError for unusable
    data and BundleCheckError for a bundle that fails its check (nothing installed).
    """
    data = load_training_data(config.data)
    gated = config.gate_f1 is not None or config.gate_auc is not None or config.against
    if gated and not data.validation_abnormal:
        raise DataError("the retraining gate compares validation F1 / ROC AUC, which needs "
                        "labelled anomalous validation sessions")
    log.info("training on %d sessions, validating on %d normal + %d anomalous; %d templates",
             len(data.train), len(data.validation_normal), len(data.validation_abnormal),
             len(data.vocab.templates))
    validation, labels = data.validation(data.vocab)
    fitted = fit(data.train, validation[:len(data.validation_normal)], data.vocab, config)
    models = convert(fitted.weights, config.window)

    target = config.against or config.out
    shadow = target.parent / f"{target.name}-shadow"
    dest = shadow if config.shadow else config.out
    version = bundle_version(config.out, shadow, *([config.against] if config.against else []))
    vocab = data.vocab
    kwargs = {"start_key": vocab.start_key, "end_key": vocab.end_key}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        stage = Path(tmp)
        card = _stage(stage, config, data, fitted, models, version)
        scores = score_sessions(BundleStepModel(load_bundle(stage)), validation, **kwargs)
        g = config.g or choose_g(scores, labels, max_g=vocab.size - 1, max_fpr=config.max_fpr)
        quantised = session_metrics(scores.flags(g), labels, scores.score)
        card["scoring"]["g"] = g
        card["validation"] = {**{k: v for k, v in quantised.to_json().items()
                                 if k in ("precision", "recall", "f1", "fpr", "roc_auc")},
                              "g": g}
        _write_json(stage / CARD_FILE, card)
        check = check_bundle(stage)
        gate = None
        if gated:
            current = _current_metrics(config.against, data) if config.against else None
            gate = _gate(config, quantised, current)
        installed = None
        if gate is None or gate.passed:
            install(stage, dest)
            installed = dest
    float_scores = score_sessions(ReferenceModel(fitted.weights), validation, **kwargs)
    baseline = NGramModel.fit(data.train, vocab_size=vocab.size, order=config.baseline_order,
                              **kwargs)
    base_scores = score_sessions(baseline, validation, **kwargs)
    return TrainResult(installed=installed, card=card, fit=fitted, g=g, validation=quantised,
                       validation_float=session_metrics(float_scores.flags(g), labels,
                                                        float_scores.score),
                       validation_baseline=session_metrics(base_scores.flags(g), labels,
                                                           base_scores.score),
                       check=check, gate=gate)

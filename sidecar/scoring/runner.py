"""Run a bundle's models with LiteRT and turn their logits into verdicts.

Strategy: ``StepRunner`` drives the stateful single-step model, one interpreter call
for many rows, resizing the batch dimension only when it changes and copying arrays
in and out (``set_tensor``/``get_tensor``), so no numpy view pins interpreter memory.
``SessionModel`` puts it to work over a ``SessionTable``: a batch of records is split
into waves in which every session appears at most once (records of one session are
stepped in order; one call per wave, or per MAX_ROWS of it). Each wave gathers its
sessions' state rows, judges each record against the prediction cached after the
session's previous record, steps, and scatters the new state and prediction back. A
new session needs no model call: the prediction after the start key from zero state
is the same for all, computed once at load (which also proves the model gives
finite output).

``WindowRunner`` runs the classic windowed form of the same weights, the reference
the tests and benchmarks compare against; ``reference_windows`` builds the windows
that make it see exactly what the stateful form saw. ``judge`` is the one verdict
rule both forms share: a key is anomalous when it is the unknown key or outside the
top-g predictions (rank = number of keys with a strictly higher log-probability,
so ties favour the record), and its score is its surprise, -log p(key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from sidecar.scoring.bundle import SIGNATURE, Bundle, BundleError
from sidecar.scoring.sessions import SessionTable

UNKNOWN_KEY = 0
MAX_ROWS = 256  # rows per interpreter call: larger calls fall out of cache and run slower


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities of a [B, V] array of finite logits.

    Logits of a trained model are small, so the log-sum-exp is first taken without
    shifting by the row maximum (half the cost); rows whose sum over- or underflows
    are redone in the shifted, always-finite form. Each row's result depends on that
    row alone, never on the rest of the batch.
    """
    with np.errstate(over="ignore", divide="ignore"):
        log_sum = np.log(np.exp(logits).sum(axis=1, keepdims=True))
    logp = logits - log_sum
    bad = ~np.isfinite(log_sum[:, 0])
    if bad.any():
        shifted = logits[bad] - logits[bad].max(axis=1, keepdims=True)
        logp[bad] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return logp


@dataclass(frozen=True)
class Verdicts:
    """Per-record results, aligned with the keys judged."""

    anomalous: np.ndarray
    """bool: the key is unknown or outside the top-g predictions."""
    scores: np.ndarray
    """float32: -log p(key) under the prediction."""


def judge(logp: np.ndarray, keys: np.ndarray, g: int) -> Verdicts:
    """Judge ``keys[i]`` against the predicted log-probabilities ``logp[i]`` with top-``g``."""
    chosen = logp[np.arange(len(keys)), keys]
    rank = (logp > chosen[:, None]).sum(axis=1)
    return Verdicts((rank >= g) | (keys == UNKNOWN_KEY), -chosen)


class _Model:
    """One interpreter over a model's ``serving_default`` signature, inputs and outputs by name."""

    def __init__(self, content: bytes, inputs: Sequence[str], outputs: Sequence[str]):
        self._interpreter = Interpreter(model_content=content, num_threads=1)
        runner = self._interpreter.get_signature_runner(SIGNATURE)
        details = runner.get_input_details()
        self._inputs = [details[name]["index"] for name in inputs]
        self._shapes = [tuple(details[name]["shape"]) for name in inputs]
        self._outputs = [runner.get_output_details()[name]["index"] for name in outputs]
        del runner  # it holds the interpreter's buffers; resizing needs none held
        self._interpreter.allocate_tensors()

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Set the inputs (resizing if a shape changed), invoke, return copies of the outputs."""
        interpreter, shapes = self._interpreter, self._shapes
        if any(array.shape != shape for array, shape in zip(arrays, shapes, strict=True)):
            for i, (index, array) in enumerate(zip(self._inputs, arrays, strict=True)):
                interpreter.resize_tensor_input(index, array.shape)
                shapes[i] = array.shape
            interpreter.allocate_tensors()
        for index, array in zip(self._inputs, arrays, strict=True):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in self._outputs]


class StepRunner:
    """The stateful single-step model: (keys, state) -> (next-key logits, new state)."""

    def __init__(self, bundle: Bundle):
        names = bundle.state_names
        self._model = _Model(bundle.model, ("key", *names),
                             ("logits", *(f"{name}_out" for name in names)))

    def step(self, keys: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ``keys`` (int32 [B]) with ``state`` (float32 [parts, B, H]) in one call.

        Returns logits [B, V] and the new state parts, each [B, H], in state order.
        """
        logits, *new_state = self._model.run((keys, *state))
        return logits, new_state


class WindowRunner:
    """The windowed form: the last keys in (from zero state), next-key logits out."""

    def __init__(self, bundle: Bundle):
        self._model = _Model(bundle.window_model, ("keys",), ("logits",))
        self.window = bundle.card.scoring.window

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Logits [B, V] after feeding each row of ``windows`` (int32 [B, n], n <= window)."""
        if not 1 <= windows.shape[1] <= self.window:
            raise ValueError(f"window length {windows.shape[1]} outside 1..{self.window}")
        return self._model.run((windows,))[0]

    def judge_windows(self, windows: Sequence[Sequence[int]], targets: Sequence[int],
                      g: int) -> Verdicts:
        """Judge ``targets[i]`` after ``windows[i]``; one model call per distinct window length."""
        targets_array = np.asarray(targets, np.int64)
        anomalous = np.zeros(len(windows), bool)
        scores = np.zeros(len(windows), np.float32)
        lengths = np.array([len(w) for w in windows])
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            batch = np.array([windows[i] for i in rows], np.int32)
            verdicts = judge(log_softmax(self.logits(batch)), targets_array[rows], g)
            anomalous[rows], scores[rows] = verdicts.anomalous, verdicts.scores
        return Verdicts(anomalous, scores)


def reference_windows(keys: Sequence[int], start_key: int, end_key: int,
                      window: int) -> tuple[list[list[int]], list[int]]:
    """The windows that predict each key of a session and then its end, with those targets.

    Position i is predicted from ``[start, keys[:i]]`` while that fits in ``window``
    (exactly what the stateful form has seen), else from the last ``window`` keys.
    """
    history = [start_key, *keys]
    windows = [history[max(0, i + 1 - window): i + 1] for i in range(len(keys) + 1)]
    return windows, [*keys, end_key]


class SessionModel:
    """One bundle scoring many sessions: step runner, session table and the top-g rule."""

    def __init__(self, bundle: Bundle, g: int, max_sessions: int):
        self.bundle = bundle
        self.g = g
        self._max_sessions = max_sessions
        self._runner = StepRunner(bundle)
        parts, hidden = len(bundle.state_names), bundle.card.architecture.hidden
        start = np.array([bundle.vocab.start_key], np.int32)
        logits, state = self._runner.step(start, np.zeros((parts, 1, hidden), np.float32))
        if not (np.isfinite(logits).all() and all(np.isfinite(s).all() for s in state)):
            raise BundleError(f"bundle {bundle.path}: model.tflite gives non-finite output")
        self._initial_state = np.concatenate(state)
        self._initial_logp = log_softmax(logits)[0]
        self.table = SessionTable(max_sessions, self._initial_state, self._initial_logp)

    def reset(self) -> None:
        """Forget every session: start again from an empty table."""
        self.table = SessionTable(self._max_sessions, self._initial_state, self._initial_logp)

    def step(self, slots: np.ndarray, keys: np.ndarray) -> Verdicts:
        """Judge and feed ``keys[i]`` for the session in ``slots[i]``, in order per session."""
        table = self.table
        anomalous = np.zeros(len(keys), bool)
        scores = np.zeros(len(keys), np.float32)
        keys = np.asarray(keys, np.int32)
        for wave in _waves(slots) if len(keys) else ():
            rows, wave_keys = slots.take(wave), keys.take(wave)  # take: faster than [wave]
            verdicts = judge(table.logp.take(rows, axis=0), wave_keys, self.g)
            anomalous[wave], scores[wave] = verdicts.anomalous, verdicts.scores
            logits, state = self._runner.step(wave_keys, table.state.take(rows, axis=1))
            for part, values in enumerate(state):
                table.state[part, rows] = values
            table.logp[rows] = log_softmax(logits)
        return Verdicts(anomalous, scores)

    def end(self, slots: Sequence[int]) -> Verdicts:
        """Judge the end key for the sessions in ``slots`` (after their last record)."""
        rows = np.asarray(slots, np.int64)
        ends = np.full(len(rows), self.bundle.vocab.end_key, np.int64)
        return judge(self.table.logp.take(rows, axis=0), ends, self.g)


def _waves(slots: np.ndarray) -> list[np.ndarray]:
    """Split record indices into waves: wave w holds each session's w-th record, in order.

    A wave longer than MAX_ROWS is cut into pieces (its sessions are distinct, so the
    pieces are independent).
    """
    count = len(slots)
    if count == 1:
        return [np.zeros(1, np.int64)]
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    first = np.ones(count, bool)
    first[1:] = ordered[1:] != ordered[:-1]
    if first.all():
        waves = [np.arange(count)]
    else:
        positions = np.arange(count)
        group_start = np.maximum.accumulate(np.where(first, positions, 0))
        occurrence = np.empty(count, np.int64)
        occurrence[order] = positions - group_start
        by_wave = np.argsort(occurrence, kind="stable")
        waves = np.split(by_wave, np.cumsum(np.bincount(occurrence))[:-1])
    return [wave[i:i + MAX_ROWS] for wave in waves for i in range(0, len(wave), MAX_ROWS)]

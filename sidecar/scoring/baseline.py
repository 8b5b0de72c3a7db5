"""A next-key frequency model (n-gram with back-off): the floor the LSTM has to beat.

Strategy: count, over the training sessions framed as ``start k1 .. kn end``, how often each
key follows each context of up to ``order - 1`` previous keys. A context's prediction is
"stupid back-off" (Brants et al. 2007): the relative frequency of a key after the longest
context, and for keys never seen after it ``alpha`` times the prediction of the context one
key shorter, down to add-one unigram frequencies. The model exposes the same step interface
as the LSTM (state = the last keys; output = log scores over all keys), so the very same
session scorer, top-g rule and end-of-session check apply to both. Predictions are cached
per context; HDFS-sized data has a few thousand distinct contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: State value before the start of a session (shorter contexts).
_EMPTY = -1


class NGramModel:
    """Next-key scores from n-gram counts with stupid back-off."""

    def __init__(self, counts: dict[tuple[int, ...], np.ndarray], *, order: int,
                 vocab_size: int, alpha: float = 0.4) -> None:
        self.order = order
        self.vocab_size = vocab_size
        self.alpha = alpha
        self._counts = counts
        self._cache: dict[bytes, np.ndarray] = {}

    @classmethod
    def fit(cls, sequences: Sequence[np.ndarray], *, vocab_size: int, start_key: int,
            end_key: int, order: int = 3, alpha: float = 0.4) -> NGramModel:
        """Count next keys after every context of length 0..order-1 in the framed sessions."""
        if order < 1:
            raise ValueError("n-gram order must be >= 1")
        counts: dict[tuple[int, ...], np.ndarray] = {}
        for sequence in sequences:
            framed = [start_key, *sequence.tolist(), end_key]
            for i in range(1, len(framed)):
                for length in range(min(order - 1, i) + 1):
                    context = tuple(framed[i - length:i])
                    row = counts.get(context)
                    if row is None:
                        row = counts[context] = np.zeros(vocab_size, dtype=np.float64)
                    row[framed[i]] += 1
        return cls(counts, order=order, vocab_size=vocab_size, alpha=alpha)

    def initial_state(self, batch: int) -> list[np.ndarray]:
        """Empty contexts for ``batch`` sessions."""
        return [np.full((batch, max(self.order - 1, 0)), _EMPTY, dtype=np.int32)]

    def step(self, keys: np.ndarray, state: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Append ``keys`` to each context; return log scores of the next key [B, V]."""
        (context,) = state
        if context.shape[1]:
            context = np.concatenate([context[:, 1:], keys.astype(np.int32)[:, None]], axis=1)
        logits = np.empty((len(context), self.vocab_size))
        for i, row in enumerate(context):
            logits[i] = self._log_scores(row)
        return logits, [context]

    def _log_scores(self, row: np.ndarray) -> np.ndarray:
        key = row.tobytes()
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = np.log(self._scores(tuple(int(k) for k in row
                                                                  if k != _EMPTY)))
        return cached

    def _scores(self, context: tuple[int, ...]) -> np.ndarray:
        if not context:
            unigram = self._counts.get((), np.zeros(self.vocab_size))
            return (unigram + 1.0) / (unigram.sum() + self.vocab_size)
        backed_off = self.alpha * self._scores(context[1:])
        row = self._counts.get(context)
        if row is None:
            return backed_off
        return np.where(row > 0, row / row.sum(), backed_off)

"""``first_divergences``: the first step a model rejects, and what it expected there, agree with
whole-session scoring (``score_sessions``) and with the runtime's judge rule."""

from __future__ import annotations

import numpy as np

from sidecar.scoring.evaluation import first_divergences, score_sessions
from sidecar.scoring.runner import judge, log_softmax

# Keys: 0 unknown, 1..4 templates, 5 start, 6 end. Row = the last key fed.
TABLE = np.array([
    [0, 1, 1, 1, 1, 0, 2],   # after unknown
    [0, 0, 6, 1, 2, 0, 3],   # after 1: 2, then end, then 4, then 3
    [0, 4, 0, 5, 0, 0, 6],   # after 2: end, then 3, then 1
    [0, 0, 0, 0, 0, 0, 9],   # after 3: end
    [0, 2, 2, 0, 0, 0, 1],   # after 4: 1 or 2 (tied)
    [0, 7, 3, 0, 5, 0, 1],   # after start: 1, then 4, then 2
    [0, 0, 0, 0, 0, 0, 0],
], dtype=np.float32)
START, END = 5, 6


class BigramModel:
    """Next-key logits depend on the last key only."""

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, 1), np.float32)]

    def step(self, keys, state):
        return TABLE[keys], [keys.astype(np.float32)[:, None]]


def manual(keys: list[int], g: int) -> tuple[int, list[int]]:
    """The first position judge() flags, and the keys ranked highest there (no unknown/start)."""
    last = START
    for position, key in enumerate([*keys, END]):
        logp = log_softmax(TABLE[[last]])
        if judge(logp, np.array([key]), g).anomalous[0]:
            order = [k for k in np.argsort(-logp[0], kind="stable") if k not in (0, START)]
            return position, order[:3]
        last = key
    return -1, []


def test_divergences_match_the_judge_rule_and_the_session_flags():
    sessions = [[1, 2], [1, 3], [1], [], [2, 0, 1], [1, 2, 3, 1, 2], [4, 2], [4, 1, 4, 3]]
    arrays = [np.array(s, np.int32) for s in sessions]
    for g in (1, 2, 3):
        found = first_divergences(BigramModel(), arrays, start_key=START, end_key=END, g=g,
                                  batch_size=3)
        flags = score_sessions(BigramModel(), arrays, start_key=START, end_key=END).flags(g)
        assert ((found.position >= 0) == flags).all(), g
        for i, keys in enumerate(sessions):
            position, expected = manual(keys, g)
            assert found.position[i] == position, (g, keys)
            if position >= 0:
                assert found.expected[i].tolist() == expected, (g, keys)
            else:
                assert (found.expected[i] == -1).all()


def test_the_end_and_unknown_keys_diverge_where_they_stand():
    found = first_divergences(BigramModel(), [np.array([4], np.int32),
                                              np.array([1, 0, 2], np.int32)],
                              start_key=START, end_key=END, g=2, top=2)
    assert found.position.tolist() == [1, 1]  # [4] ends where 1 or 2 was expected
    assert found.expected.tolist() == [[1, 2], [2, END]]  # ties: the lower key first

"""The stateful step model against the windowed reference, on real HDFS sessions.

Both forms come from the same weights. Up to the window length the stateful form has seen
exactly the window's keys, so every verdict and score there must be the same; beyond it the
stateful form remembers the whole session, and only the agreement rate is reported.
"""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.scoring.runner import (
    SessionModel,
    Verdicts,
    WindowRunner,
    judge,
    log_softmax,
    reference_windows,
)


def score_stateful(bundle, sessions, order, batch: int) -> tuple[dict, Verdicts]:
    """Per (session, position) (anomalous, score), and the end verdicts per session."""
    model = SessionModel(bundle, bundle.card.scoring.g, max_sessions=len(sessions))
    verdicts = {}
    for first in range(0, len(order), batch):
        chunk = order[first:first + batch]
        assigned = model.table.assign([str(i) for i, _ in chunk], now=0.0)
        result = model.step(assigned.slots, np.array([sessions[i][t] for i, t in chunk]))
        for n, key in enumerate(chunk):
            verdicts[key] = (bool(result.anomalous[n]), float(result.scores[n]))
    slots = dict(model.table.drain())
    return verdicts, model.end([slots[str(i)] for i in range(len(sessions))])


def score_windowed(bundle, sessions) -> list[Verdicts]:
    runner, vocab = WindowRunner(bundle), bundle.vocab
    results = []
    for keys in sessions:
        windows, targets = reference_windows(keys, vocab.start_key, vocab.end_key,
                                             bundle.card.scoring.window)
        results.append(runner.judge_windows(windows, targets, bundle.card.scoring.g))
    return results


@pytest.fixture(scope="module")
def sessions(normal_sessions, abnormal_sessions):
    return normal_sessions + abnormal_sessions


@pytest.fixture(scope="module")
def stateful(tiny, sessions, interleaved):
    return score_stateful(tiny, sessions, interleaved(sessions, seed=1), batch=256)


def test_both_forms_agree_exactly_within_the_window(tiny, sessions, stateful):
    verdicts, ends = stateful
    reference = score_windowed(tiny, sessions)
    window = tiny.card.scoring.window
    exact = same = beyond = 0
    for index, keys in enumerate(sessions):
        ref = reference[index]
        for t in range(len(keys) + 1):  # position len(keys) is the end of the session
            mine = verdicts[index, t] if t < len(keys) else (bool(ends.anomalous[index]),
                                                             float(ends.scores[index]))
            if t + 1 <= window:  # the window is [start, keys[:t]]: exactly the state's history
                assert mine[0] == ref.anomalous[t], (index, t)
                assert mine[1] == pytest.approx(float(ref.scores[t]), abs=1e-5), (index, t)
                exact += 1
            else:
                same += mine[0] == ref.anomalous[t]
                beyond += 1
    assert exact > 4000 and beyond > 4000
    rate = same / beyond
    print(f"verdicts compared exactly: {exact}; agreement beyond the window: {rate:.4f} "
          f"of {beyond}")
    assert rate > 0.9


def test_batching_and_interleaving_do_not_change_verdicts(tiny, sessions, stateful):
    one_by_one = [(i, t) for i, keys in enumerate(sessions) for t in range(len(keys))]
    verdicts, ends = score_stateful(tiny, sessions, one_by_one, batch=37)
    assert verdicts == stateful[0]
    np.testing.assert_array_equal(ends.anomalous, stateful[1].anomalous)
    np.testing.assert_array_equal(ends.scores, stateful[1].scores)


def test_sessions_that_stop_early_are_caught_by_the_end_key(tiny, normal_sessions,
                                                            abnormal_sessions, stateful):
    verdicts, ends = stateful
    flagged = [any(verdicts[i, t][0] for t in range(len(keys))) or bool(ends.anomalous[i])
               for i, keys in enumerate(normal_sessions + abnormal_sessions)]
    normal, abnormal = flagged[:len(normal_sessions)], flagged[len(normal_sessions):]
    assert np.mean(abnormal) >= 0.95 and np.mean(normal) <= 0.03
    short = [i for i, keys in enumerate(abnormal_sessions) if keys in ([5, 22], [22, 5])]
    base = len(normal_sessions)
    assert short, "the sample holds short early-stopping sessions"
    for i in short:  # every key is plausible; only the early end is wrong
        assert not any(verdicts[base + i, t][0] for t in range(2))
        assert ends.anomalous[base + i]


def test_judge_counts_ties_in_favour_of_the_record_and_flags_the_unknown_key():
    logp = np.log(np.array([[0.1, 0.3, 0.3, 0.2, 0.1],
                            [0.1, 0.3, 0.3, 0.2, 0.1]], np.float32))
    verdicts = judge(logp, np.array([2, 3]), g=1)
    assert verdicts.anomalous.tolist() == [False, True]  # key 2 ties for first place
    assert verdicts.scores[0] == pytest.approx(-np.log(0.3))
    unknown = judge(logp[:1], np.array([0]), g=5)
    assert unknown.anomalous.tolist() == [True]


def test_log_softmax_stays_finite_for_extreme_logits():
    logits = np.array([[1.0, 2.0, 3.0], [500.0, 499.0, 0.0], [-300.0, -301.0, -302.0]],
                      np.float32)
    logp = log_softmax(logits)
    assert np.isfinite(logp).all()
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(logp[1] - logp[1, 0], [0.0, -1.0, -500.0])
    for row in range(3):  # a row's result does not depend on its neighbours
        np.testing.assert_array_equal(logp[row], log_softmax(logits[row:row + 1])[0])

"""Session scoring, metrics, the n-gram baseline and ``evaluate`` on the shipped bundle.

The raw HDFS lines are rendered from Loghub HDFS line shapes (https://github.com/logpai/loghub;
research or academic use only, see ``tests/testdata/bundles/hdfs_sample/LICENSE-LOGHUB.txt``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.scoring.baseline import NGramModel
from sidecar.scoring.datasets import SessionSource
from sidecar.scoring.evaluation import (
    UNKNOWN_RANK,
    EvaluationConfig,
    SessionScores,
    choose_g,
    evaluate,
    roc_auc,
    score_sessions,
    session_metrics,
)
from sidecar.scoring.runner import judge, log_softmax

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "hdfs"


class BigramModel:
    """Next-key logits depend on the last key only: ``table[last]``."""

    def __init__(self, table: np.ndarray):
        self.table = table.astype(np.float32)

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, 1), np.float32)]

    def step(self, keys, state):
        return self.table[keys], [keys.astype(np.float32)[:, None]]


# Keys: 0 unknown, 1..3 templates, 4 start, 5 end.
TABLE = np.array([
    [0, 1, 1, 1, 0, 2],      # after unknown
    [0, 0, 5, 1, 0, 2],      # after 1: 2 likely, then end, then 3
    [0, 3, 0, 4, 0, 6],      # after 2: end likely
    [0, 0, 0, 0, 0, 9],      # after 3: end
    [0, 7, 3, 0, 0, 1],      # after start: 1 likely
    [0, 0, 0, 0, 0, 0],
], dtype=np.float32)


def manual(keys: list[int]) -> tuple[int, float]:
    """Worst rank and highest -log p over keys and the end, straight from the definition."""
    last, ranks, scores = 4, [], []
    for key in [*keys, 5]:
        logp = log_softmax(TABLE[[last]])[0]
        ranks.append(UNKNOWN_RANK if key == 0 else int((logp > logp[key]).sum()))
        scores.append(float(-logp[key]))
        last = key
    return max(ranks), max(scores)


def test_session_scores_follow_the_bundle_semantics():
    sessions = [[1, 2], [1, 3], [1], [], [2, 0, 1], [1, 2, 3, 1, 2]]
    result = score_sessions(BigramModel(TABLE), [np.array(s, np.int32) for s in sessions],
                            start_key=4, end_key=5)
    for i, keys in enumerate(sessions):
        rank, score = manual(keys)
        assert result.rank[i] == rank, keys
        assert result.score[i] == pytest.approx(score, rel=1e-6), keys
    assert result.rank[4] == UNKNOWN_RANK and result.flags(10**6)[4]


def test_ranks_flag_exactly_what_the_runtime_judge_flags():
    logits = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    table = np.vstack([logits[:5], np.zeros((1, 6), np.float32)])
    keys = [np.array([k], np.int32) for k in range(1, 4)]
    result = score_sessions(BigramModel(table), keys, start_key=4, end_key=5)
    for g in range(1, 6):
        for i, key in enumerate(keys):
            logp = log_softmax(table[[4, int(key[0])]])
            runtime = judge(logp, np.array([key[0], 5]), g).anomalous.any()
            assert bool(result.flags(g)[i]) == bool(runtime)


def test_batching_does_not_change_scores():
    rng = np.random.default_rng(2)
    sessions = [rng.integers(0, 4, rng.integers(0, 12)).astype(np.int32) for _ in range(40)]
    one = score_sessions(BigramModel(TABLE), sessions, start_key=4, end_key=5, batch_size=1)
    many = score_sessions(BigramModel(TABLE), sessions, start_key=4, end_key=5, batch_size=7)
    assert one.rank.tolist() == many.rank.tolist()
    assert np.allclose(one.score, many.score)


def test_metrics_count_and_rate_session_verdicts():
    flags = np.array([1, 1, 0, 0, 1, 0], bool)
    labels = np.array([1, 0, 1, 0, 1, 0], bool)
    m = session_metrics(flags, labels, flags.astype(float))
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 2)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3) and m.fpr == pytest.approx(1 / 3)
    empty = session_metrics(np.zeros(3, bool), np.zeros(3, bool), np.zeros(3))
    assert (empty.precision, empty.recall, empty.f1, empty.roc_auc) == (None, None, None, None)
    assert empty.fpr == 0.0


def test_roc_auc_is_the_mann_whitney_statistic():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1], bool)) == 0.5
    assert roc_auc(np.array([1.0, 2.0]), np.array([1, 1], bool)) is None


def test_g_is_chosen_for_recall_within_the_false_positive_budget():
    # worst ranks: normal sessions 0..9, anomalous sessions 3, 5, 8
    scores = SessionScores(np.array([*range(10), 3, 5, 8]), np.zeros(13))
    labels = np.array([False] * 10 + [True] * 3)
    assert choose_g(scores, labels, max_g=12, max_fpr=0.3) == 8   # fpr 0.2, recall 1/3
    assert choose_g(scores, labels, max_g=12, max_fpr=0.5) == 5   # fpr 0.5, recall 2/3
    no_anomalies = SessionScores(np.arange(10), np.zeros(10))
    assert choose_g(no_anomalies, np.zeros(10, bool), max_g=12, max_fpr=0.3) == 7
    assert choose_g(no_anomalies, np.zeros(10, bool), max_g=3, max_fpr=0.0) == 3


def test_ngram_predicts_seen_transitions_first_and_backs_off():
    train = [np.array([1, 2, 3], np.int32)] * 5 + [np.array([1, 3], np.int32)]
    model = NGramModel.fit(train, vocab_size=6, start_key=4, end_key=5, order=3)
    state = model.initial_state(1)
    logits, state = model.step(np.array([4], np.int32), state)   # after start
    assert logits[0].argmax() == 1
    logits, state = model.step(np.array([1], np.int32), state)   # after start, 1
    assert list(np.argsort(-logits[0])[:2]) == [2, 3]
    scores = score_sessions(model, [np.array([1, 2, 3]), np.array([3, 1])], start_key=4,
                            end_key=5)
    assert scores.rank[0] == 0 and scores.rank[1] > 0
    unseen_context, _ = model.step(np.array([2], np.int32), [np.array([[3, 3]], np.int32)])
    shorter, _ = model.step(np.array([2], np.int32), [np.array([[-1, -1]], np.int32)])
    assert np.argsort(-unseen_context[0]).tolist() == np.argsort(-shorter[0]).tolist()


# --------------------------------------------------------------------------- evaluate


LINES = {
    5: "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block {b} src: "
       "/10.250.19.102:54106 dest: /10.250.19.102:50010",
    22: "081109 203518 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: "
        "/mnt/hadoop/mapred/system/job_200811092030_0001/job.jar. {b}",
    11: "081109 203519 145 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block {b} "
        "terminating",
    9: "081109 203519 145 INFO dfs.DataNode$PacketResponder: Received block {b} of size 91178 "
       "from /10.250.10.6",
    26: "081109 203519 29 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap "
        "updated: 10.250.10.6:50010 is added to {b} size 91178",
    23: "081109 213809 32 INFO dfs.FSNamesystem: BLOCK* NameSystem.delete: {b} is added to "
        "invalidSet of 10.250.10.6:50010",
    21: "081109 213810 19 INFO dfs.FSDataset: Deleting block {b} file "
        "/mnt/hadoop/dfs/data/current/{b}",
}
NORMAL = [5, 5, 22, 5, 11, 9, 11, 9, 11, 9, 26, 26, 26, 23, 23, 23, 21, 21, 21]
EARLY_END = [5, 22]


@pytest.fixture
def raw_logs(tmp_path):
    sessions = {f"blk_{100 + i}": NORMAL for i in range(4)}
    sessions |= {"blk_200": EARLY_END, "blk_300": NORMAL}  # blk_300 has no label
    rows = [LINES[key].format(b=block) for block, keys in sessions.items() for key in keys]
    log = tmp_path / "hdfs.log"
    log.write_text("\n".join(rows) + "\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("BlockId,Label\n" + "".join(f"blk_{100 + i},Normal\n" for i in range(4))
                      + "blk_200,Anomaly\nblk_404,Normal\nblk_405,Anomaly\n")
    return log, labels


def test_raw_logs_are_scored_by_the_live_stage_and_every_label_counts_once(raw_logs,
                                                                           tmp_path):
    log, labels = raw_logs
    out = tmp_path / "report.json"
    report = evaluate(EvaluationConfig(model=SHIPPED, logs=(log,), labels=labels,
                                       json_path=out))
    m = report.quantised
    # 4 normal + blk_404 (never seen: a true negative); blk_200 caught, blk_405 missed.
    assert (m.tp, m.fp, m.fn, m.tn) == (1, 0, 1, 5)
    assert report.counts["missing_normal"] == 1 and report.counts["missing_anomalous"] == 1
    assert report.counts["unlabelled_in_logs"] == 1
    assert set(report.missing) == {"blk_404", "blk_405"}
    assert any("agree with whole-session scoring on 7 of 7" in n for n in report.notes)
    document = json.loads(out.read_text())
    assert {"tp", "fp", "fn", "tn", "precision", "recall", "f1", "roc_auc", "float",
            "baseline"} <= set(document)
    assert document["float"]["tp"] == 1


def test_key_sequences_are_mapped_through_template_texts(tmp_path):
    templates = tmp_path / "t.csv"
    templates.write_text("EventId,EventTemplate\n" + "".join(
        f"E{k},{t}\n" for k, t in load_vocab_texts().items()))
    normal = tmp_path / "normal"
    normal.write_text("".join(" ".join(map(str, NORMAL)) + "\n" for _ in range(5)))
    abnormal = tmp_path / "abnormal"
    abnormal.write_text("5 22\n5 5 22 5 11 9 11 9 11 9 26 26 26 23 23 23 21 20 21 21\n")
    report = evaluate(EvaluationConfig(
        model=SHIPPED, normal=(SessionSource(normal),), abnormal=(SessionSource(abnormal),),
        templates=templates, max_g=5))
    m = report.quantised
    assert (m.tp, m.fn, m.fp, m.tn) == (2, 0, 0, 5)
    assert m.roc_auc == 1.0
    assert [len(rows) for rows in report.curves.values()] == [5] * len(report.curves)
    if report.baseline is None:  # the bundle's training files are not on this machine
        assert any("training data unavailable" in note for note in report.notes)


def test_plot_is_written(raw_logs, tmp_path):
    pytest.importorskip("matplotlib")
    log, labels = raw_logs
    plot = tmp_path / "plot.png"
    evaluate(EvaluationConfig(model=SHIPPED, logs=(log,), labels=labels, plot_path=plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def load_vocab_texts() -> dict[int, str]:
    document = json.loads((SHIPPED / "vocab.json").read_text())
    return {int(k): v for k, v in document["templates"].items()}


def test_bundles_without_float_reference_or_training_files_still_evaluate(tiny_dir):
    """The runtime's test bundle has no reference.npz and no machine-readable data list."""
    sample = tiny_dir.parent / "hdfs_sample"
    report = evaluate(EvaluationConfig(model=tiny_dir,
                                       normal=(SessionSource(sample / "normal.txt"),),
                                       abnormal=(SessionSource(sample / "abnormal.txt"),)))
    assert report.float is None and report.baseline is None
    assert report.counts["normal"] == 300 and report.counts["anomalous"] == 300
    assert report.quantised.recall > 0.9 and report.quantised.fpr < 0.05
    assert any("no float reference" in note for note in report.notes)
    assert any("training data unavailable" in note for note in report.notes)
    assert report.to_json()["float"] is None

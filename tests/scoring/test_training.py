"""Training: end to end on raw logs, the bundle card, determinism, the gate, the bundle check.

The TensorFlow tests are marked slow and train a tiny model for a few epochs on a few
hundred synthetic sessions; the shipped bundle's check needs only the LiteRT runtime.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidecar.scoring.bundle import load_bundle
from sidecar.scoring.datasets import DataError, DataSpec
from sidecar.scoring.evaluation import EvaluationConfig, ReferenceModel, evaluate
from sidecar.scoring.training import (
    FORBIDDEN_OPS,
    BundleCheckError,
    TrainConfig,
    check_bundle,
    train,
)

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "hdfs"
SESSION_KEY = r"regex:req-\d+"


def request_lines(session: int, rng: np.random.Generator, kind: str = "normal") -> list[str]:
    """Log lines of one request: received, 1-3 auth checks, 1-4 queries, completed.

    ``early_end`` stops after the auth checks; ``deadlock`` adds an event never seen in
    training.
    """
    rid = f"req-{session}"
    lines = [f"INFO api: request {rid} received from 10.0.{session % 250}.{session % 7 + 1}"]
    lines += [f"DEBUG auth: token {i} checked for {rid}" for i in range(rng.integers(1, 4))]
    if kind == "early_end":
        return lines
    lines += [f"INFO db: query q{rng.integers(100)} took {rng.integers(1, 90)} ms for {rid}"
              for _ in range(rng.integers(1, 5))]
    if kind == "deadlock":
        lines.append(f"ERROR db: deadlock detected while serving {rid}")
    lines.append(f"INFO api: request {rid} completed with status 200 in "
                 f"{rng.integers(5, 400)} ms")
    return lines


def write_logs(path: Path, kinds: dict[int, str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("".join(line + "\n" for session, kind in kinds.items()
                            for line in request_lines(session, rng, kind)))
    return path


def tiny_config(out: Path, data: DataSpec, **changes) -> TrainConfig:
    settings = {"layers": 1, "hidden": 16, "embedding_dim": 8, "epochs": 8, "patience": 8,
                "batch_size": 32, "learning_rate": 0.02, "progress": False,
                "command": "logminer train (test)"}
    return TrainConfig(out=out, data=data, **{**settings, **changes})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> DataSpec:
    """300 normal request sessions plus 40 labelled early-ending ones (validation only)."""
    root = tmp_path_factory.mktemp("corpus")
    kinds = {i: "early_end" if i % 8 == 0 and i < 320 else "normal" for i in range(340)}
    log = write_logs(root / "train.log", kinds, seed=1)
    labels = root / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"req-{i},{'Anomaly' if k != 'normal' else 'Normal'}"
                                             "\n" for i, k in kinds.items()))
    return DataSpec(logs=(log,), labels=labels, session_key=SESSION_KEY, seed=3,
                    validation_fraction=0.3)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("models") / "requests"
    return train(tiny_config(out, corpus))


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_bundle_load_and_score_raw_logs(trained, tmp_path):
    bundle = load_bundle(trained.installed)
    assert bundle.card.name == "requests" and bundle.card.version == 1
    assert not set(trained.check.ops) & set(FORBIDDEN_OPS)
    assert trained.check.top1_agreement >= 0.97 and trained.check.window_max_diff <= 1e-3

    kinds = {1000 + i: ("normal", "early_end", "deadlock")[i % 3] if i < 30 else "normal"
             for i in range(90)}
    log = write_logs(tmp_path / "new.log", kinds, seed=9)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(
        f"req-{i},{'Normal' if k == 'normal' else 'Anomaly'}\n" for i, k in kinds.items()))
    report = evaluate(EvaluationConfig(model=trained.installed, logs=(log,), labels=labels))
    m = report.quantised
    assert m.tp + m.fn == 20 and m.fp + m.tn == 70
    assert m.recall == 1.0 and m.fpr <= 0.05
    assert report.float is not None and report.float.recall == 1.0
    assert report.baseline is not None
    assert any("agree with whole-session scoring on 90 of 90" in n for n in report.notes)


@pytest.mark.slow
def test_card_records_what_the_contract_asks(trained, corpus):
    path = trained.installed
    card = json.loads((path / "card.json").read_text())
    vocab = json.loads((path / "vocab.json").read_text())
    assert card["format"] == 1 and card["version"] == 1 and card["name"] == "requests"
    created = dt.datetime.fromisoformat(card["created"])
    assert created.utcoffset() == dt.timedelta(0)
    for name in ("model.tflite", "window.tflite", "vocab.json"):
        assert card["sha256"][name] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert card["architecture"] == {"type": "lstm", "layers": 1, "hidden": 16,
                                    "embedding_dim": 8, "vocab_size": vocab["vocab_size"],
                                    "quantization": "dynamic_range_int8"}
    templates = len(vocab["templates"])
    assert (vocab["unknown_key"], vocab["start_key"], vocab["end_key"], vocab["vocab_size"]) \
        == (0, templates + 1, templates + 2, templates + 3)
    assert all("<*>" in text or "<IPV4>" in text for text in vocab["templates"].values())
    scoring = card["scoring"]
    assert scoring["session_key"] == SESSION_KEY and scoring["window"] == 10
    assert scoring["g"] == card["validation"]["g"] == trained.g
    assert set(card["validation"]) == {"precision", "recall", "f1", "fpr", "roc_auc", "g"}
    training = card["training"]
    assert training["command"] == "logminer train (test)" and training["seed"] == 3
    log_entry = training["data"][0]
    assert log_entry["role"] == "logs" and log_entry["sessions"] == 340
    assert log_entry["sha256"] == hashlib.sha256(corpus.logs[0].read_bytes()).hexdigest()
    assert training["sessions"]["train"] + training["sessions"]["validation"] <= 340
    assert training["epochs"] == trained.fit.epochs
    assert sum(card["template_distribution"].values()) == pytest.approx(1.0, abs=1e-4)
    assert set(card["template_distribution"]) == set(vocab["templates"])


@pytest.mark.slow
def test_float_reference_is_the_keras_model():
    tf = pytest.importorskip("tensorflow")
    import keras

    from sidecar.scoring.training import _weights_of

    keras.utils.set_random_seed(0)
    keys = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(9, 4, name="embedding")(keys)
    x = keras.layers.LSTM(6, return_sequences=True, name="lstm0")(x)
    x = keras.layers.LSTM(6, return_sequences=True, name="lstm1")(x)
    model = keras.Model(keys, keras.layers.Dense(9, name="logits")(x))
    sequence = np.array([[7, 1, 2, 3, 0, 5, 5, 1]], np.int32)
    expected = model(tf.constant(sequence)).numpy()[0]
    reference = ReferenceModel(_weights_of(model, 2))
    state = reference.initial_state(1)
    for t, key in enumerate(sequence[0]):
        logits, state = reference.step(np.array([key]), state)
        np.testing.assert_allclose(logits[0], expected[t], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_is_deterministic_under_a_seed(trained, corpus, tmp_path):
    again = train(tiny_config(tmp_path / "requests", corpus))
    for name in ("model.tflite", "window.tflite", "vocab.json", "reference.npz"):
        assert (again.installed / name).read_bytes() == (trained.installed / name).read_bytes()
    assert again.fit.val_loss == trained.fit.val_loss and again.g == trained.g


# --------------------------------------------------------------------------- gate


@pytest.mark.slow
def test_gate_keeps_the_current_bundle_when_the_candidate_is_worse(trained, corpus, tmp_path):
    current = tmp_path / "requests"
    shutil.copytree(trained.installed, current)
    before = {p.name: p.read_bytes() for p in current.iterdir()}
    result = train(tiny_config(current, corpus, gate_f1=1.01, against=current, epochs=2))
    assert result.installed is None and not result.gate.passed
    assert any("F1" in reason for reason in result.gate.reasons)
    assert {p.name: p.read_bytes() for p in current.iterdir()} == before
    assert not list(tmp_path.glob(".requests.*"))  # no staging left behind


@pytest.mark.slow
def test_gate_installs_a_better_candidate_as_shadow_then_live(trained, corpus, tmp_path):
    current = tmp_path / "requests"
    shutil.copytree(trained.installed, current)
    shadow = train(tiny_config(current, corpus, gate_f1=0.5, against=current, shadow=True))
    assert shadow.gate.passed and shadow.installed == tmp_path / "requests-shadow"
    assert load_bundle(shadow.installed).card.version == 2
    assert load_bundle(current).card.version == 1
    live = train(tiny_config(current, corpus, gate_f1=0.5, against=current))
    assert live.installed == current and load_bundle(current).card.version == 3
    assert live.gate.current is not None  # compared with the bundle it replaced


def test_gate_without_labelled_anomalies_is_refused_before_training(corpus, tmp_path):
    data = DataSpec(logs=corpus.logs, session_key=SESSION_KEY, validation_fraction=0.3)
    with pytest.raises(DataError, match="needs labelled anomalous validation sessions"):
        train(tiny_config(tmp_path / "x", data, gate_f1=0.9))


def test_too_little_data_is_refused_before_training(tmp_path):
    log = write_logs(tmp_path / "small.log", {i: "normal" for i in range(5)}, seed=0)
    with pytest.raises(DataError, match="too little training data"):
        train(tiny_config(tmp_path / "x", DataSpec(logs=(log,), session_key=SESSION_KEY)))


# --------------------------------------------------------------------------- bundle check


def test_shipped_bundle_passes_its_check():
    check = check_bundle(SHIPPED)
    assert not set(check.ops) & set(FORBIDDEN_OPS)
    assert "FULLY_CONNECTED" in check.ops
    assert check.top1_agreement >= 0.97 and check.topg_agreement >= 0.99
    assert check.window_max_diff <= 1e-3


@pytest.mark.parametrize("name", ["reference.npz", "model.tflite"])
def test_check_refuses_a_tampered_bundle(tmp_path, name):
    copy = tmp_path / "hdfs"
    shutil.copytree(SHIPPED, copy)
    data = bytearray((copy / name).read_bytes())
    data[-100] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleCheckError, match="sha256"):
        check_bundle(copy)

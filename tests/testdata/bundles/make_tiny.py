"""Build the tiny test-fixture bundle ``tests/testdata/bundles/tiny/`` from real HDFS sessions.

Run with the training venv (TensorFlow is needed here only, never by the sidecar or its tests):

    /work/venv-train/bin/python tests/testdata/bundles/make_tiny.py

Strategy: train a small DeepLog-style LSTM for a few seconds on a few hundred normal sessions of
the DeepLog HDFS split (``start`` + the session's keys in, the next key or ``end`` out, at every
position), then copy the trained weights into two pure TensorFlow functions with the weights as
constants (so no variable ops reach the converter): the stateful single step and the classic
window (unrolled ``window`` steps; steps past the real length keep the state, so a ``[B, n]`` input
with n <= window is exactly the prefix fed from zero state). Both are converted with dynamic-range
int8 weights and written as a bundle that follows the bundle contract, with ``g`` chosen on a
validation split (held-out normal sessions and abnormal sessions) by F1. That validation split is
also written to ``hdfs_sample/`` (with its provenance and the Loghub licence notice) for the tests:
sessions the model never saw. The output is committed; re-running it trains a slightly different
model (and, with another --seed, draws another sample).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

DATA = Path("/work/shared/data/hdfs_deeplog_split")
HERE = Path(__file__).resolve().parent
SAMPLE_README = """# HDFS session sample (test data)

Key sequences of HDFS sessions (one session per line, DeepLog keys 1..28; key k = Loghub event Ek
except key 17 = E29), drawn by `make_tiny.py` (seed {seed}) as the validation split of the `tiny`
bundle - none of them was used to train it:

- `normal.txt`: {normal} sessions of `hdfs_deeplog_split/hdfs_train` held out from training;
- `abnormal.txt`: {abnormal} random sessions of `hdfs_deeplog_split/hdfs_test_abnormal`.

Source: the DeepLog HDFS split (wuyifan18/DeepLog, MIT) of the Loghub HDFS data set
(https://github.com/logpai/loghub; Zhu et al., "Loghub: A Large Collection of System Log Datasets
for AI-driven Log Analytics", ISSRE 2023). Loghub data is for research or academic use only; its
licence notice is in `LICENSE-LOGHUB.txt` and must stay with any copy.
"""
NUM_KEYS = 28  # DeepLog HDFS keys 1..28
START, END = NUM_KEYS + 1, NUM_KEYS + 2
VOCAB_SIZE = NUM_KEYS + 3  # 0 = unknown, 1..28, start, end


def read_sessions(path: Path) -> list[list[int]]:
    lines = path.read_text().splitlines()
    return [[int(k) for k in line.split()] for line in lines if line.split()]


def template_texts() -> dict[int, str]:
    """DeepLog key -> Loghub template text (key k = Ek, except key 17 = E29; see data README)."""
    with (DATA / "HDFS_templates.csv").open() as handle:
        by_event = {row["EventId"]: row["EventTemplate"] for row in csv.DictReader(handle)}
    return {k: by_event["E29" if k == 17 else f"E{k}"] for k in range(1, NUM_KEYS + 1)}


def train_model(sessions: list[list[int]], args: argparse.Namespace) -> tf.keras.Model:
    length = max(len(s) for s in sessions) + 1
    x = np.zeros((len(sessions), length), np.int32)
    y = np.zeros((len(sessions), length), np.int32)
    w = np.zeros((len(sessions), length), np.float32)
    for i, keys in enumerate(sessions):
        x[i, : len(keys) + 1] = [START, *keys]
        y[i, : len(keys) + 1] = [*keys, END]
        w[i, : len(keys) + 1] = 1.0
    layers = [tf.keras.Input((None,), dtype="int32"),
              tf.keras.layers.Embedding(VOCAB_SIZE, args.embedding)]
    layers += [tf.keras.layers.LSTM(args.hidden, return_sequences=True) for _ in range(args.layers)]
    layers.append(tf.keras.layers.Dense(VOCAB_SIZE))
    model = tf.keras.Sequential(layers)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, sample_weight=w, batch_size=32, epochs=args.epochs, verbose=0)
    return model


def export_functions(model: tf.keras.Model, window: int):
    """The step and window functions with the trained weights baked in as constants."""
    emb = model.layers[0].get_weights()[0]
    cells = [layer.get_weights() for layer in model.layers[1:-1]]
    dense_w, dense_b = model.layers[-1].get_weights()
    hidden = cells[0][1].shape[0]

    def cell(x, h, c, weights):
        kernel, recurrent, bias = weights
        i, f, g, o = tf.split(tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        return tf.sigmoid(o) * tf.tanh(c), c

    step_spec = {"key": tf.TensorSpec([None], tf.int32, name="key")}
    for layer in range(len(cells)):
        for part in "hc":
            step_spec[f"{part}{layer}"] = tf.TensorSpec([None, hidden], tf.float32,
                                                        name=f"{part}{layer}")

    @tf.function(input_signature=[step_spec])
    def step(inputs):
        x, out = tf.gather(emb, inputs["key"]), {}
        for layer, weights in enumerate(cells):
            x, c = cell(x, inputs[f"h{layer}"], inputs[f"c{layer}"], weights)
            out[f"h{layer}_out"], out[f"c{layer}_out"] = x, c
        out["logits"] = tf.matmul(x, dense_w) + dense_b
        return out

    @tf.function(input_signature=[{"keys": tf.TensorSpec([None, None], tf.int32, name="keys")}])
    def windowed(inputs):
        keys = inputs["keys"]
        n, batch = tf.shape(keys)[1], tf.shape(keys)[0]
        hs = [tf.zeros([batch, hidden]) for _ in cells]
        cs = [tf.zeros([batch, hidden]) for _ in cells]
        for t in range(window):
            x, real = tf.gather(emb, tf.gather(keys, tf.minimum(t, n - 1), axis=1)), t < n
            for layer, weights in enumerate(cells):
                h, c = cell(x, hs[layer], cs[layer], weights)
                hs[layer], cs[layer] = tf.where(real, h, hs[layer]), tf.where(real, c, cs[layer])
                x = hs[layer]
        return {"logits": tf.matmul(hs[-1], dense_w) + dense_b}

    return step, windowed


def convert(function, workdir: Path) -> bytes:
    saved = workdir / function.__name__
    tf.saved_model.save(tf.Module(), str(saved),
                        signatures={"serving_default": function.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8 weights
    return converter.convert()


def check_transfer(model: tf.keras.Model, step, session: list[int], layers: int) -> None:
    """The step function fed key by key reproduces the trained Keras model."""
    expected = model(np.array([[START, *session]], np.int32)).numpy()[0]
    hidden = model.layers[1].units
    state = {f"{p}{layer}": tf.zeros([1, hidden]) for layer in range(layers) for p in "hc"}
    for t, key in enumerate([START, *session]):
        out = step({"key": tf.constant([key]), **state})
        state = {name: out[f"{name}_out"] for name in state}
        np.testing.assert_allclose(out["logits"].numpy()[0], expected[t], atol=1e-4)


def max_ranks(model_bytes: bytes, sessions: list[list[int]], layers: int, hidden: int):
    """Per session: the worst rank of an actual next key (incl. end) and the worst surprise."""
    interpreter = tf.lite.Interpreter(model_content=model_bytes)
    run = interpreter.get_signature_runner()
    n = len(sessions)
    state = {f"{p}{layer}": np.zeros((n, hidden), np.float32)
             for layer in range(layers) for p in "hc"}
    longest = max(len(s) for s in sessions) + 1
    padded = np.zeros((n, longest), np.int32)
    for i, keys in enumerate(sessions):
        padded[i, : len(keys) + 1] = [*keys, END]
    worst_rank, worst_surprise = np.zeros(n, np.int64), np.zeros(n)
    keys_in = np.full(n, START, np.int32)
    for t in range(longest):
        out = run(key=keys_in, **state)
        state = {name: out[f"{name}_out"] for name in state}
        logits = out["logits"]
        live = np.array([t <= len(s) for s in sessions])
        target = padded[:, t]
        chosen = logits[np.arange(n), target]
        rank = (logits > chosen[:, None]).sum(axis=1)
        rank[target == 0] = VOCAB_SIZE
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        worst_rank = np.where(live, np.maximum(worst_rank, rank), worst_rank)
        worst_surprise = np.where(live, np.maximum(worst_surprise, log_z - chosen), worst_surprise)
        keys_in = target
    return worst_rank, worst_surprise


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def validate(model_bytes: bytes, normal, abnormal, args: argparse.Namespace) -> dict:
    rank, surprise = max_ranks(model_bytes, normal + abnormal, args.layers, args.hidden)
    labels = np.array([False] * len(normal) + [True] * len(abnormal))
    best = None
    for g in range(1, 16):
        flagged = rank >= g
        tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
        fn = int((~flagged & labels).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if best is None or f1 > best["f1"]:
            best = {"precision": round(precision, 4), "recall": round(recall, 4),
                    "f1": round(f1, 4), "fpr": round(fp / len(normal), 4), "g": g}
    best["roc_auc"] = round(roc_auc(surprise, labels), 4)
    best["normal_sessions"], best["abnormal_sessions"] = len(normal), len(abnormal)
    return best


def write_sample(path: Path, normal, abnormal, seed: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, sessions in (("normal.txt", normal), ("abnormal.txt", abnormal)):
        (path / name).write_text("".join(" ".join(map(str, s)) + "\n" for s in sessions))
    (path / "LICENSE-LOGHUB.txt").write_bytes((DATA.parent / "LICENSE-LOGHUB.txt").read_bytes())
    (path / "README.md").write_text(SAMPLE_README.format(seed=seed, normal=len(normal),
                                                         abnormal=len(abnormal)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tiny")
    parser.add_argument("--sample", type=Path, default=HERE / "hdfs_sample",
                        help="where to write the validation sessions")
    parser.add_argument("--no-sample", action="store_true", help="do not write them")
    parser.add_argument("--sessions", type=int, default=400, help="training sessions")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--embedding", type=int, default=16)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    normal = read_sessions(DATA / "hdfs_train")
    rng.shuffle(normal)
    train, held_out = normal[: args.sessions], normal[args.sessions : args.sessions + 300]
    abnormal = read_sessions(DATA / "hdfs_test_abnormal")
    abnormal = [abnormal[i] for i in rng.choice(len(abnormal), 300, replace=False)]

    model = train_model(train, args)
    step, windowed = export_functions(model, args.window)
    check_transfer(model, step, train[0], args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"model.tflite": convert(step, Path(tmp)),
                 "window.tflite": convert(windowed, Path(tmp))}
    validation = validate(files["model.tflite"], held_out, abnormal, args)

    templates = template_texts()
    files["vocab.json"] = (json.dumps(
        {"format": 1, "templates": {str(k): v for k, v in templates.items()}, "unknown_key": 0,
         "start_key": START, "end_key": END, "vocab_size": VOCAB_SIZE}, indent=1) + "\n").encode()
    counts = np.bincount([k for s in train for k in s], minlength=VOCAB_SIZE)
    card = {
        "format": 1,
        "name": "tiny",
        "version": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "architecture": {"type": "lstm", "layers": args.layers, "hidden": args.hidden,
                         "embedding_dim": args.embedding, "vocab_size": VOCAB_SIZE,
                         "quantization": "dynamic_range_int8"},
        "scoring": {"g": validation["g"], "window": args.window, "session_key": r"regex:blk_-?\d+",
                    "idle_timeout_seconds": 30.0, "end_marker": None},
        "training": {
            "purpose": "test fixture: tiny, trained for seconds; not for production",
            "data": "Loghub HDFS, DeepLog split (hdfs_deeplog_split/hdfs_train), normal sessions; "
                    "Loghub data is for research use (https://github.com/logpai/loghub)",
            "sessions": len(train), "records": int(counts.sum()), "epochs": args.epochs,
            "seed": args.seed, "script": "tests/testdata/bundles/make_tiny.py",
            "validation_data": "300 held-out hdfs_train sessions + 300 hdfs_test_abnormal sessions",
        },
        "template_distribution": {str(k): round(float(counts[k] / counts.sum()), 6)
                                  for k in range(1, NUM_KEYS + 1) if counts[k]},
        "validation": validation,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    (args.out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    if not args.no_sample:
        write_sample(args.sample, held_out, abnormal, args.seed)
    print(json.dumps(validation))


if __name__ == "__main__":
    main()

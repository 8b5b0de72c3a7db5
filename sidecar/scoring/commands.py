"""``logminer train`` and ``logminer evaluate``: options -> TrainConfig / EvaluationConfig.

Each option maps to one field of the configs in ``training`` and ``evaluation``;
this module only declares the options and builds the configs, so the CLI stays a
list of subcommands. TensorFlow is imported by ``training`` on first use, so
``evaluate`` and the sidecar never need it.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from sidecar.redact.settings import RedactionSettings
from sidecar.scoring.datasets import DataSpec, SessionSource, parse_key_map
from sidecar.scoring.evaluation import EvaluationConfig, EvaluationReport, evaluate
from sidecar.scoring.training import TrainConfig, TrainResult, train
from sidecar.templates.miner import MinerSettings

SESSION_HELP = ("session file(s): one session per line, space-separated keys; PATH?column=value "
                "selects rows of a CSV")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (raw logs, or key sequences)")
    data.add_argument("--input", nargs="+", type=Path, default=(), metavar="LOG",
                      help="raw or JSON-lines logs, redacted and mined as the sidecar does")
    data.add_argument("--labels", type=Path, help="anomaly_label.csv for --input sessions")
    data.add_argument("--sessions", nargs="+", default=(), metavar="FILE", help=SESSION_HELP)
    data.add_argument("--templates", type=Path, help="CSV EventId,EventTemplate for the keys")
    data.add_argument("--key-map", nargs="+", default=(), metavar="KEY=EVENT",
                      help="keys whose event id differs, e.g. 17=E29")
    data.add_argument("--validation-abnormal", nargs="+", default=(), metavar="FILE",
                      help="anomalous sessions; only their validation share is used (recall)")
    data.add_argument("--session-key", default="stream",
                      help="regex:<RE2 pattern> | attr:<name> | stream (default stream)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--validation-fraction", type=float, default=0.1)
    data.add_argument("--test-fraction", type=float, default=0.0)
    model = parser.add_argument_group("model and bundle")
    model.add_argument("--out", type=Path, required=True, help="bundle directory, models/NAME")
    model.add_argument("--name", help="bundle name (default: the directory name)")
    model.add_argument("--idle-timeout", type=float, default=3600.0, metavar="SECONDS")
    model.add_argument("--end-marker", help="RE2 pattern marking a session's last record")
    model.add_argument("--g", type=int, help="top-g (default: chosen on validation)")
    model.add_argument("--max-fpr", type=float, default=0.01,
                       help="false-positive rate g is chosen for (default 0.01)")
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--hidden", type=int, default=128)
    model.add_argument("--embedding-dim", type=int, default=32)
    model.add_argument("--epochs", type=int, default=150)
    gate = parser.add_argument_group("retraining gate")
    gate.add_argument("--gate-f1", type=float, help="refuse a candidate below this F1")
    gate.add_argument("--gate-auc", type=float, help="refuse a candidate below this ROC AUC")
    gate.add_argument("--against", type=Path, help="the current bundle to beat")
    gate.add_argument("--shadow", action="store_true",
                      help="install into <bundle>-shadow (for scoring.shadow_dir) instead")


def add_evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="bundle directory")
    parser.add_argument("--logs", nargs="+", type=Path, default=(), metavar="LOG",
                        help="raw labelled logs (with --labels)")
    parser.add_argument("--labels", type=Path, help="anomaly_label.csv: session id, label")
    parser.add_argument("--session-key", help="default: the bundle card's")
    parser.add_argument("--normal", nargs="+", default=(), metavar="FILE", help=SESSION_HELP)
    parser.add_argument("--abnormal", nargs="+", default=(), metavar="FILE", help=SESSION_HELP)
    parser.add_argument("--templates", type=Path, help="CSV EventId,EventTemplate for the keys")
    parser.add_argument("--key-map", nargs="+", default=(), metavar="KEY=EVENT")
    parser.add_argument("--g", type=int, help="top-g (default: the card's)")
    parser.add_argument("--max-g", type=int, default=20, help="precision/recall over g up to this")
    parser.add_argument("--include-seen", action="store_true",
                        help="keep sessions the bundle was trained or validated on")
    parser.add_argument("--json", type=Path, dest="json_path", help="write results as JSON")
    parser.add_argument("--plot", type=Path, dest="plot_path", help="write a PNG (matplotlib)")


def _sources(items: Sequence[str]) -> tuple[SessionSource, ...]:
    return tuple(SessionSource.parse(item) for item in items)


def run_train(args: argparse.Namespace, argv: Sequence[str], redaction: RedactionSettings,
              miner: MinerSettings, hash_secret: bytes | None) -> TrainResult:
    data = DataSpec(
        sessions=_sources(args.sessions), templates=args.templates,
        key_map=parse_key_map(args.key_map), validation_abnormal=_sources(
            args.validation_abnormal), logs=tuple(args.input), labels=args.labels,
        session_key=args.session_key, seed=args.seed,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        redaction=redaction, miner=miner, hash_secret=hash_secret)
    return train(TrainConfig(
        out=args.out, data=data, name=args.name, idle_timeout_seconds=args.idle_timeout,
        end_marker=args.end_marker, g=args.g, max_fpr=args.max_fpr, layers=args.layers,
        hidden=args.hidden, embedding_dim=args.embedding_dim, epochs=args.epochs,
        gate_f1=args.gate_f1, gate_auc=args.gate_auc, against=args.against,
        shadow=args.shadow, command=shlex.join(["logminer", *argv])))


def run_evaluate(args: argparse.Namespace, redaction: RedactionSettings, miner: MinerSettings,
                 hash_secret: bytes | None) -> EvaluationReport:
    return evaluate(EvaluationConfig(
        model=args.model, logs=tuple(args.logs), labels=args.labels,
        session_key=args.session_key, normal=_sources(args.normal),
        abnormal=_sources(args.abnormal), templates=args.templates,
        key_map=parse_key_map(args.key_map), g=args.g, exclude_seen=not args.include_seen,
        max_g=args.max_g, json_path=args.json_path, plot_path=args.plot_path,
        redaction=redaction, miner=miner, hash_secret=hash_secret))

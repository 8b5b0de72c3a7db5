"""The ``logminer`` command line.

Each subcommand is one small function that parses nothing itself: argparse
does that, ``config`` validates, ``app`` runs. Errors a user can fix (bad
config, port in use, missing secret) print one clear line to stderr and exit
with status 2; the sidecar's own logs go to stderr, records to the exporters.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import __version__, config, defaults
from sidecar.redact.store import TokenStoreError

EXIT_USAGE = 2


def _setup_logging(settings: config.LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        class JsonFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                                   "logger": record.name, "message": record.getMessage()})
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())


def _load_config(path: str | None) -> config.Config:
    return config.Config() if path is None else config.load(path)


def _prepare(args: argparse.Namespace) -> tuple[config.Config, config.Secrets]:
    """The subcommand's config (``--config`` or defaults) and secrets; logging set up."""
    cfg = _load_config(args.config)
    _setup_logging(cfg.logging)
    return cfg, config.load_secrets(os.environ)


def cmd_serve(args: argparse.Namespace) -> int:
    from sidecar.app import App

    cfg = _load_config(args.config)
    if args.outputs:
        cfg = dataclasses.replace(
            cfg, exporters=tuple(config.exporter_from_url(url) for url in args.outputs))
    if args.data_dir:
        cfg = dataclasses.replace(cfg, data_dir=args.data_dir)
    secrets = config.load_secrets(os.environ)
    _setup_logging(cfg.logging)
    app = App(cfg, secrets)
    lost = asyncio.run(app.run_until_signal())
    return 1 if lost else 0


def _require(value: bytes | None, name: str) -> bytes:
    if not value:
        raise ValueError(f"{name} is not set (or {name}_FILE)")
    return value


def _store_path(cfg: config.Config, given: str | None) -> Path:
    return Path(given or cfg.token_store.path or Path(cfg.data_dir) / "tokens")


def cmd_redact(args: argparse.Namespace) -> int:
    from sidecar.redact import commands

    cfg, secrets = _prepare(args)
    secret = _require(secrets.hash_secret, defaults.HASH_SECRET_ENV)
    counts = commands.redact_stream(cfg.redaction, secret, sys.stdin.buffer, sys.stdout,
                                    jsonl=args.jsonl, flush_each=sys.stdin.isatty())
    if args.stats:
        print(commands.format_stats(counts), file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from sidecar.redact import commands

    cfg = _load_config(args.config)
    return 0 if commands.audit(cfg.redaction, args.lines, args.seed, sys.stdout) else 1


def cmd_reveal(args: argparse.Namespace) -> int:
    from sidecar.redact import commands

    cfg, secrets = _prepare(args)
    key = _require(secrets.token_store_key, defaults.TOKEN_STORE_KEY_ENV)
    missing = commands.reveal(_store_path(cfg, args.store), key, args.tokens, sys.stdout)
    return 1 if missing else 0


def cmd_tokens_rotate(args: argparse.Namespace) -> int:
    from sidecar.redact import commands

    cfg, secrets = _prepare(args)
    key = _require(secrets.token_store_key, defaults.TOKEN_STORE_KEY_ENV)
    commands.rotate_store(_store_path(cfg, args.store), key, Path(args.new_key_file), sys.stdout)
    return 0


def cmd_tokens_generate_key(args: argparse.Namespace) -> int:
    from sidecar.redact import commands

    commands.new_key(sys.stdout)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sidecar.scoring import commands

    cfg, secrets = _prepare(args)
    result = commands.run_train(args, sys.argv[1:], cfg.redaction, cfg.templates.miner,
                                secrets.hash_secret)
    print(result.table())
    return 0 if result.installed is not None else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sidecar.scoring import commands

    cfg, secrets = _prepare(args)
    report = commands.run_evaluate(args, cfg.redaction, cfg.templates.miner, secrets.hash_secret)
    print(report.table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sidecar.demo import run

    return run.main(args)


def cmd_report(args: argparse.Namespace) -> int:
    from sidecar.aggregates import AGGREGATES_FILE, AggregateCounts, Breakdown
    from sidecar.privacy import (
        PrivacyAccountant,
        ReportDenied,
        Reporter,
        ReportQuery,
        render_table,
    )

    cfg, _ = _prepare(args)
    data_dir = Path(args.data_dir or cfg.data_dir)
    counts = AggregateCounts.read(data_dir / AGGREGATES_FILE, cfg.privacy.aggregates)
    reporter = Reporter(cfg.privacy, counts,
                        PrivacyAccountant.from_settings(data_dir, cfg.privacy))
    query = ReportQuery(consumer=args.consumer, since=args.since, until=args.until,
                        group_by=frozenset(Breakdown(b) for b in args.group_by),
                        exact=args.exact)
    try:
        report = reporter.report(query)
    except ReportDenied as exc:
        print(f"denied: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_table(report))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from sidecar import top

    return top.run(args.url, args.interval, once=args.once, out=sys.stdout)


def cmd_scenarios(args: argparse.Namespace) -> int:
    from sidecar.scenarios import commands

    cfg, secrets = _prepare(args)
    report = commands.run_scenarios(args, cfg.redaction, cfg.templates.miner, secrets.hash_secret)
    print(report.table())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config.load(args.file)
    print(f"{args.file}: ok")
    return 0


def cmd_config_default(args: argparse.Namespace) -> int:
    sys.stdout.write(config.render_default())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logminer",
        description="LogMiner Sidecar: redact, template, score and forward log records.")
    parser.add_argument("--version", action="version", version=f"logminer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the sidecar",
        description="Listen on the configured receivers and export processed records. "
                    "Without --config, uses the defaults (see `logminer config default`).")
    serve.add_argument("--config", metavar="FILE", help="YAML config file")
    serve.add_argument(
        "-o", "--output", dest="outputs", action="append", metavar="URL",
        help="an exporter, replacing the config's list (repeatable): stdout://, "
             "file:///PATH, forward://HOST:PORT, forward+tls://HOST:PORT; query parameters "
             "set other fields, e.g. forward://agg:24225?compress=false")
    serve.add_argument("--data-dir", metavar="DIR",
                       help=f"where spool, template table, token store and privacy ledger "
                            f"live (default {defaults.DATA_DIR})")
    serve.set_defaults(func=cmd_serve)

    config_option = {"metavar": "FILE", "help": "YAML config file (default: built-in defaults)"}

    demo = commands.add_parser(
        "demo", help="run the whole product on bundled sample data",
        description="Start the sidecar (shipped models/hdfs bundle, ephemeral hash secret) and a "
                    "local downstream receiver, replay bundled HDFS and bank logs through the "
                    "forward protocol with fluent-logger, print a summary and write an HTML "
                    "report. Exit 0 only if every planted value was redacted and every record "
                    "arrived.")
    demo.add_argument("--report", default="demo-report.html", metavar="PATH",
                      help="HTML report path (default demo-report.html)")
    demo.add_argument("--bank-lines", type=int, default=500, metavar="N",
                      help="synthetic bank lines with planted personal data (default 500)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the bank lines")
    demo.add_argument("--keep-running", action="store_true",
                      help="leave the sidecar up after the replay, ports printed")
    demo.set_defaults(func=cmd_demo)

    redact = commands.add_parser(
        "redact", help="redact stdin to stdout",
        description="Read lines on stdin, write sanitized lines on stdout (same order, one out "
                    f"per line in). Needs {defaults.HASH_SECRET_ENV}.")
    redact.add_argument("--config", **config_option)
    redact.add_argument("--jsonl", action="store_true",
                        help="each line is a JSON record, scanned field by field")
    redact.add_argument("--stats", action="store_true",
                        help="print counts per detector on stderr at the end")
    redact.set_defaults(func=cmd_redact)

    audit = commands.add_parser(
        "audit", help="measure redaction on a synthetic corpus",
        description="Generate a seeded corpus with planted values of every type and decoys that "
                    "must survive, redact it, and report recall per type, false positives per "
                    "decoy kind and lines/s. Exit 1 if any planted value survives.")
    audit.add_argument("--config", **config_option)
    audit.add_argument("--lines", type=int, default=20_000, help="corpus size (default 20000)")
    audit.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    audit.set_defaults(func=cmd_audit)

    reveal = commands.add_parser(
        "reveal", help="re-identify tokens (authorised use only)",
        description="Print the original behind each token from the encrypted token store. "
                    f"Needs {defaults.TOKEN_STORE_KEY_ENV}. Exit 1 if a token is not found.")
    reveal.add_argument("tokens", nargs="+", metavar="TOKEN", help="e.g. '<EMAIL:1a2b:...>'")
    reveal.add_argument("--config", **config_option)
    reveal.add_argument("--store", metavar="PATH", help="token store file (default: from config)")
    reveal.set_defaults(func=cmd_reveal)

    tokens = commands.add_parser("tokens", help="manage the token store key",
                                 description="Generate a token store key or rotate the store "
                                             "to a new one.")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    gen = token_commands.add_parser("generate-key", help="print a new random key (base64)",
                                    description="Print a new 32-byte key, base64-encoded.")
    gen.set_defaults(func=cmd_tokens_generate_key)
    rot = token_commands.add_parser(
        "rotate", help="re-encrypt the store under a new key",
        description=f"Re-encrypt every record under the key in NEW_KEY_FILE (old key from "
                    f"{defaults.TOKEN_STORE_KEY_ENV}); atomic; stop the sidecar first.")
    rot.add_argument("--new-key-file", required=True, metavar="NEW_KEY_FILE")
    rot.add_argument("--config", **config_option)
    rot.add_argument("--store", metavar="PATH", help="token store file (default: from config)")
    rot.set_defaults(func=cmd_tokens_rotate)

    from sidecar.scoring import commands as scoring_commands

    train = commands.add_parser(
        "train", help="train a model bundle (needs the train extra: TensorFlow)",
        description="Train the LSTM on whole normal sessions (start and end tokens), convert it "
                    "to the stateful single-step TFLite model (dynamic-range int8), check it "
                    "with the LiteRT runtime alone and install the bundle with its card.")
    train.add_argument("--config", **config_option)
    scoring_commands.add_train_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="measure a bundle on labelled sessions",
        description="Score labelled raw logs (through redaction, mining, sessions and scoring, "
                    "as live) or key sequences; report the quantised model, its float "
                    "reference and an n-gram baseline.")
    evaluate.add_argument("--config", **config_option)
    scoring_commands.add_evaluate_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    from sidecar.scenarios import commands as scenario_commands

    scenarios = commands.add_parser(
        "scenarios", help="QA scenarios (Gherkin) from production flows",
        description="Mine the common flows of sanitized sessions and the anomalous flows the "
                    "bundle flags, and write them as Gherkin features (one per input file name) "
                    "with a pytest-bdd skeleton. Raw logs need "
                    f"{defaults.HASH_SECRET_ENV}.")
    scenarios.add_argument("--config", **config_option)
    scenario_commands.add_options(scenarios)
    scenarios.set_defaults(func=cmd_scenarios)

    report = commands.add_parser(
        "report", help="print a differentially private aggregate report",
        description="Counts of records, anomalies, redactions per detector and records per "
                    "template from DATA_DIR/aggregates.json, with discrete Laplace or Gaussian "
                    "noise; each report charges CONSUMER's privacy budget in "
                    "DATA_DIR/privacy-ledger.json (shared with the running sidecar). Exit 1 "
                    "if the budget or config refuses the report.")
    report.add_argument("--consumer", required=True, help="whose budget pays")
    report.add_argument("--since", type=int, metavar="UNIX_SECONDS",
                        help="start (default: the oldest retained hour)")
    report.add_argument("--until", type=int, metavar="UNIX_SECONDS", help="end (default: now)")
    report.add_argument("--group-by", action="append", default=[],
                        choices=["hour", "template", "detector"], help="repeatable")
    report.add_argument("--exact", action="store_true",
                        help="exact counts, no noise (only if privacy.allow_exact_reports)")
    report.add_argument("--json", action="store_true", help="JSON instead of a table")
    report.add_argument("--config", **config_option)
    report.add_argument("--data-dir", metavar="DIR", help="default: data_dir from the config")
    report.set_defaults(func=cmd_report)

    from sidecar import top

    top_parser = commands.add_parser(
        "top", help="live view of a running sidecar",
        description="Poll a sidecar's /metrics and show throughput, anomalies, redactions, "
                    "queue, spool, sessions and drift, redrawn every interval (Ctrl-C quits).")
    top.add_arguments(top_parser)
    top_parser.set_defaults(func=cmd_top)

    cfg = commands.add_parser("config", help="check or print configuration",
                              description="Validate a config file or print the default one.")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_commands.add_parser("check", help="validate a config file",
                                    description="Validate FILE; print every problem with its "
                                                "key path and exit 2 if there are any.")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_config_check)
    default = cfg_commands.add_parser("default", help="print the commented default config",
                                      description="Print the full default config, every key "
                                                  "documented.")
    default.set_defaults(func=cmd_config_default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, ImportError, TokenStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""``logminer scenarios``: options -> ScenariosConfig.

Each option maps to one field of `ScenariosConfig` (or of its `FlowSettings`); this
module only declares the options and builds the config, so the CLI stays a list of
subcommands.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from sidecar.redact.settings import RedactionSettings
from sidecar.scenarios.flows import FlowSettings
from sidecar.scenarios.generate import ScenariosConfig, ScenariosReport, generate
from sidecar.scoring.commands import SESSION_HELP
from sidecar.scoring.datasets import SessionSource, parse_key_map
from sidecar.templates.miner import MinerSettings


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="bundle directory, models/NAME")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--logs", nargs="+", type=Path, default=(), metavar="LOG",
                      help="raw or JSON-lines logs, redacted and mined as live traffic; one "
                           "feature per file name")
    data.add_argument("--sessions", nargs="+", default=(), metavar="FILE",
                      help=SESSION_HELP + "; one feature per file")
    parser.add_argument("--templates", type=Path, help="CSV EventId,EventTemplate for the keys")
    parser.add_argument("--key-map", nargs="+", default=(), metavar="KEY=EVENT",
                        help="keys whose event id differs, e.g. 17=E29")
    parser.add_argument("--session-key", help="for --logs: regex:<RE2 pattern> | attr:<name> | "
                                              "stream (default: the bundle card's)")
    parser.add_argument("--g", type=int, help="top-g (default: the card's)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--format", choices=("gherkin", "json"), default="gherkin",
                        help="gherkin (default): .feature files and a pytest-bdd skeleton; "
                             "json: also the same flows as <feature>.json")
    defaults = FlowSettings()
    parser.add_argument("--coverage", type=float, default=defaults.coverage,
                        help="share of normal sessions the common flows should cover "
                             f"(default {defaults.coverage})")
    parser.add_argument("--min-support", type=int, default=defaults.min_support, metavar="N",
                        help="sessions a common flow needs (default "
                             f"{defaults.min_support})")
    parser.add_argument("--max-scenarios", type=int, default=defaults.max_scenarios,
                        metavar="N", help="common and anomalous scenarios per feature, each "
                                          f"(default {defaults.max_scenarios})")
    parser.add_argument("--max-examples", type=int, default=defaults.max_examples,
                        metavar="N", help="example rows per scenario outline (default "
                                          f"{defaults.max_examples})")
    parser.add_argument("--date", type=datetime.date.fromisoformat,
                        help="generation date the features state, YYYY-MM-DD (default today, "
                             "UTC), for reproducible output")


def run_scenarios(args: argparse.Namespace, redaction: RedactionSettings, miner: MinerSettings,
                  hash_secret: bytes | None) -> ScenariosReport:
    flows = FlowSettings(coverage=args.coverage, min_support=args.min_support,
                         max_scenarios=args.max_scenarios, max_examples=args.max_examples)
    config = ScenariosConfig(
        model=args.model, out=args.out, logs=tuple(args.logs),
        sessions=tuple(SessionSource.parse(item) for item in args.sessions),
        templates=args.templates, key_map=parse_key_map(args.key_map),
        session_key=args.session_key, g=args.g, json=args.format == "json", flows=flows,
        date=args.date, redaction=redaction, miner=miner, hash_secret=hash_secret)
    return generate(config)

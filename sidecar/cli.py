"""The ``logminer`` command line.

Each subcommand is one small function that parses nothing itself: argparse
does that, ``config`` validates, ``app`` runs. Errors a user can fix (bad
config, port in use, missing secret) print one clear line to stderr and exit
with status 2; the sidecar's own logs go to stderr, records to the exporters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from sidecar import __version__, config

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


def cmd_serve(args: argparse.Namespace) -> int:
    from sidecar.app import App

    cfg = _load_config(args.config)
    secrets = config.load_secrets(os.environ)
    _setup_logging(cfg.logging)
    app = App(cfg, secrets)
    lost = asyncio.run(app.run_until_signal())
    return 1 if lost else 0


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
    serve.set_defaults(func=cmd_serve)

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
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

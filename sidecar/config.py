"""One YAML file -> frozen, typed dataclasses; secrets from the environment.

Strategy: each component declares its settings as a frozen dataclass next to
its code (every field has a default, a one-line ``doc`` and, for numbers,
``min``/``max`` bounds in the field metadata). ``Config`` nests them, and one
small type-directed converter walks the YAML tree against those type hints,
collecting every error with its key path
(``pipeline.batch.max_records: expected int >= 1, got "ten"``). Unknown keys
are errors, not warnings. ``render_default`` walks the same dataclasses to
print the fully commented default config, so docs and code cannot drift.
Secrets are never read from YAML: ``load_secrets`` takes ``NAME`` or
``NAME_FILE`` from an environment mapping that the CLI passes in.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sidecar import defaults
from sidecar.exporters.forward import ForwardExporterSettings
from sidecar.exporters.jsonl import FileExporterSettings, StdoutExporterSettings
from sidecar.exporters.siem import SiemExporterSettings
from sidecar.exporters.webhook import WebhookExporterSettings
from sidecar.pipeline import PipelineSettings
from sidecar.privacy import PrivacySettings
from sidecar.receivers.forward import ForwardSettings
from sidecar.receivers.grpc_service import GrpcSettings
from sidecar.receivers.lumberjack import LumberjackSettings
from sidecar.receivers.otlp import OtlpSettings
from sidecar.redact.settings import RedactionSettings
from sidecar.redact.store import TokenStoreSettings
from sidecar.scoring.scorer import ScoringSettings
from sidecar.spool import SpoolSettings
from sidecar.stages import TemplateTableSettings


class ConfigError(ValueError):
    """A config file that cannot be used; ``errors`` lists ``path: problem`` lines."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


ExporterSettings = (StdoutExporterSettings | FileExporterSettings | ForwardExporterSettings
                    | SiemExporterSettings | WebhookExporterSettings)


@dataclass(frozen=True)
class ReceiversSettings:
    forward: ForwardSettings = field(
        default_factory=ForwardSettings,
        metadata={"doc": "Fluentd forward protocol (Fluentd, Fluent Bit)."})
    otlp: OtlpSettings = field(
        default_factory=OtlpSettings,
        metadata={"doc": "OTLP/gRPC logs (OpenTelemetry Collector, Fluent Bit, Fluentd)."})
    grpc: GrpcSettings = field(
        default_factory=GrpcSettings, metadata={"doc": "The logminer.v1 gRPC service."})
    lumberjack: LumberjackSettings = field(
        default_factory=LumberjackSettings,
        metadata={"doc": "Lumberjack v2 (Filebeat output.logstash)."})


@dataclass(frozen=True)
class HttpSettings:
    host: str = field(default=defaults.LISTEN_HOST, metadata={"doc": "Address for /metrics, "
                                                                     "/health, /ready."})
    port: int = field(default=defaults.HTTP_PORT, metadata={"doc": "Port (0 = any free port).",
                                                             "min": 0, "max": 65535})
    enabled: bool = field(default=True, metadata={"doc": "Serve the HTTP endpoints."})


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata={"doc": "The sidecar's own log level (logs go to stderr)."})
    format: Literal["text", "json"] = field(
        default="text", metadata={"doc": "Log line format."})


@dataclass(frozen=True)
class Config:
    data_dir: str = field(
        default=defaults.DATA_DIR,
        metadata={"doc": "Everything the sidecar keeps on disk (spool, templates, token store, "
                         "privacy ledger) lives under this directory."})
    receivers: ReceiversSettings = field(
        default_factory=ReceiversSettings, metadata={"doc": "Where records come in."})
    pipeline: PipelineSettings = field(
        default_factory=PipelineSettings, metadata={"doc": "Queueing, batching, shutdown."})
    redaction: RedactionSettings = field(
        default_factory=RedactionSettings,
        metadata={"doc": "What is personal data or a secret, and how it is replaced."})
    token_store: TokenStoreSettings = field(
        default_factory=TokenStoreSettings,
        metadata={"doc": "Optional encrypted token -> original store (off by default)."})
    templates: TemplateTableSettings = field(
        default_factory=TemplateTableSettings,
        metadata={"doc": "Template mining over sanitized bodies (table in data_dir)."})
    scoring: ScoringSettings = field(
        default_factory=ScoringSettings,
        metadata={"doc": "Sessions and the LSTM model bundle."})
    spool: SpoolSettings = field(
        default_factory=SpoolSettings,
        metadata={"doc": "The durable queue of sanitized records (under data_dir/spool)."})
    exporters: tuple[ExporterSettings, ...] = field(
        default=(StdoutExporterSettings(),),
        metadata={"doc": "Where sanitized records go (each entry has a `type`)."})
    privacy: PrivacySettings = field(
        default_factory=PrivacySettings,
        metadata={"doc": "Differentially private aggregate reports: noise, per-consumer "
                         "budgets (data_dir/privacy-ledger.json), the hourly counts behind them."})
    http: HttpSettings = field(
        default_factory=HttpSettings, metadata={"doc": "Metrics and health endpoints."})
    logging: LoggingSettings = field(
        default_factory=LoggingSettings, metadata={"doc": "The sidecar's own logs."})


# --------------------------------------------------------------------------- loading


def load(path: str | Path) -> Config:
    """Read and validate a config file; ConfigError lists every problem found."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    return loads(text)


def loads(text: str) -> Config:
    """Validate YAML text; an empty document gives the defaults."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"<config>: not valid YAML{where}"]) from None
    return from_mapping({} if data is None else data)


def from_mapping(data: Any) -> Config:
    """Convert an already-parsed mapping into a Config."""
    errors: list[str] = []
    config = _convert(data, Config, "", errors)
    if errors:
        raise ConfigError(errors)
    return config


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def _bounds(meta: Mapping[str, Any]) -> str:
    parts = []
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    return (" " + " and ".join(parts)) if parts else ""


def _convert(value: Any, tp: Any, path: str, errors: list[str],
             meta: Mapping[str, Any] | None = None) -> Any:
    """Check ``value`` against type ``tp``; append errors and return a best-effort value."""
    meta = meta or {}
    here = path or "<root>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, errors)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, path, errors, meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            allowed = ", ".join(json.dumps(c) for c in choices)
            errors.append(f"{here}: expected one of {allowed}, got {_describe(value)}")
        return value
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list):
            errors.append(f"{here}: expected a list, got {_describe(value)}")
            return ()
        return tuple(_convert(v, item_type, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            errors.append(f"{here}: expected a mapping, got {_describe(value)}")
            return {}
        return {_convert(k, key_type, f"{path}.<key>", errors):
                _convert(v, value_type, f"{path}.{k}", errors) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{here}: expected true or false, got {_describe(value)}")
        return value
    if tp in (int, float):
        ok = isinstance(value, int) if tp is int else isinstance(value, (int, float))
        ok = ok and not isinstance(value, bool)
        ok = ok and ("min" not in meta or value >= meta["min"])
        ok = ok and ("max" not in meta or value <= meta["max"])
        if not ok:
            errors.append(f"{here}: expected {tp.__name__}{_bounds(meta)}, got {_describe(value)}")
            return value
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{here}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config type {tp!r} at {here} is not supported")  # a schema bug


def _convert_union(value: Any, tp: Any, path: str, errors: list[str],
                   meta: Mapping[str, Any]) -> Any:
    options = [t for t in typing.get_args(tp) if t is not type(None)]
    if value is None:
        if type(None) not in typing.get_args(tp):
            errors.append(f"{path or '<root>'}: must not be empty")
        return None
    if len(options) == 1:
        return _convert(value, options[0], path, errors, meta)
    # A tagged union of settings dataclasses, chosen by their `type` field.
    by_type = {typing.get_args(typing.get_type_hints(t)["type"])[0]: t for t in options}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in by_type:
        allowed = ", ".join(json.dumps(k) for k in by_type)
        errors.append(f"{path}.type: expected one of {allowed}, got {_describe(kind)}")
        return None
    return _convert(value, by_type[kind], path, errors)


def _convert_dataclass(value: Any, cls: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(value, dict):
        errors.append(f"{path or '<root>'}: expected a mapping, got {_describe(value)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, item in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            errors.append(f"{sub}: unknown key (known keys: {known})")
            continue
        kwargs[key] = _convert(item, hints[key], sub, errors, fields[key].metadata)
    if errors:
        return cls()
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a settings class's own cross-field check
        errors.append(f"{path or '<root>'}: {exc}")
        return cls()


# --------------------------------------------------------------------------- outputs


OUTPUT_SCHEMES = ("stdout", "file", "forward", "forward+tls", "syslog", "syslog+tls")


def exporter_from_url(url: str) -> ExporterSettings:
    """An exporter entry from a Fluent Bit style ``-o`` URL.

    ``stdout://``, ``file:///PATH``, ``forward://HOST:PORT``, ``forward+tls://HOST:PORT``,
    ``syslog://HOST:PORT`` (plain TCP) and ``syslog+tls://HOST:PORT``;
    query parameters set any other field of that exporter's settings
    (``forward://agg:24225?compress=false&tag_prefix=clean.``), typed as in YAML.
    """
    parts = urllib.parse.urlsplit(url)
    where = f"-o {url}"
    scheme = parts.scheme
    if scheme not in OUTPUT_SCHEMES:
        raise ConfigError([f"{where}: unknown scheme (known: {', '.join(OUTPUT_SCHEMES)})"])
    data: dict[str, Any]
    if scheme == "stdout":
        data = {"type": "stdout"}
    elif scheme == "file":
        if not parts.path:
            raise ConfigError([f"{where}: needs a path, as in file:///var/log/out.jsonl"])
        data = {"type": "file", "path": parts.path}
    else:
        try:
            port = parts.port
        except ValueError:
            raise ConfigError([f"{where}: port is not a number in 1-65535"]) from None
        host = parts.hostname or defaults.LISTEN_HOST
        if scheme.startswith("syslog"):
            data = {"type": "syslog", "host": host, "port": port or 0,
                    "transport": "tls" if scheme.endswith("+tls") else "tcp"}
        else:
            data = {"type": "forward", "host": host, "port": port or defaults.AGGREGATOR_PORT}
            if scheme.endswith("+tls"):
                data["tls"] = {"enabled": True}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        data[key] = yaml.safe_load(value) if value else ""
    errors: list[str] = []
    settings = _convert(data, ExporterSettings, "", errors)
    if errors:
        raise ConfigError([f"{where}: {error}" for error in errors])
    return settings


# --------------------------------------------------------------------------- rendering


def render_default() -> str:
    """The default config as YAML with every key documented; loads back to Config()."""
    lines = ["# LogMiner Sidecar configuration (all keys optional; these are the defaults).",
             "# Secrets are not configured here: see LOGMINER_HASH_SECRET and friends."]
    _render_dataclass(Config(), 0, lines)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(
        "\n...").removesuffix(" ...")


def _render_dataclass(obj: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc")
        if doc:
            lines.append(f"{pad}# {doc}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _render_dataclass(value, indent + 2, lines)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{pad}{f.name}:")
            for item in value:
                lines.append(f"{pad}  -")
                _render_dataclass(item, indent + 4, lines)
        else:
            rendered = _scalar(list(value) if isinstance(value, tuple) else value)
            lines.append(f"{pad}{f.name}: {rendered}")


# --------------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """Secrets from the environment; each may also come from a mounted file."""

    hash_secret: bytes | None = None
    token_store_key: bytes | None = None
    forward_shared_key: bytes | None = None
    downstream_shared_key: bytes | None = None
    webhook_token: bytes | None = None

    def __repr__(self) -> str:  # never print secret values
        state = {f.name: "set" if getattr(self, f.name) else "unset"
                 for f in dataclasses.fields(self)}
        return "Secrets(" + ", ".join(f"{k}={v}" for k, v in state.items()) + ")"


def load_secrets(environ: Mapping[str, str]) -> Secrets:
    """Read each secret from ``NAME`` or the file named by ``NAME_FILE`` (not both)."""
    return Secrets(
        hash_secret=_secret(environ, defaults.HASH_SECRET_ENV),
        token_store_key=_secret(environ, defaults.TOKEN_STORE_KEY_ENV),
        forward_shared_key=_secret(environ, defaults.FORWARD_SHARED_KEY_ENV),
        downstream_shared_key=_secret(environ, defaults.DOWNSTREAM_SHARED_KEY_ENV),
        webhook_token=_secret(environ, defaults.WEBHOOK_TOKEN_ENV),
    )


def _secret(environ: Mapping[str, str], name: str) -> bytes | None:
    direct, file_name = environ.get(name), environ.get(f"{name}_FILE")
    if direct is not None and file_name is not None:
        raise ConfigError([f"{name}: set either {name} or {name}_FILE, not both"])
    if file_name is not None:
        try:
            value = Path(file_name).read_bytes().strip()
        except OSError as exc:
            raise ConfigError([f"{name}_FILE: cannot read {file_name} ({exc.strerror})"]) from None
    elif direct is not None:
        value = direct.encode()
    else:
        return None
    if not value:
        raise ConfigError([f"{name}: is empty"])
    return value

"""The shipper snippets in fluent-plugin-config/: every file parses, and every address, port,
TLS and shared-key setting agrees with sidecar.defaults and the receivers' settings.

YAML files go through PyYAML, Fluentd's format through tests/support_fluentd_conf.py and Fluent
Bit's classic format through a small section parser below. Parameter names are checked against
allow-lists taken from each plugin's own source or reference (cited beside each list), so a
misspelt key fails here instead of being ignored by the shipper. The last tests start the sidecar
with fluent-plugin-config/sidecar/logminer-tls.yaml and connect the way the TLS snippets do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import TEST_HASH_SECRET, TINY_BUNDLE, in_process_app
from support_fluentd_conf import FluentdConfError, Section, env_names
from support_fluentd_conf import parse as parse_fluentd

from sidecar import config, defaults
from sidecar.receivers.forward import ForwardSettings
from sidecar.receivers.lumberjack import LumberjackSettings

ROOT = Path(__file__).resolve().parent.parent / "fluent-plugin-config"

# The conventions every TLS snippet shares (README "TLS and authentication").
CA_FILE = "/etc/logminer/tls/ca.crt"
SIDECAR_CERT = "/etc/logminer/tls/tls.crt"
SIDECAR_KEY = "/etc/logminer/tls/tls.key"
SIDECAR_TLS_NAME = "logminer"  # a DNS SAN of the `certs` fixture; also the codec's self_hostname
SHARED_KEY_REF = "${" + defaults.FORWARD_SHARED_KEY_ENV + "}"  # Fluent Bit's env syntax
# Downstream: the aggregator's in_forward port. Not a sidecar default yet (the forward exporter
# that will send there is not built); it must differ from the sidecar's own forward port.
AGGREGATOR_PORT = 24225
# The Collector relay that carries Vector's OTLP/HTTP to the sidecar.
RELAY_HTTP_ENDPOINT = f"{defaults.LISTEN_HOST}:4318"


def text(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")


def load_yaml(relative: str) -> Any:
    return yaml.safe_load(text(relative))


# --------------------------------------------------------------------------- README


def test_every_file_named_in_the_readme_table_exists_and_every_snippet_is_in_it() -> None:
    rows = [line for line in text("README.md").splitlines() if line.startswith("| ")]
    named = {name for row in rows for name in re.findall(r"`([\w./-]+\.(?:conf|ya?ml))`", row)}
    assert len(named) >= 12
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"README table names missing files: {missing}"
    shipped = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.suffix in
               (".conf", ".yaml", ".yml")}
    assert shipped == named, f"snippets not in the README table: {sorted(shipped - named)}"


def test_readme_ports_are_the_defaults() -> None:
    rows = {row.split("|")[1].strip(): row.split("|")[4].strip()
            for row in text("README.md").splitlines() if row.startswith("| ")}
    assert rows["Fluentd `out_forward`"] == str(defaults.FORWARD_PORT)
    assert rows["Fluent Bit `forward` output"] == str(defaults.FORWARD_PORT)
    assert rows["Filebeat `output.logstash`"] == str(defaults.LUMBERJACK_PORT)
    assert rows["OpenTelemetry Collector `otlp_grpc` exporter"] == str(defaults.OTLP_GRPC_PORT)


# --------------------------------------------------------------------------- Fluentd

# From fluentd lib/fluent/plugin/out_forward.rb, in_forward.rb, plugin_helper/server.rb,
# output.rb (<buffer>), buffer.rb and buf_file.rb (v1.19).
_COMMON = {"@type", "@id", "@label", "@log_level"}
OUT_FORWARD = _COMMON | {
    "transport", "send_timeout", "connect_timeout", "heartbeat_type", "heartbeat_interval",
    "recover_wait", "hard_timeout", "phi_threshold", "phi_failure_detector",
    "require_ack_response", "ack_response_timeout", "read_interval_msec", "read_length",
    "expire_dns_cache", "dns_round_robin", "ignore_network_errors_at_startup",
    "verify_connection_at_startup", "compress", "tls_version", "tls_ciphers",
    "tls_insecure_mode", "tls_allow_self_signed_cert", "tls_verify_hostname", "tls_ca_cert_path",
    "tls_cert_path", "tls_client_cert_path", "tls_client_private_key_path",
    "tls_client_private_key_passphrase", "keepalive", "keepalive_timeout",
    "send_keepalive_packet"}
OUT_FORWARD_SERVER = {"host", "name", "port", "shared_key", "username", "password", "standby",
                      "weight"}
OUT_FORWARD_SECURITY = {"self_hostname", "shared_key"}
BUFFER = {"@type", "timekey", "timekey_wait", "timekey_use_utc", "timekey_zone",
          "flush_at_shutdown", "flush_mode", "flush_interval", "flush_thread_count",
          "flush_thread_interval", "flush_thread_burst_interval", "delayed_commit_timeout",
          "overflow_action", "retry_forever", "retry_timeout", "retry_max_times",
          "retry_secondary_threshold", "retry_type", "retry_wait",
          "retry_exponential_backoff_base", "retry_max_interval", "retry_randomize",
          "chunk_limit_size", "total_limit_size", "queue_limit_length", "chunk_limit_records",
          "chunk_full_threshold", "queued_chunks_limit_size", "compress",
          "decompression_size_limit", "disable_chunk_backup", "path", "path_suffix",
          "file_permission", "dir_permission"}
IN_FORWARD = _COMMON | {
    "port", "bind", "backlog", "blocking_timeout", "resolve_hostname", "deny_keepalive",
    "send_keepalive_packet", "chunk_size_warn_limit", "chunk_size_limit",
    "decompression_size_limit", "skip_invalid_event", "source_address_key",
    "source_hostname_key", "tag", "add_tag_prefix"}
IN_FORWARD_SECURITY = {"self_hostname", "shared_key", "user_auth", "allow_anonymous_source"}
SERVER_TLS = {"receive_buffer_size", "linger_timeout", "version", "min_version", "max_version",
              "ciphers", "insecure", "ensure_fips", "ca_path", "cert_path", "private_key_path",
              "private_key_passphrase", "client_cert_auth", "ca_cert_path",
              "ca_private_key_path", "ca_private_key_passphrase", "cert_verifier"}


def check_keys(section: Section, allowed: set[str]) -> None:
    unknown = sorted(set(section.params) - allowed)
    assert not unknown, f"<{section.name} {section.arg}> line {section.line}: unknown {unknown}"


def forward_match(conf: Section) -> Section:
    """The single out_forward <match>, with every parameter name checked."""
    match = conf.one("match")
    assert match.params["@type"] == "forward"
    check_keys(match, OUT_FORWARD)
    for server in match.all("server"):
        check_keys(server, OUT_FORWARD_SERVER)
    for security in match.all("security"):
        check_keys(security, OUT_FORWARD_SECURITY)
    check_keys(match.one("buffer"), BUFFER)
    return match


def check_fluentd_tail_source(conf: Section) -> None:
    """in_tail with the `none` parser puts each line in `message`, a forward body key."""
    source = conf.one("source")
    assert source.params["@type"] == "tail"
    assert source.one("parse").params == {"@type": "none"}
    assert "message" in ForwardSettings().body_keys


def test_fluentd_to_sidecar_is_at_least_once_to_the_default_forward_port() -> None:
    conf = parse_fluentd(text("fluentd/to-sidecar.conf"))
    check_fluentd_tail_source(conf)
    match = forward_match(conf)
    assert match.params["require_ack_response"] == "true"
    assert match.params.get("heartbeat_type", "transport") == "transport"  # no UDP listener
    assert match.params.get("transport", "tcp") == "tcp"
    assert not match.all("security")
    server = match.one("server")
    assert (server.params["host"], int(server.params["port"])) == (
        defaults.LISTEN_HOST, defaults.FORWARD_PORT)
    buffer = match.one("buffer")
    assert buffer.params["@type"] == "file"
    assert buffer.params["retry_forever"] == "true"
    assert buffer.params["overflow_action"] == "block"


def test_fluentd_tls_variant_verifies_the_sidecar_and_reads_the_shared_key_from_env() -> None:
    plain = forward_match(parse_fluentd(text("fluentd/to-sidecar.conf")))
    conf = parse_fluentd(text("fluentd/to-sidecar-tls.conf"))
    check_fluentd_tail_source(conf)
    match = forward_match(conf)
    assert match.params["transport"] == "tls"
    assert match.params["tls_ca_cert_path"] == CA_FILE
    assert match.params["tls_verify_hostname"] == "true"
    assert "tls_insecure_mode" not in match.params
    assert "tls_allow_self_signed_cert" not in match.params
    # The host is an IP, so out_forward verifies and sends SNI for the server's `name`.
    server = match.one("server")
    assert server.params == {"name": SIDECAR_TLS_NAME, "host": defaults.LISTEN_HOST,
                             "port": str(defaults.FORWARD_PORT)}
    security = match.one("security")
    assert env_names(security.params["shared_key"]) == [defaults.FORWARD_SHARED_KEY_ENV]
    assert security.params["self_hostname"] not in ("", SIDECAR_TLS_NAME)
    # Everything else is the plain snippet's.
    tls_only = {"transport", "tls_ca_cert_path", "tls_verify_hostname"}
    assert {k: v for k, v in match.params.items() if k not in tls_only} == plain.params
    assert match.one("buffer").params == plain.one("buffer").params


def test_fluentd_aggregator_receives_sanitized_output_with_tls_and_shared_key() -> None:
    conf = parse_fluentd(text("fluentd/aggregator.conf"))
    source = conf.one("source")
    assert source.params["@type"] == "forward"
    check_keys(source, IN_FORWARD)
    assert int(source.params["port"]) == AGGREGATOR_PORT != defaults.FORWARD_PORT
    transport = source.one("transport")
    assert transport.arg == "tls"
    check_keys(transport, SERVER_TLS)
    assert transport.params["cert_path"] and transport.params["private_key_path"]
    security = source.one("security")
    check_keys(security, IN_FORWARD_SECURITY)
    assert security.params["self_hostname"]
    (key_env,) = env_names(security.params["shared_key"])
    assert key_env  # the aggregator's own secret, never a literal in the file
    assert conf.one("match").arg == "**"


@pytest.mark.parametrize("bad, problem", [
    ("<match a>\n  @type forward\n</source>\n", "closes <match>"),
    ("<match a>\n  @type forward\n", "never closed"),
    ("<match a>\n  port 1\n  port 2\n</match>\n", "set twice"),
    ("port 24224\n", "outside a section"),
    ("<match a>\n  host 127.0.0.1 # local\n</match>\n", "bare value"),
    ('<match a>\n  shared_key "abc\n</match>\n', "unterminated"),
])
def test_fluentd_parser_is_strict(bad: str, problem: str) -> None:
    with pytest.raises(FluentdConfError, match=problem):
        parse_fluentd(bad)


# --------------------------------------------------------------------------- Fluent Bit

# From fluent-bit plugins/out_forward/forward.c config_map, the forward output reference
# (Secure Forward parameters) and the common output/TLS/network properties.
FLB_FORWARD = {
    "name", "match", "match_regex", "alias", "log_level", "host", "port", "workers",
    "retry_limit", "storage.total_limit_size", "time_as_integer",
    "retain_metadata_in_forward_mode", "shared_key", "self_hostname", "empty_shared_key",
    "send_options", "require_ack_response", "username", "password", "unix_path", "upstream",
    "tag", "compress", "fluentd_compat", "add_option", "tls", "tls.verify",
    "tls.verify_hostname", "tls.debug", "tls.ca_file", "tls.ca_path", "tls.crt_file",
    "tls.key_file", "tls.key_passwd", "tls.vhost", "tls.min_version", "tls.max_version",
    "tls.ciphers"}


def flb_on(value: Any) -> bool:
    """Fluent Bit's booleans: on/true/yes (PyYAML already turns YAML 1.1 `on` into True)."""
    return value is True or str(value).lower() in ("on", "true", "yes")


def flb_forward_output(doc: dict[str, Any]) -> dict[str, Any]:
    outputs = doc["pipeline"]["outputs"]
    assert len(outputs) == 1, "exactly one active output, or records are sent twice"
    (output,) = outputs
    assert output["name"] == "forward"
    unknown = sorted(set(output) - FLB_FORWARD)
    assert not unknown, f"unknown forward output keys: {unknown}"
    return output


def check_flb_input(doc: dict[str, Any]) -> None:
    """tail writes each line to `log`, a forward body key; filesystem storage is configured."""
    (tail,) = doc["pipeline"]["inputs"]
    assert tail["name"] == "tail" and tail["storage.type"] == "filesystem"
    assert doc["service"]["storage.path"]
    assert "log" in ForwardSettings().body_keys


def check_flb_delivery(output: dict[str, Any]) -> None:
    assert (output["host"], output["port"]) == (defaults.LISTEN_HOST, defaults.FORWARD_PORT)
    assert flb_on(output["require_ack_response"])
    assert output["retry_limit"] == "no_limits"


def test_fluent_bit_yaml_is_at_least_once_to_the_default_forward_port() -> None:
    doc = load_yaml("fluent-bit/to-sidecar.yaml")
    check_flb_input(doc)
    output = flb_forward_output(doc)
    check_flb_delivery(output)
    assert not any(key == "shared_key" or key.startswith("tls") for key in output)


def test_fluent_bit_commented_otlp_alternative_targets_the_otlp_grpc_port() -> None:
    lines = text("fluent-bit/to-sidecar.yaml").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# - name: opentelemetry")
    block = [line.replace("# ", "", 1) for line in lines[start:] if line.strip().startswith("#")]
    (otlp,) = yaml.safe_load("\n".join(block))
    assert (otlp["host"], otlp["port"]) == (defaults.LISTEN_HOST, defaults.OTLP_GRPC_PORT)
    assert flb_on(otlp["grpc"])
    assert otlp["logs_body_key"] == "$log" and otlp["retry_limit"] == "no_limits"


def test_fluent_bit_tls_variant_verifies_the_sidecar_and_uses_the_shared_key_env() -> None:
    doc = load_yaml("fluent-bit/to-sidecar-tls.yaml")
    check_flb_input(doc)
    output = flb_forward_output(doc)
    check_flb_delivery(output)
    assert output["shared_key"] == SHARED_KEY_REF
    assert output["self_hostname"] not in ("", SIDECAR_TLS_NAME)
    assert all(flb_on(output[key]) for key in ("tls", "tls.verify", "tls.verify_hostname"))
    assert output["tls.vhost"] == SIDECAR_TLS_NAME
    assert output["tls.ca_file"] == CA_FILE


def parse_flb_classic(source: str) -> list[tuple[str, dict[str, str]]]:
    """Fluent Bit's classic format: [SECTION] headers, then `Key Value` lines (keys lowered)."""
    sections: list[tuple[str, dict[str, str]]] = []
    for number, raw in enumerate(source.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            assert re.fullmatch(r"\[[A-Z]+\]", line), f"line {number}: bad header {line!r}"
            sections.append((line[1:-1], {}))
            continue
        assert sections and raw[:1].isspace(), f"line {number}: entry outside a section"
        key, _, value = line.partition(" ")
        assert value.strip(), f"line {number}: {key} has no value"
        assert key.lower() not in sections[-1][1], f"line {number}: {key} set twice"
        sections[-1][1][key.lower()] = value.strip()
    return sections


def test_fluent_bit_classic_config_matches_the_yaml_one() -> None:
    source = text("fluent-bit/fluent-bit.conf")
    sections = parse_flb_classic(source)
    assert [name for name, _ in sections] == ["SERVICE", "INPUT", "OUTPUT"]
    output = sections[2][1]
    assert not sorted(set(output) - FLB_FORWARD)
    yaml_output = flb_forward_output(load_yaml("fluent-bit/to-sidecar.yaml"))
    assert output["host"] == yaml_output["host"]
    assert int(output["port"]) == yaml_output["port"]
    check_flb_delivery({**output, "port": int(output["port"])})
    assert sections[1][1]["storage.type"] == "filesystem"
    # The commented TLS block holds exactly the TLS variant's settings.
    commented = dict(re.findall(r"^\s*# ((?:Shared_Key|Self_Hostname|tls\S*))\s+(\S+)$",
                                source, re.MULTILINE))
    tls_output = flb_forward_output(load_yaml("fluent-bit/to-sidecar-tls.yaml"))
    expected = {k: v for k, v in tls_output.items() if k not in yaml_output}
    assert {k.lower() for k in commented} == set(expected)
    for key, value in commented.items():
        wanted = expected[key.lower()]
        assert flb_on(value) if wanted is True else value == wanted, key


# --------------------------------------------------------------------------- Filebeat

# From the Filebeat reference, "Configure the Logstash output", and libbeat's SSL options.
FILEBEAT_LOGSTASH = {
    "enabled", "hosts", "compression_level", "escape_html", "worker", "workers", "loadbalance",
    "ttl", "pipelining", "proxy_url", "proxy_use_local_resolver", "index", "timeout",
    "max_retries", "bulk_max_size", "slow_start", "backoff.init", "backoff.max", "queue",
    "ssl.enabled", "ssl.verification_mode", "ssl.certificate_authorities", "ssl.certificate",
    "ssl.key", "ssl.key_passphrase", "ssl.supported_protocols", "ssl.cipher_suites",
    "ssl.ca_trusted_fingerprint", "ssl.curve_types", "ssl.renegotiation"}


def filebeat_output(relative: str) -> dict[str, Any]:
    doc = load_yaml(relative)
    outputs = [key for key in doc if key.startswith("output.")]
    assert outputs == ["output.logstash"], "Filebeat allows exactly one output"
    output = doc["output.logstash"]
    assert not sorted(set(output) - FILEBEAT_LOGSTASH)
    (stream,) = doc["filebeat.inputs"]
    assert stream["type"] == "filestream" and stream["id"]
    assert output["hosts"] == [f"{defaults.LISTEN_HOST}:{defaults.LUMBERJACK_PORT}"]
    # Filebeat resends a window it got no ack for within `timeout`; the sidecar's keepalive
    # acks while a window waits for the pipeline must come sooner.
    assert output["timeout"] > LumberjackSettings().keepalive_seconds
    assert output["bulk_max_size"] == 2048 and output["pipelining"] >= 0
    return output


def test_filebeat_sends_to_the_default_lumberjack_port() -> None:
    output = filebeat_output("filebeat/filebeat.yml")
    assert not any(key.startswith("ssl.") for key in output)


def test_filebeat_tls_variant_verifies_the_sidecar_certificate_fully() -> None:
    output = filebeat_output("filebeat/filebeat-tls.yml")
    assert output["ssl.enabled"] is True
    assert output["ssl.verification_mode"] == "full"
    assert output["ssl.certificate_authorities"] == [CA_FILE]


# --------------------------------------------------------------------------- OTel Collector

EXPORTER = "otlp_grpc/logminer"
SIDECAR_OTLP_ENDPOINT = f"{defaults.LISTEN_HOST}:{defaults.OTLP_GRPC_PORT}"


def check_collector(doc: dict[str, Any]) -> dict[str, Any]:
    """Common checks: pipeline wiring, queue/retry settings, no clash with the sidecar's port."""
    logs = doc["service"]["pipelines"]["logs"]
    for kind in ("receivers", "exporters"):
        for name in logs[kind]:
            assert name in doc[kind], f"{kind} {name} is not defined"
    for name in doc["service"].get("extensions", []):
        assert name in doc["extensions"]
    for component in (*doc["receivers"].values(), *doc["exporters"].values()):
        storage = component.get("storage") or component.get("sending_queue", {}).get("storage")
        if storage:
            assert storage in doc["service"]["extensions"], storage
    otlp_in = doc["receivers"].get("otlp", {}).get("protocols", {})
    assert "grpc" not in otlp_in, "the sidecar owns 4317 in the pod"
    assert logs["exporters"] == [EXPORTER]
    exporter = doc["exporters"][EXPORTER]
    assert exporter["endpoint"] == SIDECAR_OTLP_ENDPOINT
    assert exporter["sending_queue"]["enabled"] is True
    retry = exporter["retry_on_failure"]
    assert retry["enabled"] is True and retry["max_elapsed_time"] == 0
    return exporter


def test_collector_exports_to_the_default_otlp_port_with_a_persistent_queue() -> None:
    doc = load_yaml("otel-collector/config.yaml")
    exporter = check_collector(doc)
    assert exporter["tls"] == {"insecure": True}
    assert exporter["sending_queue"]["storage"] == "file_storage"
    assert doc["receivers"]["filelog"]["storage"] == "file_storage"


def test_collector_tls_variant_verifies_the_sidecar_by_name() -> None:
    plain = load_yaml("otel-collector/config.yaml")
    doc = load_yaml("otel-collector/config-tls.yaml")
    exporter = check_collector(doc)
    assert exporter["tls"] == {"insecure": False, "ca_file": CA_FILE,
                               "server_name_override": SIDECAR_TLS_NAME}
    # Apart from tls, the same as the plain config.
    plain["exporters"][EXPORTER].pop("tls")
    exporter.pop("tls")
    assert doc == plain


# --------------------------------------------------------------------------- Vector


def test_vector_reaches_the_sidecar_through_the_collector_relay() -> None:
    relay = load_yaml("otel-collector/vector-relay.yaml")
    check_collector(relay)
    assert relay["receivers"]["otlp"]["protocols"] == {"http": {"endpoint": RELAY_HTTP_ENDPOINT}}
    doc = load_yaml("vector/vector.yaml")
    (sink,) = doc["sinks"].values()
    assert sink["type"] == "opentelemetry"
    protocol = sink["protocol"]
    assert protocol["type"] == "http"  # the only protocol Vector's opentelemetry sink has
    assert protocol["uri"] == f"http://{RELAY_HTTP_ENDPOINT}/v1/logs"
    assert protocol["encoding"] == {"codec": "otlp"}
    assert protocol["acknowledgements"] == {"enabled": True}
    assert sink["buffer"]["type"] == "disk" and sink["buffer"]["when_full"] == "block"
    # Inputs wire source -> remap -> sink, and the remap builds the OTLP shape.
    (transform_name,) = sink["inputs"]
    transform = doc["transforms"][transform_name]
    assert transform["type"] == "remap" and '"resourceLogs"' in transform["source"]
    assert all(name in doc["sources"] for name in transform["inputs"])


# --------------------------------------------------------------------------- the sidecar side


def test_sidecar_tls_config_loads_with_default_ports_and_requires_the_shared_key() -> None:
    cfg = config.load(ROOT / "sidecar/logminer-tls.yaml")
    r = cfg.receivers
    ports = {"forward": defaults.FORWARD_PORT, "otlp": defaults.OTLP_GRPC_PORT,
             "grpc": defaults.GRPC_PORT, "lumberjack": defaults.LUMBERJACK_PORT}
    for name, port in ports.items():
        settings = getattr(r, name)
        assert (settings.host, settings.port) == (defaults.LISTEN_HOST, port)
        assert (settings.tls.cert_file, settings.tls.key_file) == (SIDECAR_CERT, SIDECAR_KEY)
    assert r.forward.require_shared_key is True


def test_sidecar_tls_config_refuses_to_start_without_the_shared_key_env(tmp_path: Path) -> None:
    from sidecar.app import App

    loaded = config.load(ROOT / "sidecar/logminer-tls.yaml")
    cfg = dataclasses.replace(
        loaded, data_dir=str(tmp_path),
        scoring=dataclasses.replace(loaded.scoring, model_dir=str(TINY_BUNDLE)))
    with pytest.raises(ValueError, match=defaults.FORWARD_SHARED_KEY_ENV):
        App(cfg, config.Secrets(hash_secret=TEST_HASH_SECRET.encode()), exporters=[])


# ----------------------------------------------------- TLS end to end, as the snippets connect

def tls_app(certs: Path, data_dir: Path, shared_key: bytes) -> Any:
    """The App from logminer-tls.yaml with the test certificates, on free ports."""
    cfg = yaml.safe_load(text("sidecar/logminer-tls.yaml"))
    for receiver in cfg["receivers"].values():
        receiver["port"] = 0
        receiver["tls"] = {"cert_file": str(certs / "server.crt"),
                           "key_file": str(certs / "server.key")}
    cfg["http"] = {"enabled": False}
    cfg["pipeline"] = {"batch": {"max_delay_ms": 2}}
    cfg["scoring"] = {"model_dir": str(TINY_BUNDLE)}
    return in_process_app(data_dir, yaml.safe_dump(cfg), forward_shared_key=shared_key)


def test_shippers_connect_to_the_tls_sidecar_as_the_snippets_configure(
        tmp_path: Path, certs: Path) -> None:
    """Forward (Fluentd/Fluent Bit: CA + name `logminer` + shared key), Lumberjack (Filebeat:
    CA + address 127.0.0.1) and OTLP (Collector: CA + server_name_override) each get an ack.

    The names each client verifies are read from the TLS snippets themselves.
    """
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as otlp_grpc
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.logs.v1 import logs_pb2
    from support import port_of

    from sidecar.codecs import forward, lumberjack

    forward_name = forward_match(parse_fluentd(text("fluentd/to-sidecar-tls.conf"))).one(
        "server").params["name"]
    flb_name = flb_forward_output(load_yaml("fluent-bit/to-sidecar-tls.yaml"))["tls.vhost"]
    assert flb_name == forward_name
    filebeat_host = filebeat_output("filebeat/filebeat-tls.yml")["hosts"][0].rsplit(":", 1)[0]
    otlp_name = load_yaml("otel-collector/config-tls.yaml")["exporters"][EXPORTER]["tls"][
        "server_name_override"]
    key = b"shared-secret"
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))

    def forward_client(port: int) -> str:
        conn = forward.ClientConnection(shared_key=key, self_hostname="fluentd-node-1")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=forward_name) as sock:
            sent = False
            while True:
                conn.receive_data(sock.recv(65536))
                while (event := conn.next_event()) is not forward.NEED_DATA:
                    if isinstance(event, forward.AckReceived):
                        return event.chunk
                    assert not isinstance(event, forward.ConnectionClosed), "closed, no ack"
                    if isinstance(event, forward.AuthenticationSucceeded) and not sent:
                        entry = forward.Entry(time.time_ns(), {"log": "via fwd"})
                        sock.sendall(conn.pack_forward("app.logs", [entry], chunk="c1",
                                                       compress=False))
                        sent = True
                sock.sendall(conn.data_to_send())  # the PING answering the HELO

    def lumberjack_client(port: int) -> int:
        conn = lumberjack.ClientConnection()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=filebeat_host) as sock:
            sock.sendall(conn.send_window([{"message": "via lumberjack"}]))
            while True:
                conn.receive_data(sock.recv(65536))
                while (event := conn.next_event()) is not lumberjack.NEED_DATA:
                    assert not isinstance(event, lumberjack.ConnectionClosed), "closed, no ack"
                    if isinstance(event, lumberjack.AckReceived) and event.seq:
                        return event.seq

    def otlp_client(port: int) -> None:
        credentials = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
        options = (("grpc.ssl_target_name_override", otlp_name),)
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
            body = common_pb2.AnyValue(string_value="via otlp")
            request = otlp.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
                scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord(body=body)])])])
            otlp_grpc.LogsServiceStub(channel).Export(request, timeout=10)

    async def scenario() -> None:
        app = tls_app(certs, tmp_path / "data", key)
        await app.start()
        try:
            assert await asyncio.to_thread(forward_client, port_of(app, "forward")) == "c1"
            assert await asyncio.to_thread(lumberjack_client, port_of(app, "lumberjack")) == 1
            await asyncio.to_thread(otlp_client, port_of(app, "otlp"))
            await app.memory.wait_for(3, timeout=10)
        finally:
            await app.stop()
        assert sorted(r.body for r in app.memory.records) == [
            "via fwd", "via lumberjack", "via otlp"]

    asyncio.run(asyncio.wait_for(scenario(), 60))

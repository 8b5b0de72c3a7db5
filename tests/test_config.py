"""Config: golden YAML files load to the expected dataclasses or the expected errors."""

import re
from pathlib import Path

import pytest

from sidecar import config
from sidecar.exporters.forward import ForwardExporterSettings
from sidecar.exporters.jsonl import FileExporterSettings, StdoutExporterSettings
from sidecar.pipeline import BatchSettings, PipelineSettings, RetrySettings
from sidecar.tls import ClientTlsSettings

TESTDATA = Path(__file__).parent / "testdata" / "config"


def test_empty_document_gives_defaults():
    assert config.loads("") == config.Config()


def test_full_file_loads_to_expected_dataclasses():
    cfg = config.load(TESTDATA / "full.yaml")
    assert cfg.pipeline == PipelineSettings(
        batch=BatchSettings(max_records=100, max_delay_ms=5), max_queued_records=1000,
        admission_timeout_seconds=1.5, shutdown_grace_seconds=3.0, retry=RetrySettings())
    assert cfg.receivers.forward.host == "0.0.0.0"
    assert cfg.receivers.forward.port == 24225
    assert cfg.receivers.forward.body_keys == ("log", "message")
    assert cfg.exporters == (StdoutExporterSettings(),
                             FileExporterSettings(path="/tmp/out.jsonl"))
    assert (cfg.http.port, cfg.logging.level, cfg.logging.format) == (9090, "debug", "json")
    assert isinstance(cfg.pipeline.shutdown_grace_seconds, float)


@pytest.mark.parametrize("name", ["bad_types", "unknown_keys"])
def test_invalid_files_report_every_error_with_its_key_path(name):
    with pytest.raises(config.ConfigError) as info:
        config.load(TESTDATA / f"{name}.yaml")
    expected = (TESTDATA / f"{name}.errors").read_text().splitlines()
    assert info.value.errors == expected


def test_config_is_frozen():
    cfg = config.Config()
    with pytest.raises(AttributeError):
        cfg.pipeline.max_queued_records = 1  # type: ignore[misc]


def test_not_yaml_and_unreadable_file():
    with pytest.raises(config.ConfigError, match="not valid YAML at line 1"):
        config.loads("a: [")
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load("/nonexistent/logminer.yaml")


def test_rendered_default_documents_every_key_and_loads_back():
    text = config.render_default()
    assert config.loads(text) == config.Config()
    assert "# Records per processed batch." in text
    assert "port: 24224" in text


def test_secrets_from_env_or_file(tmp_path):
    assert config.load_secrets({}).hash_secret is None
    assert config.load_secrets({"LOGMINER_HASH_SECRET": "s3cr3t"}).hash_secret == b"s3cr3t"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    secrets = config.load_secrets({"LOGMINER_HASH_SECRET_FILE": str(secret_file)})
    assert secrets.hash_secret == b"from-file"
    assert "from-file" not in repr(secrets)


@pytest.mark.parametrize("environ, message", [
    ({"LOGMINER_HASH_SECRET": "a", "LOGMINER_HASH_SECRET_FILE": "/x"}, "not both"),
    ({"LOGMINER_HASH_SECRET_FILE": "/nonexistent/secret"}, "cannot read"),
    ({"LOGMINER_HASH_SECRET": ""}, "is empty"),
])
def test_bad_secrets_are_rejected(environ, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load_secrets(environ)


@pytest.mark.parametrize("url, expected", [
    ("stdout://", StdoutExporterSettings()),
    ("file:///var/log/out.jsonl", FileExporterSettings(path="/var/log/out.jsonl")),
    ("forward://agg.example:24299?compress=false&tag_prefix=clean.",
     ForwardExporterSettings(host="agg.example", port=24299, compress=False,
                             tag_prefix="clean.")),
    ("forward+tls://agg", ForwardExporterSettings(host="agg", tls=ClientTlsSettings(enabled=True))),
])
def test_output_urls_equal_config_entries(url, expected):
    assert config.exporter_from_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("kafka://x", "-o kafka://x: unknown scheme"),
    ("forward://h:99999", "port is not a number"),
    ("forward://h?bogus=1", "-o forward://h?bogus=1: bogus: unknown key"),
    ("forward://h?port=ten", 'port: expected int >= 1 and <= 65535, got "ten"'),
    ("file://", "needs a path"),
])
def test_bad_output_urls_are_rejected_clearly(url, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.exporter_from_url(url)

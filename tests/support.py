"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath)."""

from pathlib import Path

TESTDATA = Path(__file__).parent / "testdata"
TINY_BUNDLE = TESTDATA / "bundles" / "tiny"
TEST_HASH_SECRET = "test-hash-secret-0123456789abcdef"


ALL_PORTS_FREE = """
receivers:
  forward: {port: 0}
  otlp: {port: 0}
  grpc: {port: 0}
  lumberjack: {port: 0}
http: {port: 0}
pipeline:
  batch: {max_delay_ms: 2}
scoring: {model_dir: TINY}
""".replace("TINY", str(TINY_BUNDLE))


def in_process_app(data_dir, config_text: str = ALL_PORTS_FREE, **secrets):
    """An App on free ports whose records land in an InMemoryExporter (``app.memory``)."""
    from sidecar import config
    from sidecar.app import App
    from sidecar.exporters.base import InMemoryExporter

    memory = InMemoryExporter()
    cfg = config.loads(f"data_dir: {data_dir}\n" + config_text)
    secrets.setdefault("hash_secret", TEST_HASH_SECRET.encode())
    app = App(cfg, config.Secrets(**secrets), exporters=[memory])
    app.memory = memory
    return app


def port_of(app, name: str) -> int:
    return next(r.port for r in app.receivers if r.name == name)

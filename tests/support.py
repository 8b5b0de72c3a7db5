"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath)."""


ALL_PORTS_FREE = """
receivers:
  forward: {port: 0}
  otlp: {port: 0}
  grpc: {port: 0}
  lumberjack: {port: 0}
http: {port: 0}
pipeline:
  batch: {max_delay_ms: 2}
"""


def in_process_app(data_dir, config_text: str = ALL_PORTS_FREE, **secrets):
    """An App on free ports whose records land in an InMemoryExporter (``app.memory``)."""
    from sidecar import config
    from sidecar.app import App
    from sidecar.exporters.base import InMemoryExporter

    memory = InMemoryExporter()
    cfg = config.loads(f"data_dir: {data_dir}\n" + config_text)
    app = App(cfg, config.Secrets(**secrets), exporters=[memory])
    app.memory = memory
    return app


def port_of(app, name: str) -> int:
    return next(r.port for r in app.receivers if r.name == name)

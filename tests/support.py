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


class Collector:
    """A pipeline stand-in for receiver tests: keeps every submitted batch; ``fail`` raises
    for chosen calls (e.g. PipelineFull on the third)."""

    def __init__(self, fail=lambda n: None):
        self.batches = []
        self.calls = 0
        self._fail = fail

    async def __call__(self, batch, *, durable=True):
        self.calls += 1
        error = self._fail(self.calls)
        if error is not None:
            raise error
        self.batches.append(batch)

    @property
    def records(self):
        return [record for batch in self.batches for record in batch]


def run_bounded(scenario, seconds=20):
    """Run an async test scenario with a hard time bound."""
    import asyncio

    asyncio.run(asyncio.wait_for(scenario(), seconds))

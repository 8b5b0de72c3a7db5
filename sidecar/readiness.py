"""Readiness: cheap probes, evaluated every second, published to /ready and gRPC health.

Strategy: the app builds one ``Readiness`` from named probes - plain callables returning
bool, so the app alone decides what each one looks at - and runs ``run()`` as an asyncio
task. Each round runs the probes in a worker thread (one touches the disk), sets each
result as a condition on the app's ``Health`` (which ``/ready`` serves), and publishes the
overall state - every condition, including those the app sets itself such as
``receivers`` - through an async callback (``GrpcHealth.set_serving``), so HTTP and gRPC
health always agree. A probe that raises counts as failed and is logged by exception type
only (a message might quote data). Condition changes are logged once, not every round.

``sidecar_probes`` builds the sidecar's own conditions:

- ``model_loaded``: the scorer has a live bundle;
- ``spool_writable``: a file can be created, written and removed in the spool directory;
- ``delivery``: the spool is below ``SPOOL_READY_FRACTION`` of its bound, or the last
  export succeeded. While downstream is down the spool absorbs records and the sidecar
  stays ready; it turns unready only when it is about to push back on senders, so an
  orchestrator can route them elsewhere first.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from sidecar.telemetry import Health

log = logging.getLogger(__name__)

Probe = Callable[[], bool]
Publish = Callable[[bool], Awaitable[None]]

SPOOL_READY_FRACTION = 0.9
PROBE_FILE = ".ready-probe"


def writable_dir(directory: Path) -> Probe:
    """A probe that creates, writes and removes ``PROBE_FILE`` in ``directory``."""
    target = Path(directory) / PROBE_FILE

    def probe() -> bool:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            os.unlink(target)
        except OSError:
            return False
        return True

    return probe


def sidecar_probes(*, model_loaded: Probe, spool_dir: Path, spool_used: Callable[[], int],
                   spool_bound: int, downstream_ok: Probe) -> dict[str, Probe]:
    """The sidecar's readiness conditions (see the module docstring), by name.

    ``spool_used`` gives the bytes the spool holds, ``spool_bound`` its ``max_bytes``;
    ``downstream_ok`` says whether the last export attempt succeeded.
    """
    def delivery() -> bool:
        return spool_used() < spool_bound * SPOOL_READY_FRACTION or downstream_ok()

    return {"model_loaded": model_loaded, "spool_writable": writable_dir(spool_dir),
            "delivery": delivery}


class Readiness:
    """Evaluates ``probes`` into ``health`` and publishes the overall state."""

    def __init__(self, health: Health, probes: Mapping[str, Probe], publish: Publish,
                 interval: float = 1.0):
        self._health = health
        self._probes = dict(probes)
        self._publish = publish
        self._interval = interval
        self._last: dict[str, bool] = {}

    def _run_probes(self) -> dict[str, bool]:
        results = {}
        for name, probe in self._probes.items():
            try:
                results[name] = bool(probe())
            except Exception as exc:  # a broken probe means "not ready", never a crash
                log.error("readiness probe %s raised %s", name, type(exc).__name__)
                results[name] = False
        return results

    async def evaluate(self) -> bool:
        """Run every probe once, set the conditions, publish and return the overall state."""
        results = await asyncio.to_thread(self._run_probes)
        for name, ok in results.items():
            self._health.set(name, ok)
            if self._last.get(name, True) != ok:
                (log.info if ok else log.warning)("readiness condition %s is now %s",
                                                  name, "ok" if ok else "failing")
        self._last = results
        ready = self._health.ready()
        await self._publish(ready)
        return ready

    async def run(self) -> None:
        """Evaluate every ``interval`` seconds until cancelled."""
        while True:
            await self.evaluate()
            await asyncio.sleep(self._interval)

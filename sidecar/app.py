"""Build the sidecar from a Config and run it.

Start order is exporters -> pipeline -> receivers -> HTTP endpoints, so no
record is accepted before there is somewhere for it to go; stop runs in
reverse: receivers stop accepting, the pipeline drains within the grace
period, exporters flush. Readiness turns true only when everything started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sidecar import defaults
from sidecar.aggregates import AGGREGATES_FILE, AggregateCounts
from sidecar.config import Config, Secrets
from sidecar.exporters.alerts import ModelInfo
from sidecar.exporters.base import Exporter
from sidecar.exporters.forward import (
    FluentLoggerExporter,
    ForwardAckExporter,
    ForwardExporterSettings,
)
from sidecar.exporters.jsonl import FileExporterSettings, JsonLinesExporter
from sidecar.exporters.siem import SiemExporterSettings, SyslogExporter
from sidecar.exporters.webhook import WebhookExporter, WebhookExporterSettings
from sidecar.pipeline import Pipeline, Stage
from sidecar.privacy import PrivacyAccountant, Reporter
from sidecar.readiness import Readiness, sidecar_probes
from sidecar.receivers.forward import ForwardReceiver
from sidecar.receivers.grpc_server import GrpcHealth
from sidecar.receivers.grpc_service import GrpcReceiver
from sidecar.receivers.lumberjack import LumberjackReceiver
from sidecar.receivers.otlp import OtlpReceiver
from sidecar.redact.store import TokenStore, load_key
from sidecar.spool import FileSpool, Spool
from sidecar.stages import RedactionStage, ScoringStage, as_stage
from sidecar.status_server import StatusServer
from sidecar.telemetry import Telemetry

log = logging.getLogger(__name__)

RECEIVER_GRACE_SECONDS = 2.0


def _hash_secret(secrets: Secrets) -> bytes:
    if not secrets.hash_secret:
        raise ValueError(f"{defaults.HASH_SECRET_ENV} is not set: the sidecar needs the key of "
                         f"its redaction tokens (or {defaults.HASH_SECRET_ENV}_FILE); "
                         "`logminer demo` makes an ephemeral one")
    return secrets.hash_secret


def _token_store(config: Config, secrets: Secrets) -> TokenStore | None:
    settings = config.token_store
    if not settings.enabled:
        return None
    if not secrets.token_store_key:
        raise ValueError(f"token_store.enabled is set but {defaults.TOKEN_STORE_KEY_ENV} is not")
    path = Path(settings.path or Path(config.data_dir) / "tokens")
    return TokenStore.open(path, load_key(secrets.token_store_key.decode()),
                           fsync=settings.fsync)


class Receiver(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


def build_exporters(config: Config, secrets: Secrets,
                    model: ModelInfo | None = None) -> list[Exporter]:
    """The configured exporters; ``model`` tells alert exporters the live model's name/version."""
    exporters: list[Exporter] = []
    for settings in config.exporters:
        if isinstance(settings, FileExporterSettings):
            exporters.append(JsonLinesExporter.file(settings))
        elif isinstance(settings, SiemExporterSettings):
            exporters.append(SyslogExporter(settings, model=model))
        elif isinstance(settings, WebhookExporterSettings):
            exporters.append(WebhookExporter(settings, token=secrets.webhook_token, model=model))
        elif isinstance(settings, ForwardExporterSettings):
            exporters.append(
                ForwardAckExporter(settings, shared_key=secrets.downstream_shared_key)
                if settings.mode == "ack" else FluentLoggerExporter(settings))
        else:
            exporters.append(JsonLinesExporter.stdout())
    names = [e.name for e in exporters]
    if len(set(names)) != len(names):
        raise ValueError(f"exporters must be distinct; got {', '.join(names)}")
    return exporters


class App:
    """One running sidecar: telemetry, pipeline, receivers, HTTP endpoints."""

    def __init__(self, config: Config, secrets: Secrets, *,
                 exporters: Sequence[Exporter] | None = None,
                 telemetry: Telemetry | None = None, spool: Spool | None = None,
                 stages: Sequence[Stage] | None = None):
        """``exporters``, ``telemetry`` and ``spool`` replace the configured ones (tests,
        embedding); ``stages`` replaces the processing stages - only the ingest benchmark's
        null processing does that, since without redaction raw records would leave."""
        self.config = config
        self.telemetry = telemetry or Telemetry()
        if exporters is None:
            exporters = build_exporters(config, secrets, model=self._live_model)
        if spool is None:
            spool = FileSpool(Path(config.data_dir) / "spool", config.spool,
                              [e.name for e in exporters])
        self.redaction = RedactionStage(config.redaction, _hash_secret(secrets),
                                        _token_store(config, secrets), self.telemetry)
        self.telemetry.tag_is_clean = lambda tag: self.redaction.clean_tag(tag) == tag
        self.scoring = ScoringStage(config.scoring, config.templates,
                                    Path(config.data_dir) / "templates.json",
                                    self.telemetry.registry)
        default = [as_stage(self.redaction), as_stage(self.scoring)]
        self.aggregates: AggregateCounts | None = None
        self.reporter: Reporter | None = None
        if config.privacy.enabled:
            data_dir = Path(config.data_dir)
            self.aggregates = AggregateCounts(config.privacy.aggregates,
                                              data_dir / AGGREGATES_FILE)
            accountant = PrivacyAccountant.from_settings(data_dir, config.privacy)
            self.reporter = Reporter(config.privacy, self.aggregates, accountant)
            self.telemetry.watch_privacy(accountant.epsilon_spent)
            default.append(Stage(self.aggregates.name, self.aggregates.process))
        self.pipeline = Pipeline(config.pipeline, stages if stages is not None else default,
                                 exporters, self.telemetry, spool)
        self.grpc_health = GrpcHealth()
        self.readiness = Readiness(self.telemetry.health, sidecar_probes(
            model_loaded=lambda: self.scoring.scorer.live_bundle is not None,
            spool_dir=Path(config.data_dir) / "spool",
            spool_used=lambda: self.pipeline.spool.bytes_used,
            spool_bound=config.spool.max_bytes,
            downstream_ok=lambda: self.pipeline.exports_ok), self.grpc_health.set_serving)
        self._readiness_task: asyncio.Task[None] | None = None
        self.receivers = self._receivers(config, secrets)
        self.status = (StatusServer(config.http.host, config.http.port, self.telemetry)
                       if config.http.enabled else None)

    def _live_model(self) -> tuple[str, int]:
        card = self.scoring.scorer.live_bundle.card
        return card.name, card.version

    def _receivers(self, config: Config, secrets: Secrets) -> list[Receiver]:
        r, submit, telemetry = config.receivers, self.pipeline.submit, self.telemetry
        receivers: list[Receiver] = []
        if r.forward.enabled:
            receivers.append(ForwardReceiver(r.forward, submit, telemetry,
                                             shared_key=secrets.forward_shared_key))
        if r.otlp.enabled:
            receivers.append(OtlpReceiver(r.otlp, submit, telemetry, self.grpc_health))
        if r.grpc.enabled:
            receivers.append(GrpcReceiver(r.grpc, submit, telemetry, self.grpc_health,
                                          reporter=self.reporter))
        if r.lumberjack.enabled:
            receivers.append(LumberjackReceiver(r.lumberjack, submit, telemetry))
        return receivers

    async def start(self) -> None:
        """Start everything; on failure, stop what already started and re-raise."""
        self.telemetry.health.set("receivers", False)
        try:
            await self.pipeline.start()
            for receiver in self.receivers:
                await receiver.start()
            if self.status is not None:
                self.status.start()
        except BaseException:
            await self.stop()
            raise
        self.telemetry.health.set("receivers", True)
        await self.readiness.evaluate()
        self._readiness_task = asyncio.create_task(self.readiness.run(), name="readiness")

    async def stop(self) -> int:
        """Stop in reverse order within one grace period; returns records lost to it.

        Receivers stop together and get a short share of the grace (a connection in the
        middle of a submit finishes and is acknowledged; idle keep-alive connections are
        closed); the pipeline gets the rest to process, spool and deliver.
        """
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
            self._readiness_task = None
        self.telemetry.health.set("receivers", False)
        await self.grpc_health.set_serving(False)
        deadline = time.monotonic() + self.config.pipeline.shutdown_grace_seconds
        receiver_grace = min(RECEIVER_GRACE_SECONDS, self.config.pipeline.shutdown_grace_seconds)
        await asyncio.gather(*(r.stop(receiver_grace) for r in reversed(self.receivers)))
        lost = await self.pipeline.stop(grace=max(0.0, deadline - time.monotonic()))
        self.scoring.save()
        if self.aggregates is not None:
            self.aggregates.close()
        if self.redaction.store is not None:
            self.redaction.store.close()
        if self.status is not None:
            self.status.stop()
        return lost

    async def run_until_signal(self) -> int:
        """Run until SIGTERM or SIGINT, then shut down gracefully; returns records lost."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("listening: %s", ", ".join(self.describe_listeners()))
        await stop.wait()
        log.info("shutting down (grace %.1fs)", self.config.pipeline.shutdown_grace_seconds)
        return await self.stop()

    def describe_listeners(self) -> list[str]:
        out = [f"{r.name}={getattr(r, 'port', '?')}" for r in self.receivers]
        if self.status is not None:
            out.append(f"http={self.status.port}")
        return out

"""Readiness: probes become /ready conditions and the gRPC health status, read back over
real HTTP and a real grpc.health.v1 client against a status server and a gRPC server."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.readiness import Readiness, sidecar_probes
from sidecar.receivers.grpc_server import GrpcHealth, GrpcReceiverSettings, GrpcServer
from sidecar.status_server import StatusServer
from sidecar.telemetry import Telemetry

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BOUND = 1000


@dataclass
class Node:
    """What the probes look at, settable by the test, plus the servers that publish them."""

    spool_dir: Path
    model: bool = True
    spool_used: int = 0
    downstream: bool = True
    telemetry: Telemetry = field(default_factory=Telemetry)
    http_port: int = 0
    grpc_port: int = 0

    def readiness(self, grpc_health: GrpcHealth, interval: float = 1.0) -> Readiness:
        probes = sidecar_probes(model_loaded=lambda: self.model, spool_dir=self.spool_dir,
                                spool_used=lambda: self.spool_used, spool_bound=BOUND,
                                downstream_ok=lambda: self.downstream)
        return Readiness(self.telemetry.health, probes, grpc_health.set_serving, interval)

    def ready(self) -> tuple[int, dict]:
        url = f"http://127.0.0.1:{self.http_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def health_status(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health",
                                    timeout=10) as response:
            return response.status

    async def grpc_status(self) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10)
            return reply.status


@asynccontextmanager
async def serving(node: Node, grpc_health: GrpcHealth) -> AsyncIterator[Node]:
    status = StatusServer("127.0.0.1", 0, node.telemetry)
    server = GrpcServer(GrpcReceiverSettings(port=0), {}, grpc_health)
    status.start()
    await server.start()
    node.http_port, node.grpc_port = status.port, server.port
    node.telemetry.health.set("receivers", True)  # as the app does once everything started
    try:
        yield node
    finally:
        await server.stop(0)
        status.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    spool = tmp_path / "spool"
    spool.mkdir()
    return Node(spool)


async def assert_state(node: Node, ready: bool, **conditions: bool) -> None:
    status, body = node.ready()
    assert (status, body["ready"]) == ((200, True) if ready else (503, False))
    assert {k: body["conditions"][k] for k in conditions} == conditions
    assert await node.grpc_status() == (SERVING if ready else NOT_SERVING)
    assert node.health_status() == 200  # liveness does not depend on readiness


def test_each_condition_turns_ready_and_grpc_health_off_and_on(node: Node):
    async def scenario() -> None:
        grpc_health = GrpcHealth()
        async with serving(node, grpc_health):
            readiness = node.readiness(grpc_health)
            assert await readiness.evaluate()
            await assert_state(node, True, model_loaded=True, spool_writable=True,
                               delivery=True, receivers=True)

            node.model = False
            assert not await readiness.evaluate()
            await assert_state(node, False, model_loaded=False, spool_writable=True)
            node.model = True

            shutil.rmtree(node.spool_dir)  # the spool directory is gone
            assert not await readiness.evaluate()
            await assert_state(node, False, spool_writable=False, model_loaded=True)
            node.spool_dir.mkdir()
            assert await readiness.evaluate()
            await assert_state(node, True, spool_writable=True)
            assert list(node.spool_dir.iterdir()) == []  # the probe cleans up after itself

            # Receivers the app reports down make the whole node unready, probes or not.
            node.telemetry.health.set("receivers", False)
            assert not await readiness.evaluate()
            await assert_state(node, False, receivers=False, model_loaded=True)

    run(scenario)


@pytest.mark.parametrize(("spool_used", "downstream", "ready"), [
    (0, False, True),            # downstream down, the spool absorbs
    (BOUND * 9 // 10 - 1, False, True),
    (BOUND * 9 // 10, False, False),  # about to push back on senders
    (BOUND, True, True),         # full but draining: the last export succeeded
])
def test_delivery_is_spool_below_bound_or_downstream_reachable(node: Node, spool_used: int,
                                                               downstream: bool, ready: bool):
    async def scenario() -> None:
        grpc_health = GrpcHealth()
        async with serving(node, grpc_health):
            node.spool_used, node.downstream = spool_used, downstream
            assert await node.readiness(grpc_health).evaluate() is ready
            await assert_state(node, ready, delivery=ready)

    run(scenario)


def test_run_publishes_changes_without_being_asked(node: Node):
    async def scenario() -> None:
        grpc_health = GrpcHealth()
        async with serving(node, grpc_health):
            task = asyncio.create_task(node.readiness(grpc_health, interval=0.05).run())
            try:
                await wait_for_status(node, SERVING)
                node.downstream, node.spool_used = False, BOUND
                await wait_for_status(node, NOT_SERVING)
                assert node.ready()[0] == 503
                node.downstream = True
                await wait_for_status(node, SERVING)
                assert node.ready()[0] == 200
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    run(scenario)


async def wait_for_status(node: Node, status: int) -> None:
    """Poll gRPC health until it reports ``status`` (bounded by the scenario's timeout)."""
    while await node.grpc_status() != status:
        await asyncio.sleep(0.02)


def test_a_probe_that_raises_is_a_failed_condition_and_its_message_is_not_logged(
        node: Node, caplog: pytest.LogCaptureFixture):
    secret = "jane.doe@example.com"

    def broken() -> bool:
        raise RuntimeError(f"cannot parse {secret}")

    async def scenario() -> None:
        grpc_health = GrpcHealth()
        async with serving(node, grpc_health):
            readiness = Readiness(node.telemetry.health, {"model_loaded": broken},
                                  grpc_health.set_serving)
            assert not await readiness.evaluate()
            await assert_state(node, False, model_loaded=False)

    with caplog.at_level(logging.INFO, logger="sidecar.readiness"):
        run(scenario)
    assert "RuntimeError" in caplog.text and secret not in caplog.text

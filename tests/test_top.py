"""`logminer top`: frames rendered from a running sidecar's /metrics over real HTTP, with
records sent by the real fluent-logger client between the two polls."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import socket
import time

import pytest
from fluent import sender
from support import in_process_app, port_of

from sidecar import top
from sidecar.redact import corpus

FIRST, SECOND = 30, 50
SECONDS = 2.0  # what the test clock says passed between the two polls


def row(frame: str, label: str) -> tuple[float, float]:
    """(per second, total) of the frame row named ``label``."""
    match = re.search(rf"^{re.escape(label)} +(\S+) +(\S+)", frame, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{frame}"
    return float(match.group(1)), float(match.group(2))


def emit(port: int, lines: list[corpus.CorpusLine]) -> None:
    fluent = sender.FluentSender("bank", host="127.0.0.1", port=port)
    for line in lines:
        assert fluent.emit("app", {"message": line.text})
    fluent.close()


def test_once_prints_rates_between_two_polls_and_totals(tmp_path):
    lines = corpus.generate(FIRST + SECOND, seed=3)
    planted = {p.value for line in lines for p in line.planted}

    async def scenario() -> None:
        app = in_process_app(tmp_path)
        await app.start()
        registry = app.telemetry.registry

        def exported() -> float:
            return registry.get_sample_value("logminer_exporter_records_total",
                                             {"exporter": "memory"}) or 0.0

        def delivered(count: int) -> None:
            deadline = time.monotonic() + 30
            while exported() < count:
                assert time.monotonic() < deadline, "records were not delivered"
                time.sleep(0.02)

        def between_polls(seconds: float) -> None:
            assert seconds == 0.5
            emit(port_of(app, "forward"), lines[FIRST:])
            delivered(FIRST + SECOND)

        try:
            await asyncio.to_thread(emit, port_of(app, "forward"), lines[:FIRST])
            await asyncio.to_thread(delivered, FIRST)
            clock = iter([100.0, 100.0 + SECONDS])
            out = io.StringIO()
            url = f"http://127.0.0.1:{app.status.port}/metrics"
            assert await asyncio.to_thread(top.run, url, 0.5, once=True, out=out,
                                           sleep=between_polls, clock=lambda: next(clock)) == 0
            redactions = {s.labels["detector"]: s.value
                          for metric in registry.collect() for s in metric.samples
                          if s.name == "logminer_redaction_values_total"}
            anomalies = registry.get_sample_value("logminer_scoring_anomalies_total",
                                                  {"kind": "record"})
        finally:
            await app.stop()
        frame = out.getvalue()
        assert top.REDRAW not in frame  # --once is for scripts: no screen control
        assert "model tiny v1" in frame.splitlines()[0]
        for label in ("records in", "  forward", "records out", "  memory"):
            assert row(frame, label) == (SECOND / SECONDS, FIRST + SECOND)
        assert row(frame, "redactions")[1] == sum(redactions.values()) > 0
        shown = {d: row(frame, f"  {d}")[1] for d in redactions
                 if re.search(rf"^  {d} ", frame, re.MULTILINE)}
        assert shown == {d: redactions[d] for d in shown}
        assert len(shown) == min(top.TOP_DETECTORS, len(redactions))
        if len(redactions) > top.TOP_DETECTORS:
            assert f"  ... {len(redactions) - top.TOP_DETECTORS} more" in frame
        assert row(frame, "anomalies")[1] == anomalies
        assert not [value for value in planted if value in frame]

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_live_view_redraws_and_survives_an_unreachable_sidecar(tmp_path):
    async def scenario() -> None:
        app = in_process_app(tmp_path)
        await app.start()
        url = f"http://127.0.0.1:{app.status.port}/metrics"
        out, sleeps = io.StringIO(), []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 2:
                app.status.stop()  # the sidecar's endpoint goes away
            if len(sleeps) == 3:
                raise KeyboardInterrupt

        try:
            assert await asyncio.to_thread(top.run, url, 1.5, once=False, out=out,
                                           sleep=sleep) == 0
        finally:
            await app.stop()
        frames = out.getvalue().split(top.REDRAW)[1:]
        assert len(frames) == 3 and sleeps == [1.5, 1.5, 1.5]
        assert frames[0] == f"measuring {url} ...\n"
        assert frames[1].startswith(f"logminer top  {url}")
        assert frames[2].startswith(f"cannot read {url}:")
        assert "retrying every 1.5s" in frames[2]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_once_against_nothing_listening_raises_a_clear_oserror():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/metrics"
    with pytest.raises(OSError, match=f"cannot read {re.escape(url)}"):
        top.run(url, 0.1, once=True, out=io.StringIO(), sleep=lambda s: None)


def test_options():
    parser = argparse.ArgumentParser()
    top.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.url, args.interval, args.once) == ("http://127.0.0.1:8080/metrics", 2.0, False)
    args = parser.parse_args(["--url", "http://127.0.0.1:9/metrics", "--interval", "0.5",
                              "--once"])
    assert (args.url, args.interval, args.once) == ("http://127.0.0.1:9/metrics", 0.5, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--interval", "0"])

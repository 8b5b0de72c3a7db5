"""`logminer serve` end to end: the real fluent-logger client in, JSON lines out."""

import json
import os
import socket
import subprocess
import sys
import time

from fluent import asyncsender, sender
from support import ALL_PORTS_FREE, TEST_HASH_SECRET


def test_records_sent_with_fluent_logger_come_out_as_json_lines(sidecar_factory):
    sidecar = sidecar_factory(ALL_PORTS_FREE)
    port = sidecar.ports["forward"]
    sync = sender.FluentSender("app", host="127.0.0.1", port=port, nanosecond_precision=True)
    sent_times = []
    for i in range(50):
        t = time.time()
        sent_times.append(t)
        assert sync.emit_with_time("web", t, {"message": f"request {i} served", "status": 200})
    sync.close()
    overflowed = []
    async_sender = asyncsender.FluentSender(
        "batch", host="127.0.0.1", port=port, buffer_overflow_handler=overflowed.append)
    for i in range(50):
        assert async_sender.emit("job", {"log": f"job {i} done", "level": "info"})
    async_sender.close()  # flushes its queue before returning

    code, out, err = sidecar.stop()
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    web = [r for r in records if r["tag"] == "app.web"]
    jobs = [r for r in records if r["tag"] == "batch.job"]
    assert [r["body"] for r in web] == [f"request {i} served" for i in range(50)]
    assert all(r["attributes"] == {"status": 200} for r in web)
    # Nanosecond EventTime survives to the microsecond the client had.
    assert all(abs(r["time_ns"] - int(t * 1e9)) < 1000
               for r, t in zip(web, sent_times, strict=True))
    assert [r["body"] for r in jobs] == [f"job {i} done" for i in range(50)]
    assert all(r["severity"] == "info" for r in jobs)
    assert overflowed == []


def test_bad_config_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"data_dir: {tmp_path}\npipeline:\n  batch:\n    max_records: ten\n")
    result = subprocess.run([sys.executable, "-m", "sidecar.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'pipeline.batch.max_records: expected int >= 1 and <= 65536, got "ten"' in result.stderr


def test_port_in_use_exits_2_with_a_clear_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(ALL_PORTS_FREE.replace("forward: {port: 0}", f"forward: {{port: {port}}}")
                        + f"data_dir: {tmp_path}\n")
        result = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(path)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "LOGMINER_HASH_SECRET": TEST_HASH_SECRET})
    assert result.returncode == 2
    assert f"forward receiver cannot listen on 127.0.0.1:{port}" in result.stderr


def test_missing_hash_secret_refuses_to_start(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ALL_PORTS_FREE + f"data_dir: {tmp_path}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGMINER_")}
    result = subprocess.run([sys.executable, "-m", "sidecar.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "LOGMINER_HASH_SECRET is not set" in result.stderr

"""`logminer redact`, `audit`, `reveal` and `tokens` as a user runs them (subprocesses)."""

import asyncio
import os
import subprocess
import sys

from support import TEST_HASH_SECRET, in_process_app

from sidecar.record import Batch, Record
from sidecar.redact.store import generate_key

LINES = [
    "login ok for alice@example.com from 10.20.30.40",
    '{"user":"bob@bank.example","password":"hunter2","amount":12.5}',
    "card 4111 1111 1111 1111 declined, order 1234567890123456",
    "nothing to see here \xff",
]


def logminer(*args, stdin=b"", env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGMINER_")}
    return subprocess.run([sys.executable, "-m", "sidecar.cli", *args], input=stdin,
                          capture_output=True, timeout=120, env={**base, **(env or {})})


def test_redact_keeps_order_and_line_count_and_tokens_are_stable_across_processes():
    stdin = "\n".join(LINES).encode("utf-8", "surrogateescape") + b"\n\xc3\x28 invalid utf-8\n"
    env = {"LOGMINER_HASH_SECRET": TEST_HASH_SECRET}
    first = logminer("redact", "--stats", stdin=stdin, env=env)
    second = logminer("redact", stdin=stdin, env=env)
    other = logminer("redact", stdin=stdin, env={"LOGMINER_HASH_SECRET": "another-secret-xyz-123"})
    assert first.returncode == 0, first.stderr
    out = first.stdout.decode().splitlines()
    assert len(out) == len(LINES) + 1
    for raw in ("alice@example.com", "10.20.30.40", "bob@bank.example", "hunter2",
                "4111 1111 1111 1111"):
        assert raw not in first.stdout.decode()
    assert "order 1234567890123456" in out[2]  # a Luhn-invalid decoy survives
    assert out[3] == "nothing to see here \ufffd" or "nothing to see here" in out[3]
    assert first.stdout == second.stdout  # same secret, same tokens, in another process
    assert first.stdout != other.stdout
    stats = first.stderr.decode()
    assert "EMAIL" in stats and "CARD" in stats and "SECRET" in stats


def test_redact_refuses_to_run_without_a_secret():
    result = logminer("redact", stdin=b"x\n")
    assert result.returncode == 2
    assert b"LOGMINER_HASH_SECRET is not set" in result.stderr


def test_audit_passes_on_the_default_detectors():
    result = logminer("audit", "--lines", "1500", "--seed", "7")
    assert result.returncode == 0, result.stdout.decode()
    assert b"PASS" in result.stdout


def test_token_store_reveal_and_rotation_round_trip(tmp_path):
    key, new_key = generate_key(), generate_key()
    config_text = (f"token_store: {{enabled: true, path: {tmp_path / 'tokens'}}}\n"
                   "receivers: {forward: {enabled: false}, otlp: {enabled: false}, "
                   "grpc: {enabled: false}, lumberjack: {enabled: false}}\n"
                   "http: {enabled: false}\n")

    async def run_sidecar():
        from support import TINY_BUNDLE
        app = in_process_app(tmp_path / "data",
                             config_text + f"scoring: {{model_dir: {TINY_BUNDLE}}}\n",
                             token_store_key=key.encode())
        await app.start()
        try:
            await app.pipeline.submit(Batch([Record(body="wire to carol@example.org")]))
            await app.memory.wait_for(1, timeout=10)
        finally:
            await app.stop()
        return app.memory.records[0].body

    body = asyncio.run(run_sidecar())
    token = body.split()[-1]
    assert token.startswith("<EMAIL:")
    assert b"carol@example.org" not in (tmp_path / "tokens").read_bytes()

    store = ["--store", str(tmp_path / "tokens")]
    revealed = logminer("reveal", token, *store, env={"LOGMINER_TOKEN_STORE_KEY": key})
    assert revealed.returncode == 0, revealed.stderr
    assert revealed.stdout.decode() == f"{token}\tcarol@example.org\n"
    assert b"carol@example.org" not in revealed.stderr  # the log line counts, never shows

    (tmp_path / "new.key").write_text(new_key)
    rotated = logminer("tokens", "rotate", "--new-key-file", str(tmp_path / "new.key"), *store,
                       env={"LOGMINER_TOKEN_STORE_KEY": key})
    assert rotated.returncode == 0, rotated.stderr
    old = logminer("reveal", token, *store, env={"LOGMINER_TOKEN_STORE_KEY": key})
    assert old.returncode == 2 and b"carol" not in old.stdout + old.stderr
    new = logminer("reveal", token, *store, env={"LOGMINER_TOKEN_STORE_KEY": new_key})
    assert new.stdout.decode() == f"{token}\tcarol@example.org\n"
    unknown = logminer("reveal", "<EMAIL:0000:0000000000000000>", *store,
                       env={"LOGMINER_TOKEN_STORE_KEY": new_key})
    assert unknown.returncode == 1

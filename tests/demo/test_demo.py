"""`logminer demo` as a newcomer runs it, and its pass/fail judgement."""

import os
import subprocess
import sys

from sidecar.demo.run import BANK_TAG, Outcome, Sent, check
from sidecar.record import Record
from sidecar.scoring.sessions import SessionKeyer


def test_demo_exits_0_prints_a_summary_and_writes_the_report(tmp_path):
    report = tmp_path / "report.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGMINER_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "demo", "--report", str(report),
         "--bank-lines", "200"], capture_output=True, text=True, timeout=300, env=env,
        cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "EPHEMERAL hash secret" in out
    assert "result: PASS" in out and "precision" in out and "recall" in out
    assert "redactions per detector: " in out and "EMAIL" in out
    page = report.read_text()
    assert page.count("<svg") == 3 and "PASS" in page
    assert "Before / after" in page and "&lt;EMAIL:" in page


def outcome(body):
    sent = Sent(records=[(BANK_TAG, {"message": "pay alice@example.com", "demo_id": 0})],
                planted=[(0, "EMAIL", "alice@example.com")])
    arrived = [Record(body=body, tag="sanitized." + BANK_TAG, attributes={"demo_id": 0})]
    return Outcome(sent, arrived, [], 1.0, SessionKeyer("stream"))


def test_check_names_a_planted_value_that_survived_and_missing_records():
    assert check(outcome("pay <EMAIL:ab12:0011223344556677>")) == []
    assert check(outcome("pay alice@example.com")) == [
        "1 planted EMAIL value(s) reached downstream unredacted"]
    empty = outcome("x")
    empty.arrived.clear()
    assert check(empty) == ["1 record(s) did not arrive downstream"]

"""Real log lines (a tiny Loghub slice): addresses go, look-alikes stay."""

from __future__ import annotations

from pathlib import Path

from sidecar.redact import TOKEN_PATTERN, RedactionSettings, Redactor

DATA = Path(__file__).parent.parent / "testdata" / "redact"


def test_loghub_slice_matches_reviewed_output():
    redactor = Redactor(RedactionSettings(), b"loghub-slice-secret-0123456789ab")
    lines = (DATA / "loghub_slice.log").read_text(encoding="utf-8").splitlines()
    expected = (DATA / "loghub_slice.expected").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        out, _ = redactor.redact_text(line)
        assert TOKEN_PATTERN.sub(lambda match: f"<{match.group(1)}>", out) == want

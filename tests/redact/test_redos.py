"""Hostile input: 100k-character runs must come out right (linear-time engine, no timing here).

Each case states what the output must be; the suite finishing quickly is the evidence that
nothing backtracks (a catastrophic case would take hours). Throughput is measured in bench/.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sidecar.redact import REDACTED, TOKEN_PATTERN, RedactionSettings, Redactor

N = 100_000
REDACTOR = Redactor(RedactionSettings(), b"redos-tests-secret-0123456789abc")

UNCHANGED = [
    "a" * N,
    "@" * N,
    "1" * N,
    "=" * N,
    " " * N,
    ":" * N,
    "." * N,
    "-" * N,
    "<" * N,
    '"' * N,
    "'" * N,
    "\\" * N,
    "{" * N,
    "[" * N,
    "%40" * (N // 3),
    "a@" * (N // 2),
    "a." * (N // 2),
    "1 " * (N // 2),
    "1-" * (N // 2),
    "1." * (N // 2),
    "1:" * (N // 2),
    "::" * (N // 2),
    "+1 " * (N // 3),
    "AKIA" * (N // 4),
    "eyJ" * (N // 3),
    "<REDACTED>" * (N // 10),
    "<A:0000:0000000000000000>" * (N // 25),
    "[" * 5000 + "]" * 5000,  # nesting deeper than the JSON parser allows: plain text
    "Bearer " * (N // 7),
    "password" * (N // 8),
    "4111 " * (N // 5),  # Luhn-invalid as any window: 4111411141114111...
]


@pytest.mark.parametrize("text", UNCHANGED, ids=lambda text: f"{text[:12]!r}x{len(text)}")
def test_hostile_runs_without_findings_pass_through(text):
    out, counts = REDACTOR.redact_text(text)
    assert out == text
    assert not counts


def _types(text: str) -> Counter[str]:
    return Counter(match.group(1) for match in TOKEN_PATTERN.finditer(text))


def test_many_matches_are_all_replaced():
    text = "ab@cd.ef " * (N // 9)
    out, counts = REDACTOR.redact_text(text)
    assert "@" not in out
    assert counts == {"EMAIL": N // 9} == _types(out)


def test_many_cards_in_one_run():
    text = "4111 1111 1111 1111 " * (N // 20)
    out, counts = REDACTOR.redact_text(text)
    assert counts == {"CARD": N // 20}
    assert not any(ch.isdigit() for ch in TOKEN_PATTERN.sub("", out))


@pytest.mark.parametrize(
    ("text", "gone", "types"),
    [
        # the value is everything after the first '='
        ("password=" * (N // 9), "=password", {"SECRET": 1}),
        ("x" * N + "@" + "y" * N + ".com", "@", {"EMAIL": 1}),
        ("-----BEGIN RSA PRIVATE KEY-----" + "A" * N, "AAAA", {"PRIVATE_KEY": 1}),  # unterminated
        ("eyJ" + "a" * N + "." + "b" * N + ".", "eyJ", {"JWT": 1}),
        ("account " * (N // 8) + "12345678", "12345678", {"ACCOUNT": 1}),
        ("://" + "u" * N + ":" + "p" * N + "@host", "pppp", {"URL_CREDENTIALS": 1}),
        ("token=abc" + "}" * N, "abc", {"SECRET": 1}),  # closers trimmed in linear time
    ],
    ids=["keys", "long-email", "pem", "jwt", "account", "url", "closers"],
)
def test_hostile_single_findings(text, gone, types):
    out, counts = REDACTOR.redact_text(text)
    assert counts == types == _types(out)
    assert gone not in out


def test_deep_json_is_bounded():
    deep = "[" * 900 + '"a@example.com"' + "]" * 900
    out, counts = REDACTOR.redact_text(deep)
    # Either parsed and walked or, past the recursion limit, masked whole: never raw.
    assert "a@example.com" not in out
    assert out == REDACTED or counts == {"EMAIL": 1}


def test_wide_json_body():
    body = json.dumps({f"k{i}": f"user{i}@example.com" for i in range(5000)})
    out, counts = REDACTOR.redact_text(body)
    assert counts == {"EMAIL": 5000}
    assert "@" not in out

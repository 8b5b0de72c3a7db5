"""Keyed tokens: exact format, independent HMAC check, stability, key id, cache, hook."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from sidecar.redact import REDACTED, TOKEN_PATTERN, RedactionSettings, Redactor, Tokenizer, key_id

SECRET = b"token-tests-secret-0123456789abc"
OTHER_SECRET = b"another-secret-for-rotation-0001"


def _expected(secret: bytes, type_: str, normalised: str) -> str:
    kid = hmac.new(secret, b"logminer-key-id", hashlib.sha256).hexdigest()[:4]
    tok = hmac.new(secret, type_.encode() + b"\x00" + normalised.encode(), hashlib.sha256)
    return f"<{type_}:{kid}:{tok.hexdigest()[:16]}>"


def test_token_matches_independent_hmac_computation():
    tokenizer = Tokenizer(SECRET)
    assert tokenizer.token("EMAIL", "bob@example.com", "Bob@Example.com") == _expected(
        SECRET, "EMAIL", "bob@example.com"
    )
    assert tokenizer.key_id == key_id(SECRET) == _expected(SECRET, "X", "")[3:7]


def test_redactor_output_uses_normalised_value():
    out, _ = Redactor(RedactionSettings(), SECRET).redact_text("to Bob@Example.com")
    assert out == "to " + _expected(SECRET, "EMAIL", "bob@example.com")


def test_token_pattern_recognises_tokens_only():
    token = Tokenizer(SECRET).token("CARD", "4111111111111111", "4111 1111 1111 1111")
    match = TOKEN_PATTERN.fullmatch(token)
    assert match is not None
    assert match.group(1) == "CARD" and match.group(2) == key_id(SECRET)
    assert TOKEN_PATTERN.fullmatch(REDACTED) is None
    assert TOKEN_PATTERN.fullmatch("<card:abcd:0123456789abcdef>") is None
    assert TOKEN_PATTERN.fullmatch("<CARD:abcd:0123456789abcde>") is None


def test_other_secret_changes_token_and_key_id():
    a = Tokenizer(SECRET).token("SSN", "123456789", "123-45-6789")
    b = Tokenizer(OTHER_SECRET).token("SSN", "123456789", "123-45-6789")
    assert a != b
    assert a.split(":")[1] != b.split(":")[1]  # the rotation is visible through the key id


def test_type_is_part_of_the_hmac():
    tokenizer = Tokenizer(SECRET)
    a = tokenizer.token("ACCOUNT", "12345678", "12345678")
    b = tokenizer.token("PHONE", "12345678", "12345678")
    assert a.split(":")[2] != b.split(":")[2]


def test_tokens_are_stable_across_processes():
    text = "user=alice@example.com card=4111111111111111"
    here, _ = Redactor(RedactionSettings(), SECRET).redact_text(text)
    code = (
        "import sys\n"
        "from sidecar.redact import Redactor, RedactionSettings\n"
        f"print(Redactor(RedactionSettings(), {SECRET!r}).redact_text({text!r})[0])\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert there == here
    assert "alice" not in here


@pytest.mark.parametrize("secret", [b"", b"short", b"x" * 15])
def test_short_secret_is_refused_without_quoting_it(secret):
    with pytest.raises(ValueError, match="at least 16 bytes") as info:
        Redactor(RedactionSettings(), secret)
    if secret:
        assert secret.decode() not in str(info.value)


def test_secret_must_be_bytes():
    with pytest.raises(TypeError):
        Tokenizer("a-string-secret-of-enough-length")  # type: ignore[arg-type]


def test_hook_runs_once_per_new_token_with_the_original():
    seen: list[tuple[str, str]] = []
    redactor = Redactor(RedactionSettings(), SECRET, on_token=lambda t, o: seen.append((t, o)))
    first, _ = redactor.redact_text("a 4111 1111 1111 1111 b")
    second, _ = redactor.redact_text("a 4111-1111-1111-1111 b")
    assert first == second
    assert len(seen) == 1
    token, original = seen[0]
    assert TOKEN_PATTERN.fullmatch(token) and original == "4111 1111 1111 1111"


def test_cache_is_lru_and_can_be_disabled():
    seen: list[str] = []
    tokenizer = Tokenizer(SECRET, cache_size=2, on_token=lambda t, o: seen.append(o))
    for value in ("a", "b", "a", "c", "a", "b"):
        tokenizer.token("X", value, value)
    # "a" stays cached (recently used); "b" was evicted by "c", so it is computed twice.
    assert seen == ["a", "b", "c", "b"]
    uncached: list[str] = []
    tokenizer = Tokenizer(SECRET, cache_size=0, on_token=lambda t, o: uncached.append(o))
    tokenizer.token("X", "a", "a")
    tokenizer.token("X", "a", "a")
    assert uncached == ["a", "a"]


def test_failing_hook_does_not_poison_the_cache():
    calls = []

    def hook(token: str, original: str) -> None:
        calls.append(token)
        if len(calls) == 1:
            raise OSError("store unavailable")

    tokenizer = Tokenizer(SECRET, on_token=hook)
    with pytest.raises(OSError):
        tokenizer.token("X", "v", "v")
    tokenizer.token("X", "v", "v")
    assert len(calls) == 2

"""Keyed deterministic tokens: ``<TYPE:kid:tok>``.

Strategy: a detected value is replaced by a token derived from HMAC-SHA256 under the
hash secret, so one value always yields one token (joins and sessions
keep working) while a dictionary attack without the secret is hopeless. ``kid`` is
the first 2 bytes of HMAC(secret, b"logminer-key-id") in hex, so a rotated secret is
visible in the output; ``tok`` is the first 8 bytes of HMAC(secret, TYPE 0x00 value)
in hex. HMAC is the main per-value cost after the scan (the standard library's
OpenSSL-backed ``hmac.digest``: ~2.5 us per value here against ~14 us for
pycryptodome's ``HMAC``, byte-identical output), so results sit in an LRU
dict; the optional ``on_token`` hook (the encrypted token store) runs on each
computation, i.e. on cache misses (values over 1024 characters are never cached).
"""

from __future__ import annotations

import hmac
import re
from collections import OrderedDict
from collections.abc import Callable

#: Recognises every keyed token this module emits (the template miner treats them as variables).
TOKEN_PATTERN = re.compile(r"<([A-Z][A-Z0-9_]*):([0-9a-f]{4}):([0-9a-f]{16})>")

#: Fail-closed replacement for a whole field.
REDACTED = "<REDACTED>"

#: Token TYPE names: upper case, digits and underscores, starting with a letter.
TYPE_NAME_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*")

MIN_SECRET_BYTES = 16

_KEY_ID_MESSAGE = b"logminer-key-id"
# Longer values are rare (PEM blocks) and would let hostile input bloat the cache.
_MAX_CACHED_CHARS = 1024

TokenHook = Callable[[str, str], None]


def is_token(text: str) -> bool:
    """True if ``text`` is exactly one token or ``<REDACTED>``."""
    return text == REDACTED or TOKEN_PATTERN.fullmatch(text) is not None


def key_id(secret: bytes) -> str:
    """Return the 4-hex-char key id of ``secret`` (first 2 bytes of its key-id HMAC)."""
    return hmac.digest(secret, _KEY_ID_MESSAGE, "sha256").hex()[:4]


class Tokenizer:
    """Turns (TYPE, normalised value) into ``<TYPE:kid:tok>``, with an LRU cache.

    ``secret`` must be bytes of at least 16 bytes (ValueError otherwise; the message
    never quotes the secret). ``on_token(token, original)`` is called whenever a token
    is computed rather than served from the cache; if it raises, the token is not
    cached and the exception propagates (the redactor then fails closed).
    """

    def __init__(
        self, secret: bytes, *, cache_size: int = 65536, on_token: TokenHook | None = None
    ) -> None:
        if not isinstance(secret, (bytes, bytearray)):
            raise TypeError("hash secret must be bytes")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"hash secret must be at least {MIN_SECRET_BYTES} bytes (got {len(secret)})"
            )
        self._secret = bytes(secret)
        self.key_id = key_id(self._secret)
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._on_token = on_token

    def token(self, type_: str, normalised: str, original: str) -> str:
        """Token for ``normalised`` (of kind ``type_``); ``original`` only feeds ``on_token``."""
        cache = self._cache
        cache_key = (type_, normalised)
        token = cache.get(cache_key)
        if token is not None:
            cache.move_to_end(cache_key)
            return token
        message = type_.encode("ascii") + b"\x00" + normalised.encode("utf-8", "surrogatepass")
        digest = hmac.digest(self._secret, message, "sha256").hex()
        token = f"<{type_}:{self.key_id}:{digest[:16]}>"
        if self._on_token is not None:
            self._on_token(token, original)
        if self._cache_size > 0 and len(normalised) <= _MAX_CACHED_CHARS:
            cache[cache_key] = token
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return token

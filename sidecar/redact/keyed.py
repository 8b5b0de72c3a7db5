"""Key-context detectors: values named by their key (``password=...``, ``"account": 1234...``).

Strategy: one table of KeyedRules (TYPE, key words, value shape) serves text and parsed
structures alike, so a value gets the same token in ``acct=12345678`` and in
``{"acct": "12345678"}``. In text each rule becomes one RE2 pattern: key, separator,
value, covering key=value, ``key: value``, ``key => value``, JSON, JSON escaped inside
a string, query strings (also %3D-encoded) and XML elements; secrets are also read after
command-line flags (``--password x``) and in SQL (``IDENTIFIED BY 'x'``). Keys match as
suffixes (``db_password``, ``clientSecret``) and case-insensitively; ``token_type`` or
``password_expiry`` do not end in a key word and are left alone. In JSON and attribute
maps ``classify`` maps a key to its rule: secrets are replaced whole whatever their
shape (a whole object or array included), ids only when the whole value has the rule's
shape (otherwise the value is scanned as text).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import re2

from sidecar.redact import checks
from sidecar.redact.detectors import Detector, Extract, Finding, Spans, normalise
from sidecar.redact.tokens import is_token

_AUTH_SCHEMES = ("bearer", "basic", "token")
# Already masked or empty, or a lone opener: "secret": [ starts a structure, not a value.
_PLACEHOLDERS = frozenset(
    {"null", "none", "nil", "undefined", "redacted", "[redacted]", "[filtered]", "[", "{", "("}
)
_CLOSERS = ((b")", b"("), (b"]", b"["), (b"}", b"{"))
_TRIMMABLE = frozenset(b")]}\\")
_CACHE_LIMIT = 4096
_CACHED_KEY_CHARS = 256


def _has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


def _phone_digits(text: str) -> bool:
    return 7 <= len(checks.digits_of(text)) <= 15


@dataclass(frozen=True)
class KeyedRule:
    """Values after a key matching ``keys`` become ``type`` tokens.

    ``value`` is the RE2 shape the value must have (None: anything, i.e. a secret);
    ``loose`` lets text separate key and value by blanks alone (``Account No. 1234``);
    ``check`` is an extra test on the value.
    """

    name: str
    type: str
    keys: str
    value: str | None = None
    loose: bool = False
    check: Callable[[str], bool] | None = None


_NUMBER = r"(?:[_ -]?(?:no|num|number|nr))?"
_SECRET_WORDS = r"passw(?:or)?ds?|passphrase|pwd|secret|token|api[ _-]?key"

#: In priority order: the first rule whose keys match names the TYPE.
RULES: tuple[KeyedRule, ...] = (
    KeyedRule("auth_header", "AUTH", r"(?:proxy[_-]?)?authorization"),
    KeyedRule(
        "aws",
        "AWS_SECRET",
        r"aws[_-]?secret(?:[_-]?access)?(?:[_-]?key)?|secret[_-]?access[_-]?key",
    ),
    KeyedRule(
        "secret",
        "SECRET",
        _SECRET_WORDS + r"|credentials?|(?:\b|_)(?:pw|pass)|(?-i:[a-z0-9](?:Pass|Pw))"
        r"|cookie|j?session[_-]?id|cvv2?|cvc2?|pin"
        r"|(?:access|secret|private|signing|encryption|master|account|auth(?:entication)?)"
        r"[ _-]?key",
    ),
    KeyedRule(
        "ssn",
        "SSN",
        r"ssn|social[_ -]?security" + _NUMBER,
        r"[0-9]{3}[ -]?[0-9]{2}[ -]?[0-9]{4}",
    ),
    KeyedRule(
        "national_id",
        "NATIONAL_ID",
        r"national[_ -]?id|nino|nin|tax[_ -]?id|tin|passport" + _NUMBER
        + r"|driver'?s?[_ -]?licen[cs]e" + _NUMBER,
        r"[A-Za-z0-9][A-Za-z0-9-]{3,}",
        check=_has_digit,
    ),
    KeyedRule(
        "account",
        "ACCOUNT",
        r"(?:account|acct|a/c)(?:[ _.-]?(?:no|num|number|nr|id))?\.?"
        r"|routing" + _NUMBER + r"|sort[ _-]?code|bsb",
        r"[0-9](?:[ -]?[0-9]){5,}",
        loose=True,
    ),
    KeyedRule(
        "phone",
        "PHONE",
        r"phone" + _NUMBER + r"|tel(?:ephone)?|mobile" + _NUMBER + r"|msisdn|cell(?:phone)?|fax",
        r"\+?[0-9][0-9().-]{5,}[0-9]",
        check=_phone_digits,
    ),
    KeyedRule(
        "date_of_birth",
        "DOB",
        r"dob|date[_ -]?of[_ -]?birth|birth[_ -]?date|birthday",
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}",
    ),
)  # fmt: skip

_SEP = r"""\\?["']?[ \t]*(?:=>|[:=]|%3[Dd])[ \t\r\n]*"""
_LOOSE_SEP = r"""\\?["']?(?:[ \t]*(?:=>|[:=#]))?[ \t]*"""
_OPEN_QUOTE = r"""(?:\\?["'][ \t]*)?"""
# Groups: 1 "double-quoted", 2 'single-quoted', 3 \"escaped-quoted\", 4 bare (after an
# optional auth scheme), 5 <key>xml element</key>.
_SECRET_VALUE = (
    r'(?:' + _SEP + r'(?:"((?:[^"\\\r\n]|\\.)*)"'
    r"|'([^'\r\n]*)'"
    r'|\\"((?:[^"\\\r\n]|\\[^"\r\n])*)\\"'
    r"|(?:(?:" + "|".join(_AUTH_SCHEMES) + r")[ \t]+)?([^\s\"',;&]+))"
    r"|(?:\s[^<>\r\n]*)?>([^<\r\n]+)</)"
)  # fmt: skip
_SECRET_BARE = 4
# Command-line flags ("--db-password x", "--token 'x'"): groups 1 "..", 2 '..', 3 bare.
_CLI_FLAG = (
    r"(?i)(?:^|\s)--?(?:[a-z0-9]+[_-])*(?:" + _SECRET_WORDS + r"|pass|pw)[ \t]+"
    r"""(?:"([^"\r\n]*)"|'([^'\r\n]*)'|([^\s"'-][^\s"']*))"""
)
_CLI_BARE = 3
# SQL: IDENTIFIED [WITH plugin] BY x, [WITH] PASSWORD '..'. Groups: 1 '..', 2 "..", 3 bare
# (after IDENTIFIED BY only), 4 '..', 5 "..".
_SQL_PASSWORD = (
    r"(?i)\b(?:identified(?:[ \t]+with[ \t]+[a-z0-9_]+)?[ \t]+by[ \t]+"
    r"""(?:'([^'\r\n]*)'|"([^"\r\n]*)"|([^\s;,'"()]+))"""
    r"""|password[ \t]+(?:'([^'\r\n]*)'|"([^"\r\n]*)"))"""
)
_SQL_BARE = 3


def is_placeholder(value: str) -> bool:
    """True for values already masked, tokens included, or empty (``***``, ``null``)."""
    stripped = value.strip()
    return (
        not stripped.strip("*")
        or stripped.lower() in _PLACEHOLDERS
        or (stripped[0] == "<" and is_token(stripped))
    )


def scheme_length(value: str) -> int:
    """Length of a leading ``Bearer ``/``Basic ``/``token `` prefix of ``value`` (else 0)."""
    head, blank, rest = value.partition(" ")
    if blank and head.lower() in _AUTH_SCHEMES and rest.strip():
        return len(value) - len(rest.lstrip(" "))
    return 0


def _trim_bare(buf: bytes, start: int, end: int) -> int:
    # A bare value may have run into the closing brackets of its container
    # ("User{password=x}") or into the backslash of an escaped closing quote.
    if buf[end - 1] not in _TRIMMABLE:
        return end
    value = buf[start:end]
    balance = {closer: value.count(closer) - value.count(opener) for closer, opener in _CLOSERS}
    while end > start and buf[end - 1 : end] in balance and balance[buf[end - 1 : end]] > 0:
        balance[buf[end - 1 : end]] -= 1
        end -= 1
    if end > start and buf[end - 1 : end + 1] == b'\\"':
        end -= 1
    return end


def _secret_extract(type_: str, bare: int) -> Extract:
    """Extract for alternatives of quoted (scheme kept readable) or ``bare`` values."""

    def extract(buf: bytes, spans: Spans) -> list[Finding]:
        group = next(index for index in range(1, len(spans)) if spans[index][0] >= 0)
        start, end = spans[group]
        if group == bare:
            end = _trim_bare(buf, start, end)
        raw = buf[start:end].decode()
        if group != bare:
            skip = scheme_length(raw)
            start += skip
            raw = raw[skip:]
        if is_placeholder(raw):
            return []
        return [Finding(start, end, type_, normalise(type_, raw))]

    return extract


def _shaped_extract(rule: KeyedRule) -> Extract:
    def extract(buf: bytes, spans: Spans) -> list[Finding]:
        start, end = spans[1]
        raw = buf[start:end].decode()
        if rule.check is not None and not rule.check(raw):
            return []
        return [Finding(start, end, rule.type, normalise(rule.type, raw))]

    return extract


def _text_detectors(rule: KeyedRule) -> list[Detector]:
    keys = "(?i)(?:" + rule.keys + ")"
    if rule.value is None:
        detectors = [
            Detector(
                rule.name, (keys + _SECRET_VALUE).encode(), _secret_extract(rule.type, _SECRET_BARE)
            )
        ]
        if rule.type == "SECRET":
            detectors.append(
                Detector(rule.name, _CLI_FLAG.encode(), _secret_extract(rule.type, _CLI_BARE))
            )
            detectors.append(
                Detector(rule.name, _SQL_PASSWORD.encode(), _secret_extract(rule.type, _SQL_BARE))
            )
        return detectors
    separator = _LOOSE_SEP if rule.loose else _SEP
    pattern = keys + separator + _OPEN_QUOTE + "(" + rule.value + ")"
    return [Detector(rule.name, pattern.encode(), _shaped_extract(rule))]


class KeyedRules:
    """The enabled keyed rules, as text detectors and as a key classifier.

    ``extra_secret_keys`` are literal key names added to the SECRET rule.
    """

    def __init__(self, enabled: frozenset[str], extra_secret_keys: Sequence[str] = ()) -> None:
        rules = []
        for rule in RULES:
            if rule.name not in enabled:
                continue
            if rule.type == "SECRET" and extra_secret_keys:
                extra = "|".join(re2.escape(key) for key in extra_secret_keys)
                rule = dataclasses.replace(rule, keys=rule.keys + "|" + extra)
            rules.append(rule)
        self.rules: tuple[KeyedRule, ...] = tuple(rules)
        self._key_patterns = [re2.compile("(?i)(?:" + rule.keys + r")\z") for rule in rules]
        self._value_patterns = [
            re2.compile(rule.value) if rule.value is not None else None for rule in rules
        ]
        self._classified: dict[str, int] = {}
        # Values only the walk gives their key's context: an array under any keyed key, an
        # object under a key naming a secret. Never matches when no rule is enabled.
        all_keys = "|".join(rule.keys for rule in rules) or r"\b\B"
        secret_keys = "|".join(rule.keys for rule in rules if rule.value is None)
        # Also name/value pairs whose name is a keyed key (Kubernetes env, HAR, ECS/SSM):
        # {"name": "DB_PASSWORD", "value": "..."}.
        self._needs_walk = re2.compile(
            rf'(?i)(?:{all_keys})"\s*:\s*\[\s*[^\s\]]'
            + (rf'|(?:{secret_keys})"\s*:\s*{{\s*[^\s}}]' if secret_keys else "")
            + rf'|"(?:name|key)"\s*:\s*"[^"\\]*(?:{all_keys})"'
        )

    def detectors(self) -> list[Detector]:
        """Text detectors of the rules, in priority order (the SECRET rule also reads
        command-line flags and SQL password clauses)."""
        return [detector for rule in self.rules for detector in _text_detectors(rule)]

    def needs_walk(self, json_text: bytes) -> bool:
        """True if raw JSON text has a keyed key over a non-empty array, or a key naming a
        secret over a non-empty object: their values need the key's context."""
        return self._needs_walk.search(json_text) is not None

    def classify(self, key: str) -> int:
        """Index of the first rule whose key words end ``key``, or -1 (cached per key)."""
        index = self._classified.get(key)
        if index is None:
            index = next(
                (i for i, pattern in enumerate(self._key_patterns) if pattern.search(key)), -1
            )
            if len(key) <= _CACHED_KEY_CHARS:
                if len(self._classified) >= _CACHE_LIMIT:
                    self._classified.clear()
                self._classified[key] = index
        return index

    def findings_for_value(self, index: int, value: str) -> list[Finding] | None:
        """What to replace in the whole ``value`` of a key classified as rule ``index``.

        Offsets are ``str`` indices into ``value``. Returns [] when nothing should be
        replaced (a placeholder), None when the value does not have the rule's shape
        and should be scanned as ordinary text instead.
        """
        rule = self.rules[index]
        shape = self._value_patterns[index]
        if shape is None:
            skip = scheme_length(value)
            if is_placeholder(value[skip:]):
                return []
            return [Finding(skip, len(value), rule.type, normalise(rule.type, value[skip:]))]
        stripped = value.strip()
        if shape.fullmatch(stripped) is None or (
            rule.check is not None and not rule.check(stripped)
        ):
            return None
        start = len(value) - len(value.lstrip())
        return [Finding(start, start + len(stripped), rule.type, normalise(rule.type, stripped))]

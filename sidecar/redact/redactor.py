"""The redaction stage: raw records in, sanitized records out, fail-closed.

Strategy: text is encoded to UTF-8 once, scanned once (``Scanner``) and spliced with
``<TYPE:kid:tok>`` tokens (``Tokenizer``). Strings holding a JSON object or array are
parsed, walked and re-serialised compactly. In JSON and attribute maps a key that
names a secret or an id (``keyed``) decides the TYPE of its whole value; the other
string values of one field are collected and scanned together in a single pass over
their newline-joined text (no detector matches across a newline; a finding that would
is handled by scanning the values one by one), which keeps a JSON record close to the
cost of one line. Keys are scanned too (maps keyed by e-mail exist); clean keys are
cached. Attribute and resource entries follow the attribute rules (drop/hash/keep/scan).

A *field* is the body or one top-level attribute or resource entry. If anything raises
while a field is redacted, the whole field becomes ``<REDACTED>``, ``failed`` is
counted and the record flagged; a text over the size bound becomes ``<REDACTED>`` and
counts as ``oversized``. Nothing raised or logged here quotes a raw value.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import re2

from sidecar.record import Flag, Record
from sidecar.redact import detectors as builtin
from sidecar.redact.detectors import Detector, Finding
from sidecar.redact.keyed import KeyedRules
from sidecar.redact.rules import AttributeRules
from sidecar.redact.scanner import Allowed, Scanner
from sidecar.redact.settings import RedactionSettings
from sidecar.redact.tokens import REDACTED, TokenHook, Tokenizer, is_token

_CLEAN_KEYS_LIMIT = 4096
_CACHED_KEY_CHARS = 256
# Unkeyed integers are scanned only from 7 digits up: no detected type is shorter.
_SCANNED_NUMBER = 1_000_000


def _unscanned_scalar(value: Any) -> bool:
    """A value ``_scalar`` leaves alone under an unkeyed key: None, bool, a small number."""
    return (value is None or isinstance(value, bool)
            or (isinstance(value, (int, float)) and abs(value) < _SCANNED_NUMBER))


def _compact(value: Any) -> str:
    """Canonical JSON of a structure that is hashed or tokenised as one value."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()
_dumps = _ENCODER.encode


def _parse_json(text: str) -> Any:
    """The JSON object or array ``text`` holds, else None."""
    try:
        parsed = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, (dict, list)) else None


class _Pending:
    """String values of one field waiting for the scan: where each goes, and its text."""

    __slots__ = ("holders", "slots", "texts")

    def __init__(self) -> None:
        self.holders: list[Any] = []
        self.slots: list[Any] = []
        self.texts: list[str] = []

    def add(self, holder: Any, slot: Any, text: str) -> None:
        self.holders.append(holder)
        self.slots.append(slot)
        self.texts.append(text)


class Redactor:
    """Replaces personal data and secrets in text, records and batches.

    ``secret`` is the hash secret (bytes, at least 16; ValueError otherwise).
    ``on_token(token, original)`` is called for each newly computed token (the token
    store hooks in there). Construction compiles every pattern (ValueError on a bad one).
    """

    def __init__(
        self, settings: RedactionSettings, secret: bytes, *, on_token: TokenHook | None = None
    ) -> None:
        self._tokens = Tokenizer(secret, cache_size=settings.token_cache_size, on_token=on_token)
        enabled = settings.detectors.enabled()
        if settings.ip_mode == "tokenize":
            enabled |= {"ip"}
        self._keyed = KeyedRules(enabled, settings.extra_secret_keys)
        self._allowed = Allowed(settings.allow.values, settings.allow.patterns)
        detectors: list[Detector] = [builtin.PROTECT]
        detectors += [
            builtin.custom(spec.type, spec.pattern, re2.compile(spec.pattern).groups)
            for spec in settings.custom
            if spec.pattern
        ]
        detectors += [detector for detector in builtin.BUILTIN if detector.name in enabled]
        detectors += self._keyed.detectors()
        self._scanner = Scanner(detectors, self._allowed)
        self._rules = AttributeRules(settings.attribute_rules, settings.default_action)
        self._max_bytes = settings.max_field_bytes
        self._clean_keys: set[str] = set()
        self._plain_keys: dict[str, bool] = {}

    @property
    def key_id(self) -> str:
        """The 4-hex-char id of the hash secret, as it appears in every token."""
        return self._tokens.key_id

    # -- entry points -------------------------------------------------------------------

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """Redact one text (a JSON object/array is handled as JSON); returns text and counts."""
        counts: Counter[str] = Counter()
        return self._field(counts, self._text, text), counts

    def redact_record(self, record: Record) -> None:
        """Redact body, attributes and resource of ``record`` in place.

        Counts go to ``record.redactions`` (per TYPE, plus ``failed``, ``oversized`` and
        ``dropped``); a failed field also adds ``Flag.REDACTION_FAILED``.
        """
        counts = record.redactions
        failed = counts["failed"]
        record.body = self._field(counts, self._text, record.body)
        if record.attributes:
            record.attributes = self._top_level(record.attributes, counts)
        if record.resource:
            record.resource = self._top_level(record.resource, counts)
        if counts["failed"] > failed:
            record.flags.add(Flag.REDACTION_FAILED)

    def redact_batch(self, records: Iterable[Record]) -> None:
        """Redact every record of a batch in place."""
        for record in records:
            self.redact_record(record)

    # -- fields and fail-closed ---------------------------------------------------------

    def _field(self, counts: Counter[str], redact: Callable[..., Any], *args: Any) -> Any:
        """``redact(*args, counts)``, or ``<REDACTED>`` and a ``failed`` count if it raises."""
        local: Counter[str] = Counter()
        try:
            result = redact(*args, local)
        except Exception:  # fail closed whatever went wrong; never log it: it may quote raw data
            counts["failed"] += 1
            return REDACTED
        if local:
            counts.update(local)
        return result

    def _top_level(self, mapping: dict[Any, Any], counts: Counter[str]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for index, (key, value) in enumerate(mapping.items()):
            try:
                name = key if isinstance(key, str) else str(key)
                if _unscanned_scalar(value) and self._plain_key(name):
                    out[name] = value  # fast path: what _attribute would return unchanged
                    continue
                if self._dropped(name, counts):
                    continue
            except Exception:  # fail closed: neither the key nor the value may pass
                counts["failed"] += 1
                out[f"{REDACTED}{index}"] = REDACTED
                continue
            new_key = self._field(counts, self._key, name)
            out[new_key] = self._field(counts, self._redact_entry, name, value)
        return out

    def _plain_key(self, name: str) -> bool:
        """A clean key under the default ``scan`` rule that names no secret (cached)."""
        plain = self._plain_keys.get(name)
        if plain is None:
            plain = (self._rules.rule_for(name).action == "scan"
                     and self._keyed.classify(name) < 0
                     and self._scan(name, Counter()) == name)
            if len(self._plain_keys) >= _CLEAN_KEYS_LIMIT:
                self._plain_keys.clear()
            self._plain_keys[name] = plain
        return plain

    def _dropped(self, path: str, counts: Counter[str]) -> bool:
        if self._rules.rule_for(path).action != "drop":
            return False
        counts["dropped"] += 1
        return True

    def _redact_entry(self, name: str, value: Any, counts: Counter[str]) -> Any:
        root: list[Any] = [None]
        pending = _Pending()
        self._attribute(root, 0, name, value, name, pending, counts)
        self._flush(pending, counts)
        return root[0]

    # -- structures: each walker stores its result in holder[slot] ----------------------

    def _attribute(
        self,
        holder: Any,
        slot: Any,
        key: str,
        value: Any,
        path: str,
        pending: _Pending,
        counts: Counter[str],
    ) -> None:
        """An attribute/resource value at dotted ``path``, after its rule's action."""
        rule = self._rules.rule_for(path)
        if rule.action == "keep":
            holder[slot] = value
        elif rule.action == "hash":
            holder[slot] = self._hash(value, rule.type, counts)
        elif self._is_secret_structure(key, value):
            holder[slot] = self._secret_structure(key, value, counts)
        elif isinstance(value, dict):
            inner: dict[Any, Any] = {}
            holder[slot] = inner
            for name, item in value.items():
                name = name if isinstance(name, str) else str(name)
                inner_path = f"{path}.{name}"
                if self._dropped(inner_path, counts):
                    continue
                self._attribute(
                    inner, self._key(name, counts), name, item, inner_path, pending, counts
                )
        elif isinstance(value, (list, tuple)):
            items: list[Any] = [None] * len(value)
            holder[slot] = items
            for index, item in enumerate(value):
                self._attribute(items, index, key, item, path, pending, counts)
        else:
            self._scalar(holder, slot, key, value, pending, counts)

    def _json(
        self,
        holder: Any,
        slot: Any,
        key: str | None,
        value: Any,
        pending: _Pending,
        counts: Counter[str],
    ) -> None:
        """A parsed JSON value found under ``key`` (None at the top)."""
        if isinstance(value, dict):
            inner: dict[str, Any] = {}
            holder[slot] = inner
            pair_key = self._pair_key(value)
            for name, item in value.items():
                new_name = self._key(name, counts)
                if self._is_secret_structure(name, item):
                    inner[new_name] = self._secret_structure(name, item, counts)
                else:
                    context = pair_key if pair_key is not None and name == "value" else name
                    self._json(inner, new_name, context, item, pending, counts)
        elif isinstance(value, list):
            items: list[Any] = [None] * len(value)
            holder[slot] = items
            for index, item in enumerate(value):
                self._json(items, index, key, item, pending, counts)
        else:
            self._scalar(holder, slot, key, value, pending, counts)

    def _scalar(
        self,
        holder: Any,
        slot: Any,
        key: str | None,
        value: Any,
        pending: _Pending,
        counts: Counter[str],
    ) -> None:
        holder[slot] = value
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, str):
            text = value
        elif isinstance(value, (int, float)):
            keyed = key is not None and self._keyed.classify(key) >= 0
            if not keyed and not abs(value) >= _SCANNED_NUMBER:  # NaN stays, too
                return
            # A card number that went through a float (JSON 4111111111111111.0) is digits.
            text = (str(int(value)) if isinstance(value, float) and value.is_integer()
                    else str(value))
        elif isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "replace")
            holder[slot] = text
        else:
            text = str(value)
            holder[slot] = text
        redacted = self._keyed_string(key, text, pending, counts)
        if redacted is not None and redacted != text:
            holder[slot] = redacted
        elif redacted is None:
            pending.add(holder, slot, text)

    def _keyed_string(
        self, key: str | None, text: str, pending: _Pending, counts: Counter[str]
    ) -> str | None:
        """``text`` redacted by its key's rule or as nested JSON; None: scan it as text."""
        if key is not None:
            index = self._keyed.classify(key)
            if index >= 0:
                findings = self._keyed.findings_for_value(index, text)
                if findings is not None:
                    return self._splice_str(text, self._specific(text, findings), counts)
        head = text[:1]
        if head == "{" or head == "[" or len(text) > self._max_bytes:
            return self._text(text, counts)
        return None

    def _specific(self, text: str, findings: list[Finding]) -> list[Finding]:
        """Keyed findings, re-typed when a pattern detector claims exactly the same value.

        In text the more specific detector wins on an equal span (``access_token=eyJ...``
        is a JWT); doing the same here keeps one value one token, in text and in JSON.
        """
        specific = []
        for finding in findings:
            encoded = text[finding.start : finding.end].encode()
            found = self._scanner.scan(encoded)
            if len(found) == 1 and found[0].start == 0 and found[0].end == len(encoded):
                finding = finding._replace(type=found[0].type, value=found[0].value)
            specific.append(finding)
        return specific

    def _pair_key(self, mapping: dict[str, Any]) -> str | None:
        """The keyed ``name``/``key`` of a name/value pair object, whose ``value`` it governs
        (``{"name": "DB_PASSWORD", "value": "..."}``), else None."""
        for field_name in ("name", "key"):
            candidate = mapping.get(field_name)
            if isinstance(candidate, str) and "value" in mapping \
                    and self._keyed.classify(candidate) >= 0:
                return candidate
        return None

    def _is_secret_structure(self, key: str, value: Any) -> bool:
        if not isinstance(value, (dict, list, tuple)) or not value:
            return False
        index = self._keyed.classify(key)
        return index >= 0 and self._keyed.rules[index].value is None

    def _secret_structure(self, key: str, value: Any, counts: Counter[str]) -> str:
        """The whole structure under a key naming a secret is the secret: one token."""
        text = _compact(value)
        findings = self._keyed.findings_for_value(self._keyed.classify(key), text)
        return self._splice_str(text, findings or [], counts)

    def _hash(self, value: Any, type_: str, counts: Counter[str]) -> Any:
        if isinstance(value, str) and is_token(value):
            return value
        normalised = value if isinstance(value, str) else _compact(value)
        counts[type_] += 1
        return self._tokens.token(type_, normalised, normalised)

    def _key(self, key: str, counts: Counter[str]) -> str:
        """A map key, scanned like text (maps keyed by e-mail exist); clean keys cached."""
        if key in self._clean_keys:
            return key
        redacted = self._scan(key, counts)
        if redacted == key and len(key) <= _CACHED_KEY_CHARS:
            if len(self._clean_keys) >= _CLEAN_KEYS_LIMIT:
                self._clean_keys.clear()
            self._clean_keys.add(key)
        return redacted

    # -- text ---------------------------------------------------------------------------

    def _text(self, text: str, counts: Counter[str]) -> str:
        """Free text, or JSON text when it holds an object or array."""
        buf = text.encode()
        if len(buf) > self._max_bytes:
            counts["oversized"] += 1
            return REDACTED
        head = text[:1]
        if head.isspace():
            head = text.lstrip()[:1]
        if head == "{" or head == "[":
            parsed = _parse_json(text)
            if parsed is not None:
                return self._json_text(text, buf, parsed, counts)
        findings = self._scanner.scan(buf)
        return self._splice(buf, 0, len(buf), findings, counts) if findings else text

    def _json_text(self, text: str, buf: bytes, parsed: Any, counts: Counter[str]) -> str:
        """JSON text, redacted and re-serialised compactly.

        Fast path: without backslashes every string reads the same in the raw text as
        parsed, so the raw text is scanned as a whole; a replacement outside a string
        (a number, a boolean under a secret key) breaks the JSON, and then the
        value-by-value walk decides instead, as it does when an array sits under a keyed
        key or an object under a key naming a secret (replaced whole).
        """
        if "\\" not in text and not self._keyed.needs_walk(buf):
            findings = self._scanner.scan(buf)
            if not findings:
                return _dumps(parsed)
            tentative: Counter[str] = Counter()
            reparsed = _parse_json(self._splice(buf, 0, len(buf), findings, tentative))
            if reparsed is not None:
                counts.update(tentative)
                return _dumps(reparsed)
        root: list[Any] = [None]
        pending = _Pending()
        self._json(root, 0, None, parsed, pending, counts)
        self._flush(pending, counts)
        return _dumps(root[0])

    def _scan(self, text: str, counts: Counter[str]) -> str:
        buf = text.encode()
        if len(buf) > self._max_bytes:
            counts["oversized"] += 1
            return REDACTED
        findings = self._scanner.scan(buf)
        return self._splice(buf, 0, len(buf), findings, counts) if findings else text

    def _flush(self, pending: _Pending, counts: Counter[str]) -> None:
        """Scan the pending values in one pass and write back those that change."""
        texts = pending.texts
        if not texts:
            return
        if len(texts) == 1 or any("\n" in text for text in texts):
            self._flush_each(pending, range(len(texts)), counts)
            return
        encoded = [text.encode() for text in texts]
        buf = b"\n".join(encoded)
        findings = self._scanner.scan(buf)
        if not findings:
            return
        starts = []
        position = 0
        for item in encoded:
            starts.append(position)
            position += len(item) + 1
        grouped: dict[int, list[Finding]] = {}
        for finding in findings:
            index = bisect_right(starts, finding.start) - 1
            if finding.end > starts[index] + len(encoded[index]):
                self._flush_each(pending, range(len(texts)), counts)
                return
            grouped.setdefault(index, []).append(finding)
        for index, found in grouped.items():
            start = starts[index]
            redacted = self._splice(buf, start, start + len(encoded[index]), found, counts)
            pending.holders[index][pending.slots[index]] = redacted

    def _flush_each(self, pending: _Pending, indices: Iterable[int], counts: Counter[str]) -> None:
        for index in indices:
            text = pending.texts[index]
            redacted = self._scan(text, counts)
            if redacted != text:
                pending.holders[index][pending.slots[index]] = redacted

    def _splice(
        self, buf: bytes, start: int, end: int, findings: list[Finding], counts: Counter[str]
    ) -> str:
        """``buf[start:end]`` decoded, with each finding (inside it) replaced by its token."""
        parts = []
        last = start
        for finding in findings:
            parts.append(buf[last : finding.start])
            original = buf[finding.start : finding.end].decode()
            parts.append(self._tokens.token(finding.type, finding.value, original).encode())
            counts[finding.type] += 1
            last = finding.end
        parts.append(buf[last:end])
        return b"".join(parts).decode()

    def _splice_str(self, text: str, findings: list[Finding], counts: Counter[str]) -> str:
        parts = []
        last = 0
        for finding in findings:
            original = text[finding.start : finding.end]
            if self._allowed.allows(original) or self._allowed.allows(finding.value):
                continue
            parts.append(text[last : finding.start])
            parts.append(self._tokens.token(finding.type, finding.value, original))
            counts[finding.type] += 1
            last = finding.end
        parts.append(text[last:])
        return "".join(parts)

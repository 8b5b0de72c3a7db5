"""Built-in pattern detectors: an RE2 pattern proposes, Python validates.

Strategy: a Detector pairs an RE2 pattern (linear time, no backtracking) with an
``extract`` function that validates each candidate (Luhn and issuer prefix, mod-97,
national-id check digits, address parsing, boundary rules) and returns Findings: byte
spans into the UTF-8 text, the token TYPE and the normalised value whose HMAC becomes
the token. Normalisation per TYPE (``NORMALISERS``) lets formatting variants of one
value share a token. Patterns never start with a counted repetition of a broad class:
that blows up RE2's lazily built DFA (measured 17x slower on one such pattern).
Key-context detectors (``password=...``, ``account 1234...``) live in ``keyed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sidecar.redact import checks

Spans = Sequence[tuple[int, int]]


class Finding(NamedTuple):
    """A value to replace: ``[start, end)`` offsets, TYPE, normalised value.

    An empty TYPE marks an existing token, which nothing may overlap.
    """

    start: int
    end: int
    type: str
    value: str


Extract = Callable[[bytes, Spans], list[Finding]]


@dataclass(frozen=True)
class Detector:
    """``pattern`` (RE2, bytes) finds candidates; ``extract`` turns a match into Findings.

    ``extract`` gets the scanned buffer and the match's group spans (``spans[0]`` is
    the whole match, ``(-1, -1)`` marks a group that did not take part).
    """

    name: str
    pattern: bytes
    extract: Extract


def _upper_alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum()).upper()


def _normalise_email(text: str) -> str:
    return text.replace("%40", "@").lower()


def normalise_phone(text: str) -> str:
    """E.164-like form: ``+`` and digits when the country is known, else the digits."""
    digits = checks.digits_of(text)
    if text.lstrip().startswith("+"):
        return "+" + digits
    if checks.nanp_valid(digits):
        return "+1" + digits
    if len(digits) == 11 and digits[0] == "1" and checks.nanp_valid(digits[1:]):
        return "+" + digits
    return digits


def _normalise_ipv6(text: str) -> str:
    return checks.ipv6_canonical(text) or text.lower()


#: TYPE -> normaliser of the raw value; types not listed keep the raw value.
NORMALISERS: dict[str, Callable[[str], str]] = {
    "EMAIL": _normalise_email,
    "CARD": checks.digits_of,
    "IBAN": _upper_alnum,
    "SSN": checks.digits_of,
    "UK_NINO": _upper_alnum,
    "BR_CPF": checks.digits_of,
    "ES_NIF": _upper_alnum,
    "NATIONAL_ID": _upper_alnum,
    "PHONE": normalise_phone,
    "ACCOUNT": checks.digits_of,
    "IPV6": _normalise_ipv6,
}


def normalise(type_: str, raw: str) -> str:
    """The value whose HMAC is the token of ``raw`` as a ``type_``."""
    normaliser = NORMALISERS.get(type_)
    return normaliser(raw) if normaliser is not None else raw


_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset(b"0123456789")
_GROUP_SEPARATORS = frozenset(b" -.")
_WORD = _ALNUM | frozenset(b"_")
_JOINERS = frozenset(b"-.")
# Digit-group layouts of printed card numbers; window sizes (in groups) tried longest first.
_CARD_LAYOUTS = frozenset(
    {
        (4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 4, 4, 3), (4, 4, 5), (4, 6, 4), (4, 6, 5),
        (4, 3, 3, 3),
    }
)  # fmt: skip
_CARD_WINDOW_SIZES = (5, 4, 3, 1)
_HOST_CHARS = _ALNUM | frozenset(b"_:.")
_KEY_CHARS = _ALNUM | frozenset(b"_-")
_USERINFO_STOP = frozenset(b" \t\r\n/@")
_USERINFO_LOOKBACK = 256
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _before(buf: bytes, start: int) -> int:
    return buf[start - 1] if start > 0 else -1


def _after(buf: bytes, end: int) -> int:
    return buf[end] if end < len(buf) else -1


def simple(type_: str, check: Callable[[str], bool] | None = None, group: int = 0) -> Extract:
    """Extract for detectors whose match (or ``group``) is the value, optionally checked."""

    def extract(buf: bytes, spans: Spans) -> list[Finding]:
        start, end = spans[group]
        if start >= end:
            return []
        raw = buf[start:end].decode()
        if check is not None and not check(raw):
            return []
        return [Finding(start, end, type_, normalise(type_, raw))]

    return extract


def protected(buf: bytes, spans: Spans) -> list[Finding]:
    """Existing tokens and ``<REDACTED>``: never redacted again, block overlapping finds."""
    start, end = spans[0]
    return [Finding(start, end, "", "")]


def _glued(buf: bytes, start: int, end: int) -> tuple[bool, bool]:
    """Whether ``[start, end)`` continues a word on the left / right.

    Adjacent letters or underscores glue, and so does a ``-`` or ``.`` with a word
    character beyond it ("blk_-6952...", "TXN5123...", "12.4111...", "...0123abc").
    """
    before, after = _before(buf, start), _after(buf, end)
    left = before in _WORD or (before in _JOINERS and _before(buf, start - 1) in _WORD)
    right = after in _WORD or (after in _JOINERS and _after(buf, end + 1) in _WORD)
    return left, right


def _card(buf: bytes, spans: Spans) -> list[Finding]:
    # The candidate is a run of digit groups joined by single spaces/dashes. Windows of
    # consecutive groups are tried, longest first: a lone group of 13-19 digits, or groups
    # laid out like a printed card (4-4-4-4, 4-6-5, ...). So "ref 12345 4111 1111 1111
    # 1111" still yields the card while "16:14:22.502 28601 28601" (a time, a pid, a tid)
    # does not. Groups glued to a word belong to an identifier (a block id, the digits
    # heading a hex hash), not to a card. Each start tries 4 windows: linear.
    start, end = spans[0]
    groups = buf[start:end].replace(b"-", b" ").replace(b"+", b" ").split(b" ")
    lengths = [len(group) for group in groups]
    offsets = [start]
    for length in lengths[:-1]:
        offsets.append(offsets[-1] + length + 1)
    glued_left, glued_right = _glued(buf, start, end)
    usable = len(groups) - glued_right
    found: list[Finding] = []
    first = 1 if glued_left else 0
    while first < usable:
        for size in _CARD_WINDOW_SIZES:
            last = first + size
            if last > usable or not _card_layout(lengths[first:last]):
                continue
            digits = b"".join(groups[first:last]).decode()
            if checks.card_valid(digits):
                stop = offsets[last - 1] + lengths[last - 1]
                found.append(Finding(offsets[first], stop, "CARD", digits))
                first = last
                break
        else:
            first += 1
    return found


def _card_layout(lengths: list[int]) -> bool:
    if len(lengths) == 1:
        return 13 <= lengths[0] <= 19
    return tuple(lengths) in _CARD_LAYOUTS


def _iban(buf: bytes, spans: Spans) -> list[Finding]:
    # The pattern runs greedily past the IBAN (e.g. into " EUR"); cut it at the country's
    # registered length and require that the cut falls on a word boundary.
    start, end = spans[0]
    text = buf[start:end].decode()
    length = checks.iban_length(text[:2])
    if length is None:
        return []
    kept = position = 0
    for part in text.split(" "):
        if kept + len(part) >= length:
            cut = position + length - kept
            break
        kept += len(part)
        position += len(part) + 1
    else:
        return []
    compact = text[:cut].replace(" ", "")
    if _after(buf, start + cut) in _ALNUM or not checks.iban_valid(compact):
        return []
    return [Finding(start, start + cut, "IBAN", compact)]


def _phone_international(buf: bytes, spans: Spans) -> list[Finding]:
    # "+CC ..." with 8-15 digits; the pattern may stop inside a digit group (it caps the
    # digit count), in which case fall back to the last whole group.
    start, end = spans[0]
    if _before(buf, start) in _ALNUM:
        return []
    text = buf[start:end].decode()
    if _after(buf, end) in _DIGITS:
        cut = max(text.rfind(" "), text.rfind("-"))
        if cut < 0:
            return []
        text = text[:cut].rstrip(" -(")
    if not 8 <= sum(ch.isdigit() for ch in text) <= 15:
        return []
    return [Finding(start, start + len(text), "PHONE", normalise_phone(text))]


def _in_digit_run(buf: bytes, start: int, end: int) -> bool:
    """True if ``[start, end)`` continues a run of digit groups ("3726 0275 3425 375")."""
    return (_before(buf, start) in _GROUP_SEPARATORS and _before(buf, start - 1) in _DIGITS) or (
        _after(buf, end) in _GROUP_SEPARATORS and _after(buf, end + 1) in _DIGITS
    )


def _phone_nanp(buf: bytes, spans: Spans) -> list[Finding]:
    start, end = spans[0]
    text = buf[start:end].decode()
    digits = checks.digits_of(text)
    if not checks.nanp_valid(digits) or _in_digit_run(buf, start, end):
        return []
    if not text.startswith("(") and text[3] != text[7]:
        return []
    return [Finding(start, end, "PHONE", "+1" + digits)]


def _email(buf: bytes, spans: Spans) -> list[Finding]:
    # "scheme://user:pass@host" holds "pass@host", which is URL userinfo, not an address.
    start, end = spans[0]
    if _before(buf, start) == ord(":"):
        scheme = buf.rfind(b"://", max(0, start - _USERINFO_LOOKBACK), start)
        if scheme >= 0 and not any(ch in _USERINFO_STOP for ch in buf[scheme + 3 : start]):
            return []
    raw = buf[start:end].decode()
    return [Finding(start, end, "EMAIL", _normalise_email(raw))]


def _phone_national(buf: bytes, spans: Spans) -> list[Finding]:
    # "020 7946 0958": a trunk 0, 10-11 digits, not a piece of a longer digit-group run.
    start, end = spans[0]
    digits = checks.digits_of(buf[start:end].decode())
    if not 10 <= len(digits) <= 11 or _in_digit_run(buf, start, end):
        return []
    return [Finding(start, end, "PHONE", digits)]


def _ipv4(buf: bytes, spans: Spans) -> list[Finding]:
    start, end = spans[0]
    text = buf[start:end].decode()
    if _before(buf, start) == ord(".") or (
        _after(buf, end) == ord(".") and _after(buf, end + 1) in _DIGITS
    ):
        return []
    if not checks.ipv4_valid(text):
        return []
    return [Finding(start, end, "IPV4", text)]


def _ipv6(buf: bytes, spans: Spans) -> list[Finding]:
    start, end = spans[0]
    if end - start < 3 or _before(buf, start) in _HOST_CHARS or _after(buf, end) in _HOST_CHARS:
        return []
    canonical = checks.ipv6_canonical(buf[start:end].decode())
    if canonical is None:
        return []
    return [Finding(start, end, "IPV6", canonical)]


def _auth_scheme(buf: bytes, spans: Spans) -> list[Finding]:
    # "Bearer <credential>": the scheme stays readable, the credential becomes a token.
    # Plain words ("Bearer token missing", "Basic authentication") are not credentials.
    start, end = spans[1]
    if _after(buf, end) in _WORD:  # "bearer password_expiry_days=90": a key=value, not a token
        return []
    credential = buf[start:end].decode()
    if buf[spans[0][0] : spans[0][0] + 5].lower() == b"basic" and not _BASE64.issuperset(
        credential
    ):
        return []
    strong = any(not ch.isalpha() for ch in credential)
    if len(credential) < 8 or not (strong or len(credential) >= 20):
        return []
    return [Finding(start, end, "AUTH", credential)]


def _bounded(type_: str, tail: frozenset[int]) -> Extract:
    """Like ``simple`` but rejects a match followed by a byte of ``tail`` (cut-off keys)."""

    def extract(buf: bytes, spans: Spans) -> list[Finding]:
        start, end = spans[0]
        if _after(buf, end) in tail:
            return []
        return [Finding(start, end, type_, buf[start:end].decode())]

    return extract


def _url_credentials(buf: bytes, spans: Spans) -> list[Finding]:
    start, end = spans[1][0], spans[2][1]
    return [Finding(start, end, "URL_CREDENTIALS", buf[start:end].decode())]


_H = rb"[0-9A-Fa-f]{1,4}"
_IPV6 = (
    rb"(?:(?:" + _H + rb":){7}" + _H
    + rb"|(?:" + _H + rb"(?::" + _H + rb"){0,6})?::(?:" + _H + rb"(?::" + _H + rb"){0,6})?)"
    + rb"(?:(?:\.[0-9]{1,3}){3})?"
)  # fmt: skip


def _nino(text: str) -> bool:
    return checks.nino_valid(_upper_alnum(text))


def _cpf(text: str) -> bool:
    return checks.cpf_valid(checks.digits_of(text))


def _nif(text: str) -> bool:
    return checks.nif_valid(_upper_alnum(text))


def _ssn(text: str) -> bool:
    return checks.ssn_valid(checks.digits_of(text))


#: Built-in detectors in priority order: on equal spans the earlier one names the TYPE.
#: Each name is a switch of ``DetectorSwitches`` (the two IP detectors follow ``ip_mode``).
BUILTIN: tuple[Detector, ...] = (
    Detector(
        "private_key",
        rb"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?s:.)*?"
        rb"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\z)",
        simple("PRIVATE_KEY"),
    ),
    Detector("jwt", rb"\beyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){2,4}", simple("JWT")),
    Detector("url_credentials", rb"://([^\s/:@<>\"']*):([^\s/<>\"']+)@", _url_credentials),
    Detector("aws", rb"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b", simple("AWS_KEY")),
    Detector(
        "github",
        rb"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
        simple("GITHUB_TOKEN"),
    ),
    Detector(
        "gitlab",
        rb"\bgl(?:pat|dt|rt|oas|ptt|ft|imt|agent|soat|cbt|ffct|sa)-[A-Za-z0-9_-]{20,}",
        simple("GITLAB_TOKEN"),
    ),
    Detector(
        "slack",
        rb"\bxox[abposr]-[A-Za-z0-9-]{10,}|hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{8,}",
        simple("SLACK_TOKEN"),
    ),
    Detector(
        "stripe",
        rb"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|\bwhsec_[A-Za-z0-9]{20,}",
        simple("STRIPE_KEY"),
    ),
    Detector("google_api_key", rb"\bAIza[0-9A-Za-z_-]{35}", _bounded("GOOGLE_API_KEY", _KEY_CHARS)),
    Detector(
        "sendgrid",
        rb"\bSG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}",
        _bounded("SENDGRID_KEY", _KEY_CHARS),
    ),
    Detector("npm", rb"\bnpm_[A-Za-z0-9]{36}\b", simple("NPM_TOKEN")),
    Detector(
        "email",
        # \pL / \pN: internationalised addresses (josé@, @müller.de) are addresses too.
        rb"[\pL\pN._%+-]+(?:@|%40)[\pL\pN-]+(?:\.[\pL\pN-]+)*\.\pL{2,}",
        _email,
    ),
    Detector("iban", rb"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,32}", _iban),
    Detector("card", rb"[0-9](?:[ +-]?[0-9]){12,}", _card),  # '+': form-encoded spaces
    Detector("ssn", rb"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", simple("SSN", _ssn)),
    Detector(
        "national_id",
        rb"\b[A-CEGHJ-PR-TW-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b",
        simple("UK_NINO", _nino),
    ),
    Detector("national_id", rb"\b[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}\b", simple("BR_CPF", _cpf)),
    Detector("national_id", rb"\b(?:[0-9]{8}|[XYZ][0-9]{7})-?[A-Z]\b", simple("ES_NIF", _nif)),
    Detector("phone", rb"\+[1-9](?:[ ()-]{0,2}[0-9]){6,14}", _phone_international),
    Detector("phone", rb"(?:\([0-9]{3}\) ?|\b[0-9]{3}[-. ])[0-9]{3}[-. ][0-9]{4}\b", _phone_nanp),
    Detector(
        "phone",
        rb"\b0[1-9][0-9]{1,3}[ -][0-9]{3,4}[ -]?[0-9]{3,4}\b",
        _phone_national,
    ),
    Detector("ip", rb"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b", _ipv4),
    Detector("ip", _IPV6, _ipv6),
    Detector(
        "auth_header", rb"(?i)\b(?:bearer|basic|token)[ \t]+([A-Za-z0-9._~+/-]+=*)", _auth_scheme
    ),
)

#: Detector that marks existing tokens so re-redaction leaves them alone.
PROTECT = Detector(
    "protect", rb"<(?:[A-Z][A-Z0-9_]*:[0-9a-f]{4}:[0-9a-f]{16}|REDACTED)>", protected
)


def custom(type_: str, pattern: str, groups: int) -> Detector:
    """Detector for a configured pattern: group 1 is the value if the pattern has groups."""
    return Detector(f"custom:{type_}", pattern.encode(), simple(type_, group=1 if groups else 0))

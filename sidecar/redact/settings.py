"""Redaction settings: frozen dataclasses nested under the ``redaction:`` config key.

Strategy: follow the project's config-loader conventions (every field has a default,
a one-line ``doc`` and, for numbers, ``min``/``max`` metadata). Everything that can be
checked without the hash secret is checked here, at construction, so a bad config
fails at load with the offending item named. Secrets never live here: the hash secret
is passed to the Redactor separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import re2

from sidecar.redact.tokens import TYPE_NAME_PATTERN

Action = Literal["drop", "hash", "keep", "scan"]


def _doc(text: str, **bounds: int) -> dict[str, object]:
    return {"doc": text, **bounds}


def _check_type_name(type_: str, what: str) -> None:
    if not TYPE_NAME_PATTERN.fullmatch(type_):
        raise ValueError(f"{what}: type {type_!r} must match [A-Z][A-Z0-9_]*")


def _check_re2(pattern: str, what: str) -> None:
    options = re2.Options()
    options.log_errors = False  # the error is raised, not printed to stderr
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        message = f"{what}: pattern {pattern!r} is not valid RE2 syntax ({detail})"
        raise ValueError(message) from None
    if compiled.fullmatch("") is not None:
        raise ValueError(f"{what}: pattern {pattern!r} matches the empty string")


@dataclass(frozen=True)
class DetectorSwitches:
    """Which built-in detectors run (IP addresses are governed by ``ip_mode``)."""

    email: bool = field(default=True, metadata=_doc("e-mail addresses (also %40-encoded)"))
    card: bool = field(default=True, metadata=_doc("payment card numbers (Luhn + issuer prefix)"))
    iban: bool = field(default=True, metadata=_doc("IBANs (country length + mod-97)"))
    ssn: bool = field(default=True, metadata=_doc("US social security numbers"))
    national_id: bool = field(
        default=True,
        metadata=_doc("UK NINO, Brazil CPF, Spain DNI/NIE, and ids after keys like tax_id"),
    )
    phone: bool = field(default=True, metadata=_doc("phone numbers: E.164 and national forms"))
    date_of_birth: bool = field(default=True, metadata=_doc("dates after keys like dob"))
    jwt: bool = field(default=True, metadata=_doc("JSON web tokens"))
    auth_header: bool = field(default=True, metadata=_doc("Bearer/Basic/token credentials"))
    aws: bool = field(default=True, metadata=_doc("AWS access key ids and secret keys"))
    github: bool = field(default=True, metadata=_doc("GitHub tokens"))
    gitlab: bool = field(default=True, metadata=_doc("GitLab personal access tokens"))
    slack: bool = field(default=True, metadata=_doc("Slack tokens and webhook URLs"))
    stripe: bool = field(default=True, metadata=_doc("Stripe keys"))
    google_api_key: bool = field(default=True, metadata=_doc("Google API keys"))
    sendgrid: bool = field(default=True, metadata=_doc("SendGrid API keys"))
    npm: bool = field(default=True, metadata=_doc("npm access tokens"))
    private_key: bool = field(default=True, metadata=_doc("PEM private key blocks"))
    url_credentials: bool = field(default=True, metadata=_doc("user:password@ in URLs"))
    secret: bool = field(
        default=True, metadata=_doc("values after keys like password, token, api_key, secret")
    )
    account: bool = field(default=True, metadata=_doc("account numbers after banking keywords"))

    def enabled(self) -> frozenset[str]:
        """Names of the switched-on detectors."""
        return frozenset(f.name for f in fields(self) if getattr(self, f.name))


@dataclass(frozen=True)
class CustomDetector:
    """A site-specific detector: matches of ``pattern`` become ``<TYPE:...>``."""

    type: str = field(default="CUSTOM", metadata=_doc("token TYPE, e.g. CUSTOMER_ID"))
    pattern: str = field(
        default="",
        metadata=_doc("RE2 pattern (group 1, if any, is what is replaced); empty: inert"),
    )

    def __post_init__(self) -> None:
        _check_type_name(self.type, f"custom detector {self.type!r}")
        if self.pattern:
            _check_re2(self.pattern, f"custom detector {self.type!r}")


@dataclass(frozen=True)
class AllowList:
    """Values that are never redacted, whatever detector finds them."""

    values: tuple[str, ...] = field(default=(), metadata=_doc("exact values to leave alone"))
    patterns: tuple[str, ...] = field(
        default=(), metadata=_doc("RE2 patterns; a detected value matching one fully is kept")
    )

    def __post_init__(self) -> None:
        for index, pattern in enumerate(self.patterns):
            _check_re2(pattern, f"allow-list pattern #{index}")


@dataclass(frozen=True)
class AttributeRule:
    """What to do with attribute/resource values whose dotted key path matches ``key``."""

    key: str = field(
        default="*", metadata=_doc("glob over the dotted key path (* and ?), case-insensitive")
    )
    action: Action = field(
        default="scan",
        metadata=_doc("drop: remove; hash: whole value -> token; keep: as is; scan: detect"),
    )
    type: str = field(default="HASH", metadata=_doc("token TYPE used by the hash action"))

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("attribute rule: key glob is empty")
        _check_type_name(self.type, f"attribute rule {self.key!r}")


@dataclass(frozen=True)
class RedactionSettings:
    """Settings of the redaction stage."""

    detectors: DetectorSwitches = field(
        default_factory=DetectorSwitches, metadata=_doc("built-in detectors on/off")
    )
    ip_mode: Literal["tokenize", "keep"] = field(
        default="tokenize", metadata=_doc("IPv4/IPv6 addresses: tokenize or keep")
    )
    custom: tuple[CustomDetector, ...] = field(
        default=(), metadata=_doc("extra detectors: type name + RE2 pattern")
    )
    allow: AllowList = field(default_factory=AllowList, metadata=_doc("never-redacted values"))
    extra_secret_keys: tuple[str, ...] = field(
        default=(), metadata=_doc("more key names whose values are secrets (case-insensitive)")
    )
    attribute_rules: tuple[AttributeRule, ...] = field(
        default=(), metadata=_doc("per-key actions for attributes/resource; first match wins")
    )
    default_action: Action = field(
        default="scan", metadata=_doc("action for attribute keys no rule matches")
    )
    max_field_bytes: int = field(
        default=262144,
        metadata=_doc("larger text fields become <REDACTED>", min=1024, max=64 << 20),
    )
    token_cache_size: int = field(
        default=65536, metadata=_doc("tokens kept in the LRU cache", min=0, max=1 << 24)
    )

    def __post_init__(self) -> None:
        for key in self.extra_secret_keys:
            if not key.strip():
                raise ValueError("extra_secret_keys: empty key name")
        for spec in fields(self):
            low, high = spec.metadata.get("min"), spec.metadata.get("max")
            value = getattr(self, spec.name)
            if low is not None and high is not None and not low <= value <= high:
                raise ValueError(f"{spec.name} must be between {low} and {high}")

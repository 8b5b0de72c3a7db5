"""Redaction: detectors, keyed deterministic tokens, and the fail-closed redactor.

``Redactor(settings, secret)`` is the stage; ``TOKEN_PATTERN`` recognises its tokens
(``<TYPE:kid:tok>``) for later stages; ``REDACTED`` is the fail-closed replacement.
The encrypted token store (``store``) hooks in through ``on_token``.
"""

from sidecar.redact.redactor import Redactor
from sidecar.redact.settings import (
    AllowList,
    AttributeRule,
    CustomDetector,
    DetectorSwitches,
    RedactionSettings,
)
from sidecar.redact.tokens import REDACTED, TOKEN_PATTERN, Tokenizer, key_id

__all__ = [
    "REDACTED",
    "TOKEN_PATTERN",
    "AllowList",
    "AttributeRule",
    "CustomDetector",
    "DetectorSwitches",
    "RedactionSettings",
    "Redactor",
    "Tokenizer",
    "key_id",
]

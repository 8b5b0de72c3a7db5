"""Error types shared by the sans-IO codecs.

Strategy (as in h11): a codec raises ``LocalProtocolError`` when *we* misuse its API (a bug on
our side) and ``RemoteProtocolError`` when the *peer* sent something invalid.  Any other
exception escaping a codec is a bug by contract.  Remote errors carry a short fixed
``error_kind`` usable as a metric label, and their message never quotes peer-supplied bytes,
so it is safe to log.
"""


class ProtocolError(Exception):
    """Base class of every codec protocol error."""


class LocalProtocolError(ProtocolError):
    """The caller used the codec API incorrectly (a bug in our code)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid; the connection is unusable afterwards.

    ``error_kind`` is a short fixed identifier (e.g. "malformed", "oversized", "auth",
    "unsupported_mode") suitable as a metric label.  ``message`` must never contain
    peer-supplied payload text.
    """

    def __init__(self, message: str, error_kind: str) -> None:
        super().__init__(message)
        self.error_kind = error_kind

"""The settings every receiver shares: whether it runs, where it listens, its TLS.

Each receiver's settings subclass ``ListenerSettings`` and set their own port
default with ``port_field`` (from ``sidecar.defaults``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar import defaults
from sidecar.tls import TlsSettings


def port_field(default: int) -> Any:
    """The ``port`` settings field, with the given default."""
    return field(default=default, metadata={"doc": "Listen port (0 = any free port).",
                                            "min": 0, "max": 65535})


@dataclass(frozen=True)
class ListenerSettings:
    enabled: bool = field(default=True, metadata={"doc": "Run this receiver."})
    host: str = field(default=defaults.LISTEN_HOST, metadata={"doc": "Listen address."})
    port: int = port_field(0)
    tls: TlsSettings = field(default_factory=TlsSettings, metadata={"doc": "TLS for senders."})

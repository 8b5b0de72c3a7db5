"""TLS settings shared by every listener and exporter, and the contexts built from them.

Listeners: off unless a certificate is configured. ``client_ca_file`` turns on mutual TLS
(clients must present a certificate signed by that CA). Paths are checked
when the context is built, with an error that names the file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str | None = field(
        default=None, metadata={"doc": "PEM certificate chain; set to enable TLS."})
    key_file: str | None = field(default=None, metadata={"doc": "PEM private key."})
    client_ca_file: str | None = field(
        default=None, metadata={"doc": "CA bundle for client certificates (enables mTLS)."})

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """An SSLContext for a listener, or None when TLS is off; OSError names a bad file."""
    if not settings.enabled:
        return None
    if settings.key_file is None:
        raise ValueError("tls.key_file is required when tls.cert_file is set")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    files = f"{settings.cert_file}, {settings.key_file}"
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
        if settings.client_ca_file:
            files = settings.client_ca_file
            context.load_verify_locations(settings.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"cannot load TLS files ({files}): {exc.strerror or exc}") from None
    return context


@dataclass(frozen=True)
class ClientTlsSettings:
    enabled: bool = field(default=False, metadata={"doc": "Connect with TLS."})
    ca_file: str | None = field(
        default=None, metadata={"doc": "CA bundle to verify the server (default: system CAs)."})
    server_name: str | None = field(
        default=None, metadata={"doc": "Name to verify in the server certificate (default: "
                                       "the host)."})
    cert_file: str | None = field(
        default=None, metadata={"doc": "Client certificate for mutual TLS."})
    key_file: str | None = field(default=None, metadata={"doc": "Client private key."})


def client_context(settings: ClientTlsSettings, user: str) -> ssl.SSLContext | None:
    """An SSLContext for an exporter's connections (``user`` names it in errors), or None."""
    if not settings.enabled:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"cannot load TLS files for {user}: {exc.strerror or exc}") from None
    return context

"""Shared fixtures: `logminer` as a real subprocess on free ports; throwaway TLS certificates."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import TEST_HASH_SECRET

LISTENING = re.compile(r"listening: (.*)")


class Sidecar:
    """A `logminer serve` subprocess; ``ports`` maps listener name -> bound port."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None):
        env = {"LOGMINER_HASH_SECRET": TEST_HASH_SECRET, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        self.ports: dict[str, int] = {}
        self.stderr_lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if not line:
                break
            self.stderr_lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.ports = {k: int(v) for k, v in
                              (item.split("=") for item in match.group(1).split(", "))}
                return
        self.proc.kill()
        raise RuntimeError("sidecar did not start:\n" + "".join(self.stderr_lines))

    def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        """SIGTERM, wait, and return (exit code, stdout, rest of stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), "".join(self.stderr_lines) + err.decode()


@pytest.fixture
def sidecar_factory(tmp_path):
    started: list[Sidecar] = []

    def start(config_text: str, env: dict[str, str] | None = None,
              data_dir: Path | None = None) -> Sidecar:
        """Start `logminer serve`; ``data_dir`` defaults to a fresh one per sidecar."""
        path = tmp_path / f"config-{len(started)}.yaml"
        data_dir = data_dir or tmp_path / f"data-{len(started)}"
        path.write_text(f"data_dir: {data_dir}\n" + config_text)
        sidecar = Sidecar(path, env)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()



def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate and a client certificate.

    The server certificate names 127.0.0.1, localhost and ``logminer`` (the name the TLS
    shipper snippets in fluent-plugin-config/ verify).
    """
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt",
             "-subj", "/CN=test-ca", "-days", "1")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,DNS:logminer,IP:127.0.0.1\n")
    for name, extra in (("server", ("-extfile", d / "server.ext")), ("client", ())):
        _openssl("req", *ec, "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr",
                 "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt",
                 "-CAkey", d / "ca.key", "-CAcreateserial", "-out", d / f"{name}.crt",
                 "-days", "1", *extra)
    return d

"""A real rsyslogd (Debian packages ``rsyslog``, ``rsyslog-openssl``) as a test peer.

Strategy: write a private config into a work directory - one imtcp listener on a
loopback port (octet-counted framing is on by default), optionally TLS through the
``ossl`` netstream driver - and a ruleset that appends every received message to a
file with ``RSYSLOG_SyslogProtocol23Format``, which keeps the whole RFC 5424 message
(header, STRUCTURED-DATA, MSG) on one line. rsyslogd runs in the foreground
(``-n``) with its own pid file, no imklog/imuxsock and no DNS, and is killed at
``stop``. Readiness is a successful TCP connect to the port.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

PLAIN = 'module(load="imtcp")\n'
TLS = """global(defaultNetstreamDriverCAFile="{certs}/ca.crt"
       defaultNetstreamDriverCertFile="{certs}/server.crt"
       defaultNetstreamDriverKeyFile="{certs}/server.key")
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1"
       streamDriver.authMode="anon")
"""
CONFIG = """global(workDirectory="{workdir}" net.enableDNS="off")
{listener}input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="received")
ruleset(name="received") {{
  action(type="omfile" file="{output}" template="RSYSLOG_SyslogProtocol23Format")
}}
"""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    """One rsyslogd child; ``lines()`` are the messages it received, in arrival order."""

    def __init__(self, workdir: Path, *, port: int | None = None, certs: Path | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = certs is not None
        self.output = workdir / "received.log"
        listener = TLS.format(certs=certs) if certs is not None else PLAIN
        conf = workdir / "rsyslog.conf"
        conf.write_text(CONFIG.format(workdir=workdir, listener=listener, port=self.port,
                                      output=self.output))
        self._stderr = (workdir / "rsyslogd.stderr").open("wb")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, cwd=workdir)
        try:
            self._wait_listening(timeout=20)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}:\n"
                                   + self.log())
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError("rsyslogd did not listen in time:\n" + self.log())

    def log(self) -> str:
        """rsyslogd's own stdout/stderr so far (for failure messages)."""
        if not self._stderr.closed:
            self._stderr.flush()
        return Path(self._stderr.name).read_text(errors="replace")

    def lines(self) -> list[str]:
        """Every message received so far, one RFC 5424 line each."""
        if not self.output.exists():
            return []
        return self.output.read_text(encoding="utf-8", errors="replace").splitlines()

    def wait_for(self, count: int, timeout: float = 20) -> list[str]:
        """Poll until at least ``count`` messages arrived; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if len(lines) >= count:
                return lines
            if time.monotonic() >= deadline:
                raise TimeoutError(f"rsyslogd got {len(lines)} of {count} messages:\n"
                                   + self.log())
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill rsyslogd (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._stderr.close()

"""A real Prometheus server (Debian package ``prometheus``) as a test peer.

Strategy: write a config with one scrape job for the given targets (scrape and
evaluation interval 1s, so a test waits seconds, not minutes), start the binary on a
free loopback port with its TSDB in the test's directory, wait for ``/-/ready``, and
read results back through the HTTP API (``/api/v1/query``, ``/api/v1/series``,
``/api/v1/labels``). ``wait_for`` polls a query until a predicate holds, bounded by a
deadline. The server is killed at ``stop``; its own log stays in the work directory
for failure messages.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
JOB = "logminer"

CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: {targets}
"""

Result = list[dict[str, Any]]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    """The server did not start, or the API answered with an error."""


class Prometheus:
    """One Prometheus child scraping ``targets`` (``host:port``) under job ``JOB``."""

    def __init__(self, workdir: Path, targets: Sequence[str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(CONFIG.format(job=JOB, targets=json.dumps(list(targets))))
        self._log_path = workdir / "prometheus.log"
        self._log = self._log_path.open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=workdir)
        try:
            self._wait_ready(timeout=60)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n"
                                      + self.log())
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"{self.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise PrometheusError("prometheus was not ready in time:\n" + self.log())

    def log(self) -> str:
        """Prometheus's own output so far (for failure messages)."""
        self._log.flush()
        return self._log_path.read_text(errors="replace")

    def api(self, path: str, **params: str | Sequence[str]) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer, else PrometheusError."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}",
                                        timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> Result:
        """An instant query's result vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: expected a vector, got {data['resultType']}")
        return data["result"]

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The query's samples keyed by the values of ``labels``."""
        return {tuple(item["metric"].get(label, "") for label in labels): float(item["value"][1])
                for item in self.query(expr)}

    def value(self, expr: str) -> float | None:
        """The single sample of ``expr``, or None when the result is empty."""
        result = self.query(expr)
        if len(result) > 1:
            raise PrometheusError(f"{expr}: expected at most one sample, got {len(result)}")
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Callable[[Result], bool],
                 timeout: float = 60) -> Result:
        """Poll ``expr`` until ``predicate(result)`` holds; PrometheusError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr}: condition not met within {timeout}s; last "
                                      f"result {result}")
            time.sleep(0.2)

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of every series matching ``match`` (a series selector)."""
        return self.api("series", **{"match[]": match})

    def label_values(self) -> Iterator[tuple[str, str]]:
        """Every (label name, value) pair the server holds."""
        for name in self.api("labels"):
            for value in self.api(f"label/{name}/values"):
                yield name, value

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

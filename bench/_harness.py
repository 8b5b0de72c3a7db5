"""What the benchmarks that run clients in other processes share.

* A child process announces moments on stdout as ``NAME <value>`` lines (``mark``); the
  parent finds them in the output with ``marker``. ``time.monotonic`` is system-wide on
  Linux, so times marked by different processes can be subtracted.
* ``send_and_wait_acks``: the forward client's PackedForward step with the codec's
  ``ClientConnection`` over a blocking socket - write the frames, then read until every
  ``chunk`` id has its ack (what Fluentd's ``out_forward`` and Fluent Bit's ``forward``
  output do with ``require_ack_response``).
* ``free_port`` and the ``median (min - max)`` formatting of the result tables.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from collections.abc import Iterable, Sequence

from sidecar.codecs import forward


def mark(name: str, value: float | None = None) -> None:
    """Print ``NAME <value>`` (default: ``time.monotonic()``) for the parent process."""
    print(f"{name} {time.monotonic() if value is None else value!r}", flush=True)


def marker(output: str, name: str) -> float:
    """The value of the first ``NAME <value>`` line in ``output`` (KeyError if none)."""
    for line in output.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(f"no {name} line in the child's output")


def send_and_wait_acks(sock: socket.socket, conn: forward.ClientConnection,
                       frames: Sequence[tuple[str, bytes]]) -> None:
    """Send ``(chunk id, PackedForward frame)`` pairs, return when every chunk is acked.

    Raises SystemExit if the server closes the connection first or acks another chunk.
    """
    for _, frame in frames:
        sock.sendall(frame)
    waiting = {chunk for chunk, _ in frames}
    while waiting:
        conn.receive_data(sock.recv(65536))
        while (event := conn.next_event()) is not forward.NEED_DATA:
            if isinstance(event, forward.ConnectionClosed):
                raise SystemExit("connection closed without an ack")
            if not isinstance(event, forward.AckReceived) or event.chunk not in waiting:
                raise SystemExit(f"unexpected {event!r}, waiting for {sorted(waiting)}")
            waiting.discard(event.chunk)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a child's config; UDP too for forward)."""
    while True:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def median_range(values: Iterable[float], fmt: str = ",.0f") -> tuple[str, str]:
    """(median, "min - max") of ``values`` formatted with ``fmt``."""
    data = list(values)
    return (format(statistics.median(data), fmt),
            f"{format(min(data), fmt)} - {format(max(data), fmt)}")


def machine(repeats: int) -> str:
    return (f"median of {repeats} runs ({platform.python_version()}, {os.cpu_count()} CPUs "
            "shared by every process)")

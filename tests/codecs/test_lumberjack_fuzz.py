"""Fuzzing the Lumberjack codec: only RemoteProtocolError may escape, and decoding terminates."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.codecs.errors import RemoteProtocolError
from sidecar.codecs.lumberjack import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    DataFrame,
    ServerConnection,
    WindowSize,
)

# Small limits so that fuzzed lengths hit them quickly; every event costs input or inflation,
# so this many steps is only reachable by a hang.
_MAX_STEPS = 200_000
_FUZZ_SETTINGS = settings(max_examples=300, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
json_events = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
windows = st.lists(st.lists(json_events, min_size=1, max_size=6), min_size=1, max_size=3)


def _small_server() -> ServerConnection:
    return ServerConnection(
        max_buffer_bytes=64 * 1024, max_frame_bytes=32 * 1024, max_decompressed_bytes=64 * 1024
    )


def _run(conn: ServerConnection | ClientConnection, chunks: list[bytes]) -> list[Any]:
    """Feed chunks then EOF, draining events; a RemoteProtocolError ends the run."""
    events: list[Any] = []
    steps = 0
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while (event := conn.next_event()) is not NEED_DATA:
                events.append(event)
                steps += 1
                assert steps < _MAX_STEPS, "decoder does not make progress"
                if isinstance(event, ConnectionClosed):
                    return events
    except RemoteProtocolError as error:
        assert error.error_kind in {"malformed", "oversized", "unsupported_version"}
        events.append(error)
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


def _wire(batches: list[list[dict[str, Any]]], compress_level: int) -> bytes:
    client = ClientConnection(compress_level=compress_level)
    return b"".join(client.send_window(batch) for batch in batches)


def _expected(batches: list[list[dict[str, Any]]]) -> list[Any]:
    expected: list[Any] = []
    for batch in batches:
        expected.append(WindowSize(len(batch)))
        expected.extend(DataFrame(seq, event) for seq, event in enumerate(batch, start=1))
    expected.append(ConnectionClosed())
    return expected


@_FUZZ_SETTINGS
@given(data=st.binary(max_size=512), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_only_raise_remote_errors(data: bytes, cuts: list[int]) -> None:
    _run(_small_server(), _split(data, cuts))


@_FUZZ_SETTINGS
@given(
    prefix=st.sampled_from([b"", b"2W\x00\x00\x00\x01", b"2J\x00\x00\x00\x01", b"2C", b"2D"]),
    data=st.binary(max_size=256),
)
def test_random_bytes_after_valid_prefix(prefix: bytes, data: bytes) -> None:
    _run(_small_server(), [prefix + data])


@_FUZZ_SETTINGS
@given(batches=windows, level=st.integers(0, 9), cuts=st.lists(st.integers(0), max_size=10))
def test_valid_stream_decodes_identically_however_split(
    batches: list[list[dict[str, Any]]], level: int, cuts: list[int]
) -> None:
    wire = _wire(batches, level)
    assert _run(ServerConnection(), _split(wire, cuts)) == _expected(batches)


@_FUZZ_SETTINGS
@given(
    batches=windows,
    level=st.sampled_from([0, 3]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "delete", "insert"]), st.integers(0), st.integers(0, 255)
        ),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(st.integers(0), max_size=6),
)
def test_mutated_valid_stream_only_raises_remote_errors(
    batches: list[list[dict[str, Any]]],
    level: int,
    edits: list[tuple[str, int, int]],
    cuts: list[int],
) -> None:
    wire = bytearray(_wire(batches, level))
    for operation, position, value in edits:
        index = position % (len(wire) + 1)
        if operation == "insert":
            wire.insert(index, value)
        elif index < len(wire) and operation == "flip":
            wire[index] ^= value or 1
        elif index < len(wire):
            del wire[index]
    _run(_small_server(), _split(bytes(wire), cuts))


@_FUZZ_SETTINGS
@given(data=st.binary(max_size=128), window=st.integers(1, 5))
def test_client_random_acks_only_raise_remote_errors(data: bytes, window: int) -> None:
    client = ClientConnection()
    client.send_window([{"n": n} for n in range(window)])
    _run(client, [data])

"""Forward protocol codec fuzzing: only RemoteProtocolError may escape, input stays bounded."""

from __future__ import annotations

import gzip
import itertools
import tracemalloc
from datetime import timedelta

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.codecs.errors import LocalProtocolError, RemoteProtocolError
from sidecar.codecs.forward import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    EntriesReceived,
    Entry,
    ServerConnection,
)

KINDS = {"malformed", "oversized", "truncated", "auth", "unsupported_mode"}
MAX_BUFFER = 4096
MAX_RECORD = 1024
MAX_DECOMPRESSED = 8192

FUZZ = settings(
    max_examples=250,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)

T0 = 1_700_000_000
ENTRY_STREAM = msgpack.packb([msgpack.ExtType(0, b"eS\xf1\x00\x00\x00\x01\xf4"), {"k": "v"}])
SEEDS = [
    msgpack.packb(["app.log", T0, {"msg": "hi"}, {"chunk": "c1"}]),
    msgpack.packb(["app.log", [[T0, {"msg": "a"}], [T0 + 0.5, {"b": [1, None, 2.5]}]]]),
    msgpack.packb(["app.log", ENTRY_STREAM * 3, {"size": 3}], use_bin_type=True),
    msgpack.packb(["app.log", ENTRY_STREAM * 3, {"size": 3}], use_bin_type=False),
    msgpack.packb(
        ["app.log", gzip.compress(ENTRY_STREAM) * 2, {"compressed": "gzip", "chunk": "c2"}],
        use_bin_type=True,
    ),
    b"\xc0",
]


def server() -> ServerConnection:
    return ServerConnection(
        max_buffer_bytes=MAX_BUFFER,
        max_record_bytes=MAX_RECORD,
        max_decompressed_bytes=MAX_DECOMPRESSED,
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run(conn: ServerConnection | ClientConnection, pieces: list[bytes]) -> list[object]:
    """Feed the pieces then EOF; return the events, or stop at the protocol error.

    Any exception other than RemoteProtocolError fails the test; an error must be sticky.
    """
    events: list[object] = []
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            while (event := conn.next_event()) is not NEED_DATA:
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    return events
    except RemoteProtocolError as exc:
        assert exc.error_kind in KINDS
        try:
            conn.next_event()
        except RemoteProtocolError as again:
            assert again.error_kind == exc.error_kind
        else:
            raise AssertionError("error was not sticky") from None
        return events
    raise AssertionError("EOF did not end the connection")


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for op, where, arg in mutations:
        pos = where % (len(buf) + 1)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= arg  # type: ignore[operator]
        elif op == "insert":
            buf[pos:pos] = arg  # type: ignore[assignment]
        elif op == "delete":
            del buf[pos : pos + arg]  # type: ignore[operator]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=5) | st.binary(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 4096), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    run(server(), split(data, cuts))


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    mutations=st.lists(mutation, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 4096), max_size=6),
)
def test_mutated_valid_frames(
    seed: bytes, mutations: list[tuple[str, int, object]], cuts: list[int]
) -> None:
    data = mutate(seed * 2, mutations)
    tracemalloc.start()
    try:
        run(server(), split(data, cuts))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decoded objects cost a bounded multiple of the limits, never the declared sizes.
    assert peak < 100 * (MAX_BUFFER + MAX_DECOMPRESSED)


@FUZZ
@given(
    tag=msgpack_values,
    second=msgpack_values,
    rest=st.lists(msgpack_values, max_size=3),
    use_bin_type=st.booleans(),
)
def test_structured_frames(
    tag: object, second: object, rest: list[object], use_bin_type: bool
) -> None:
    try:
        data = msgpack.packb([tag, second, *rest], use_bin_type=use_bin_type)
    except (ValueError, OverflowError):
        return  # not encodable (e.g. ext data too long for the type)
    events = run(server(), [data])
    for event in events:
        if isinstance(event, EntriesReceived):
            assert all(type(key) is str for e in event.entries for key in e.record)


@FUZZ
@given(
    records=st.lists(st.dictionaries(st.text(max_size=8), msgpack_values, max_size=4), max_size=4),
    mutations=st.lists(mutation, max_size=3),
    compress=st.booleans(),
)
def test_mutated_client_frames_against_server(
    records: list[dict[str, object]], mutations: list[tuple[str, int, object]], compress: bool
) -> None:
    try:
        data = ClientConnection().pack_forward(
            "t", [Entry(T0 * 10**9, r) for r in records], chunk="c", compress=compress
        )
    except LocalProtocolError:
        return  # a value msgpack cannot encode: pack_forward reports it as our bug
    run(server(), [mutate(data, mutations)])


@FUZZ
@given(
    data=st.binary(max_size=512) | st.sampled_from(SEEDS),
    mutations=st.lists(mutation, max_size=3),
)
def test_handshake_server(data: bytes, mutations: list[tuple[str, int, object]]) -> None:
    conn = ServerConnection(shared_key=b"k", max_buffer_bytes=MAX_BUFFER)
    conn.initial_bytes()
    ping = msgpack.packb(["PING", "h", "salt", "0" * 128, "", ""])
    run(conn, [mutate(ping, mutations), data])


@FUZZ
@given(
    data=st.binary(max_size=512),
    mutations=st.lists(mutation, max_size=3),
    shared_key=st.none() | st.just(b"k"),
)
def test_client(
    data: bytes, mutations: list[tuple[str, int, object]], shared_key: bytes | None
) -> None:
    helo = ServerConnection(shared_key=b"k").initial_bytes()
    pong = msgpack.packb(["PONG", True, "", "h", "0" * 128])
    ack = msgpack.packb({"ack": "c"})
    run(ClientConnection(shared_key=shared_key), [mutate(helo + pong + ack, mutations), data])

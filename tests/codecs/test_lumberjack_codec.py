"""Lumberjack v2 codec: golden frames (whole and byte by byte), round trips, acks, limits."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.codecs.errors import LocalProtocolError, RemoteProtocolError
from sidecar.codecs.lumberjack import (
    NEED_DATA,
    AckReceived,
    ClientConnection,
    ConnectionClosed,
    DataFrame,
    ServerConnection,
    WindowSize,
)

# '2' 'W' + uint32 window size 2.
GOLDEN_WINDOW = b"2W\x00\x00\x00\x02"

# '2' 'J' + uint32 seq 1 + uint32 length 19 + the JSON object {"message":"hello"}.
GOLDEN_JSON = b'2J\x00\x00\x00\x01\x00\x00\x00\x13{"message":"hello"}'

# '2' 'D' + uint32 seq 7 + uint32 pair count 2
#   + uint32 3, "msg" + uint32 2, "hi"
#   + uint32 4, "host" + uint32 1, "a"
GOLDEN_KEY_VALUE = (
    b"2D\x00\x00\x00\x07\x00\x00\x00\x02"
    b"\x00\x00\x00\x03msg\x00\x00\x00\x02hi"
    b"\x00\x00\x00\x04host\x00\x00\x00\x01a"
)

# '2' 'C' + uint32 length 48 + a zlib stream (level 3, header 78 5e) inflating to two J frames:
#   '2' 'J' seq 1 len 19 {"message":"hello"}   '2' 'J' seq 2 len 19 {"message":"world"}
GOLDEN_COMPRESSED = b"2C\x00\x00\x00\x30" + bytes.fromhex(
    "78 5e 33 f2 62 60 60 60 04 62 e1 6a a5 dc d4 e2 e2 c4 f4 54 25 2b a5 8c"
    " d4 9c 9c 7c a5 5a 23 90 24 13 ba 64 79 7e 51 4e 8a 52 2d 00 79 a4 0e 9c"
)

# What Filebeat sends for a window of two events: W then one C holding the J frames.
GOLDEN_FILEBEAT_WINDOW = GOLDEN_WINDOW + GOLDEN_COMPRESSED

Feeder = Callable[[ServerConnection, bytes], list[Any]]


def _drain(conn: ServerConnection | ClientConnection) -> list[Any]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def feed_whole(conn: ServerConnection, data: bytes) -> list[Any]:
    conn.receive_data(data)
    return _drain(conn)


def feed_byte_by_byte(conn: ServerConnection, data: bytes) -> list[Any]:
    events = []
    for index in range(len(data)):
        conn.receive_data(data[index : index + 1])
        events.extend(_drain(conn))
    return events


@pytest.fixture(params=[feed_whole, feed_byte_by_byte], ids=["whole", "byte-by-byte"])
def feed(request: pytest.FixtureRequest) -> Feeder:
    feeder: Feeder = request.param
    return feeder


def _json_frame(seq: int, payload: bytes) -> bytes:
    return b"2J" + struct.pack(">II", seq, len(payload)) + payload


def _compressed_frame(inner: bytes) -> bytes:
    body = zlib.compress(inner)
    return b"2C" + struct.pack(">I", len(body)) + body


def _remote_error(conn: ServerConnection, data: bytes) -> RemoteProtocolError:
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as excinfo:
        _drain(conn)
    return excinfo.value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GOLDEN_WINDOW, [WindowSize(2)]),
        (GOLDEN_JSON, [DataFrame(1, {"message": "hello"})]),
        (GOLDEN_KEY_VALUE, [DataFrame(7, {"msg": "hi", "host": "a"})]),
        (
            GOLDEN_COMPRESSED,
            [DataFrame(1, {"message": "hello"}), DataFrame(2, {"message": "world"})],
        ),
        (
            GOLDEN_FILEBEAT_WINDOW,
            [WindowSize(2), DataFrame(1, {"message": "hello"}), DataFrame(2, {"message": "world"})],
        ),
    ],
    ids=["window", "json", "key-value", "compressed", "filebeat-window"],
)
def test_golden_frames_decode(feed: Feeder, data: bytes, expected: list[Any]) -> None:
    conn = ServerConnection()
    assert feed(conn, data) == expected
    assert conn.next_event() is NEED_DATA


def test_golden_stream_then_clean_eof(feed: Feeder) -> None:
    conn = ServerConnection()
    events = feed(conn, GOLDEN_FILEBEAT_WINDOW + GOLDEN_KEY_VALUE)
    assert len(events) == 4
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()


def test_key_value_frame_with_empty_strings_and_zero_pairs(feed: Feeder) -> None:
    empty_pair = b"2D\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"
    no_pairs = b"2D\x00\x00\x00\x02\x00\x00\x00\x00"
    assert feed(ServerConnection(), empty_pair + no_pairs) == [
        DataFrame(1, {"": ""}),
        DataFrame(2, {}),
    ]


def test_empty_window_is_reported() -> None:
    assert feed_whole(ServerConnection(), b"2W\x00\x00\x00\x00") == [WindowSize(0)]


def test_ack_frame_bytes() -> None:
    conn = ServerConnection()
    assert conn.ack(0) == b"2A\x00\x00\x00\x00"
    assert conn.ack(5) == b"2A\x00\x00\x00\x05"
    assert conn.ack(2**32 - 1) == b"2A\xff\xff\xff\xff"
    for bad in (-1, 2**32):
        with pytest.raises(LocalProtocolError):
            conn.ack(bad)


class _Link:
    """An in-memory pair of connections: bytes written by one side are fed to the other."""

    def __init__(self, compress_level: int) -> None:
        self.client = ClientConnection(compress_level=compress_level)
        self.server = ServerConnection()

    def send(self, events: list[dict[str, Any]]) -> list[Any]:
        wire = self.client.send_window(events)
        return feed_byte_by_byte(self.server, wire)

    def ack(self, seq: int) -> list[Any]:
        self.client.receive_data(self.server.ack(seq))
        return _drain(self.client)


@pytest.mark.parametrize("compress_level", [0, 1, 3, 9])
def test_client_server_round_trip(compress_level: int) -> None:
    link = _Link(compress_level)
    window: list[dict[str, Any]] = [
        {"message": "first", "n": 1, "nested": {"list": [1.5, None, True]}},
        {"message": "zweite Zeile \u00fc \U0001f600"},
        {"message": "third"},
    ]
    expected: list[Any] = [WindowSize(3)]
    expected.extend(DataFrame(seq, event) for seq, event in enumerate(window, start=1))
    assert link.send(window) == expected
    assert link.client.unacked_windows == 1
    assert link.ack(2) == [AckReceived(2)]
    assert link.client.unacked_windows == 1
    assert link.ack(3) == [AckReceived(3)]
    assert link.client.unacked_windows == 0


def test_each_window_restarts_sequence_at_one() -> None:
    link = _Link(compress_level=3)
    link.send([{"a": 1}, {"a": 2}])
    second = link.send([{"b": 1}])
    assert second == [WindowSize(1), DataFrame(1, {"b": 1})]
    assert link.client.unacked_windows == 2
    assert link.ack(2) == [AckReceived(2)]
    assert link.ack(1) == [AckReceived(1)]
    assert link.client.unacked_windows == 0


def test_client_uncompressed_window_is_bare_json_frames() -> None:
    wire = ClientConnection(compress_level=0).send_window([{"message": "hello"}])
    assert wire == b"2W\x00\x00\x00\x01" + GOLDEN_JSON


def test_client_compressed_window_layout() -> None:
    wire = ClientConnection().send_window([{"message": "hello"}, {"message": "world"}])
    assert wire[:8] == GOLDEN_WINDOW + b"2C"
    (length,) = struct.unpack(">I", wire[8:12])
    assert len(wire) == 12 + length
    assert zlib.decompress(wire[12:]) == zlib.decompress(GOLDEN_COMPRESSED[6:])


def test_client_keepalive_and_partial_acks_keep_window_open() -> None:
    client = ClientConnection()
    client.send_window([{"a": 1}, {"a": 2}, {"a": 3}])
    client.receive_data(b"2A\x00\x00\x00\x00" + b"2A\x00\x00\x00\x02" + b"2A\x00\x00\x00")
    assert _drain(client) == [AckReceived(0), AckReceived(2)]
    assert client.unacked_windows == 1
    client.receive_data(b"\x03")
    assert _drain(client) == [AckReceived(3)]
    assert client.unacked_windows == 0
    client.receive_data(b"")
    assert client.next_event() == ConnectionClosed()


@pytest.mark.parametrize(
    ("acks", "kind"),
    [
        (b"2A\x00\x00\x00\x03", "malformed"),  # beyond the 2-event window
        (b"2X\x00\x00\x00\x01", "malformed"),  # not an ack frame
        (b"1A\x00\x00\x00\x01", "unsupported_version"),
    ],
)
def test_client_rejects_bad_acks(acks: bytes, kind: str) -> None:
    client = ClientConnection()
    client.send_window([{"a": 1}, {"a": 2}])
    client.receive_data(acks)
    with pytest.raises(RemoteProtocolError) as excinfo:
        client.next_event()
    assert excinfo.value.error_kind == kind


def test_client_rejects_ack_without_open_window_and_eof_mid_frame() -> None:
    client = ClientConnection()
    client.receive_data(b"2A\x00\x00\x00\x01")
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    truncated = ClientConnection()
    truncated.receive_data(b"2A\x00")
    truncated.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        truncated.next_event()


@pytest.mark.parametrize(
    "events",
    [[], [["not", "a", "mapping"]], [{"x": object()}], [{"x": float("nan")}], [{"x": "\ud800"}]],
    ids=["empty", "not-mapping", "not-serialisable", "nan", "lone-surrogate"],
)
def test_client_rejects_unsendable_windows(events: list[Any]) -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send_window(events)
    assert client.unacked_windows == 0


def test_constructor_arguments_are_validated() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection(compress_level=10)
    for name in ("max_buffer_bytes", "max_frame_bytes", "max_decompressed_bytes"):
        with pytest.raises(LocalProtocolError):
            ServerConnection(**{name: 0})


def test_declared_json_length_over_limit_fails_before_payload() -> None:
    conn = ServerConnection(max_frame_bytes=1024)
    error = _remote_error(conn, b"2J\x00\x00\x00\x01\x00\x00\x04\x01")  # declares 1025 bytes
    assert error.error_kind == "oversized"


def test_declared_compressed_length_over_limit() -> None:
    conn = ServerConnection(max_frame_bytes=1024)
    assert _remote_error(conn, b"2C\xff\xff\xff\xff").error_kind == "oversized"


def test_key_value_frame_over_limit() -> None:
    too_many_pairs = b"2D\x00\x00\x00\x01\x10\x00\x00\x00"
    assert _remote_error(ServerConnection(), too_many_pairs).error_kind == "oversized"
    long_value = b"2D\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01k\x00\x00\x10\x00"
    conn = ServerConnection(max_frame_bytes=1024)
    assert _remote_error(conn, long_value).error_kind == "oversized"


def test_decompression_bomb_is_rejected_without_inflating_it() -> None:
    mib = 1024 * 1024
    bomb = _compressed_frame(b"\x00" * (32 * mib))  # ~32 KiB on the wire
    conn = ServerConnection(max_decompressed_bytes=mib)
    tracemalloc.start()
    try:
        error = _remote_error(conn, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.error_kind == "oversized"
    assert peak < 4 * mib  # bounded by max_decompressed_bytes, not by the 32 MiB payload


def test_compressed_payload_at_limit_is_accepted() -> None:
    inner = _json_frame(1, b'{"m":"' + b"x" * 100 + b'"}')
    conn = ServerConnection(max_decompressed_bytes=len(inner))
    assert feed_whole(conn, _compressed_frame(inner)) == [DataFrame(1, {"m": "x" * 100})]


def test_incomplete_frame_over_buffer_limit() -> None:
    conn = ServerConnection(max_buffer_bytes=100, max_frame_bytes=1000)
    conn.receive_data(b"2J\x00\x00\x00\x01\x00\x00\x01\xf4")  # declares 500 bytes
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"{" * 101)
    with pytest.raises(RemoteProtocolError) as excinfo:
        conn.next_event()
    assert excinfo.value.error_kind == "oversized"


def test_invalid_utf8_becomes_replacement_characters(feed: Feeder) -> None:
    frame = _json_frame(1, b'{"m\xff":"a\xc3(b","ok":"\xc3\xbc"}')
    assert feed(ServerConnection(), frame) == [DataFrame(1, {"m\ufffd": "a\ufffd(b", "ok": "ü"})]


def test_lone_surrogate_escapes_become_replacement_characters() -> None:
    frame = _json_frame(1, b'{"\\ud800k":["\\udfff", "\\ud83d\\ude00"]}')
    (event,) = feed_whole(ServerConnection(), frame)
    assert event == DataFrame(1, {"\ufffdk": ["\ufffd", "\U0001f600"]})
    for text in event.event["\ufffdk"]:
        text.encode("utf-8")


def test_key_value_invalid_utf8_is_replaced() -> None:
    frame = b"2D\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\xff\x00\x00\x00\x01\xfe"
    assert feed_whole(ServerConnection(), frame) == [DataFrame(1, {"\ufffd": "\ufffd"})]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"1W\x00\x00\x00\x01", "unsupported_version"),
        (b"2Q", "malformed"),  # unknown frame type
        (b"2A\x00\x00\x00\x01", "malformed"),  # acks only flow server -> client
        (_json_frame(1, b'["an", "array"]'), "malformed"),
        (_json_frame(1, b'"secret-value"'), "malformed"),
        (_json_frame(1, b'{"password": "secret-value"'), "malformed"),
        (_json_frame(1, b""), "malformed"),
        (_json_frame(1, b'{"x": NaN}'), "malformed"),
        (_json_frame(1, b"[" * 100_000), "malformed"),
        (_json_frame(1, b'{"x": ' + b"9" * 5000 + b"}"), "malformed"),
        (_compressed_frame(_compressed_frame(GOLDEN_JSON)), "malformed"),  # nested C
        (_compressed_frame(GOLDEN_JSON[:-1]), "malformed"),  # ends inside a frame
        (_compressed_frame(b"2X"), "malformed"),
        (b"2C\x00\x00\x00\x05not z", "malformed"),
        (_compressed_frame(GOLDEN_JSON)[:-2] + b"\x00\x00", "malformed"),  # bad checksum
        (b"2C\x00\x00\x00\x00", "malformed"),  # empty zlib stream
    ],
)
def test_malformed_input_raises_remote_error(data: bytes, kind: str) -> None:
    error = _remote_error(ServerConnection(), data)
    assert error.error_kind == kind
    assert "secret" not in str(error)


def test_truncated_and_trailing_zlib_streams_are_rejected() -> None:
    body = zlib.compress(GOLDEN_JSON)
    for payload in (body[:-3], body + b"junk"):
        frame = b"2C" + struct.pack(">I", len(payload)) + payload
        assert _remote_error(ServerConnection(), frame).error_kind == "malformed"


def test_eof_inside_a_frame_is_an_error() -> None:
    conn = ServerConnection()
    conn.receive_data(GOLDEN_JSON[:-1])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as excinfo:
        conn.next_event()
    assert excinfo.value.error_kind == "malformed"


def test_receive_after_eof_is_a_local_error() -> None:
    conn = ServerConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(GOLDEN_WINDOW)


def test_connection_stays_failed_after_remote_error() -> None:
    conn = ServerConnection()
    conn.receive_data(b"1W")
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as excinfo:
            conn.next_event()
        assert excinfo.value.error_kind == "unsupported_version"
    conn.receive_data(GOLDEN_WINDOW)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_events_before_a_bad_frame_are_delivered() -> None:
    conn = ServerConnection()
    conn.receive_data(GOLDEN_WINDOW + GOLDEN_JSON + b"2Q")
    assert conn.next_event() == WindowSize(2)
    assert conn.next_event() == DataFrame(1, {"message": "hello"})
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def test_large_window_in_odd_chunks() -> None:
    events = [{"message": f"line {n} " + "x" * (n % 300)} for n in range(500)]
    wire = ClientConnection().send_window(events)
    conn = ServerConnection()
    decoded = []
    for chunk in _chunks(wire, 7):
        conn.receive_data(chunk)
        decoded.extend(_drain(conn))
    assert decoded[0] == WindowSize(500)
    assert decoded[1:] == [DataFrame(seq, event) for seq, event in enumerate(events, start=1)]

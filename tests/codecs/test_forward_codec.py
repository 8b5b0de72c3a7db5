"""Forward protocol codec: golden frames per mode, limits, errors, handshake, real fluent-logger."""

from __future__ import annotations

import base64
import gzip
import hashlib
import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
from fluent.sender import EventTime, FluentSender

from sidecar.codecs.errors import LocalProtocolError, RemoteProtocolError
from sidecar.codecs.forward import (
    NEED_DATA,
    AckReceived,
    AuthenticationSucceeded,
    ClientConnection,
    ConnectionClosed,
    EntriesReceived,
    Entry,
    Keepalive,
    Mode,
    ServerConnection,
    heartbeat_reply,
    new_chunk_id,
)

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
NS = 1_000_000_000

# ["app.log", 1700000000, {"msg": "hi"}]
MESSAGE_FRAME = bytes.fromhex("93 a7 6170702e6c6f67 ce 6553f100 81 a3 6d7367 a2 6869")

# ["app.log", [[1700000000, {"msg": "a"}], [EventTime(1700000000, 5), {"msg": "b"}]],
#  {"chunk": "Y2h1bmsx"}]
FORWARD_FRAME = bytes.fromhex(
    "93 a7 6170702e6c6f67"
    " 92"
    " 92 ce 6553f100 81 a3 6d7367 a1 61"
    " 92 d7 00 6553f100 00000005 81 a3 6d7367 a1 62"
    " 81 a5 6368756e6b a8 59326831626d7378"
)

# The msgpack stream of two entries:
# [EventTime(1700000000, 500), {"k": "v"}] [1700000001, {"k": "w"}]
ENTRY_STREAM = bytes.fromhex(
    "92 d7 00 6553f100 000001f4 81 a1 6b a1 76 92 ce 6553f101 81 a1 6b a1 77"
)

# ["app.log", bin(<<ENTRY_STREAM>>), {"size": 2}]  (Fluent Bit packs entries as bin)
PACKED_BIN_FRAME = (
    bytes.fromhex("93 a7 6170702e6c6f67 c4 1b") + ENTRY_STREAM + bytes.fromhex("81 a4 73697a65 02")
)

# ["app.log", str(<<ENTRY_STREAM>>), {"size": 2}]  (Fluentd's out_forward packs them as str;
# they are not valid UTF-8: 0x92 cannot start a character)
PACKED_STR_FRAME = (
    bytes.fromhex("93 a7 6170702e6c6f67 bb") + ENTRY_STREAM + bytes.fromhex("81 a4 73697a65 02")
)

# ["app.log", bin(gzip(<<ENTRY_STREAM>>)), {"compressed": "gzip", "chunk": "Y2h1bmsy"}]
COMPRESSED_FRAME = bytes.fromhex(
    "93 a7 6170702e6c6f67 c4 2c"
    " 1f8b0800000000000203 9b749d2135f823030303e397c685d90bcb269d03"
    " 721941cc72005643cc7c1b000000"
    " 82 aa 636f6d70726573736564 a4 677a6970 a5 6368756e6b a8 59326831626d7379"
)

# null  (a keepalive)
KEEPALIVE_FRAME = bytes.fromhex("c0")

STREAM_ENTRIES = (
    Entry(T0 * NS + 500, {"k": "v"}),
    Entry((T0 + 1) * NS, {"k": "w"}),
)

GOLDEN = [
    pytest.param(
        MESSAGE_FRAME,
        EntriesReceived("app.log", (Entry(T0 * NS, {"msg": "hi"}),), None, Mode.MESSAGE),
        id="message",
    ),
    pytest.param(
        FORWARD_FRAME,
        EntriesReceived(
            "app.log",
            (Entry(T0 * NS, {"msg": "a"}), Entry(T0 * NS + 5, {"msg": "b"})),
            "Y2h1bmsx",
            Mode.FORWARD,
        ),
        id="forward",
    ),
    pytest.param(
        PACKED_BIN_FRAME,
        EntriesReceived("app.log", STREAM_ENTRIES, None, Mode.PACKED_FORWARD),
        id="packed-bin",
    ),
    pytest.param(
        PACKED_STR_FRAME,
        EntriesReceived("app.log", STREAM_ENTRIES, None, Mode.PACKED_FORWARD),
        id="packed-str",
    ),
    pytest.param(
        COMPRESSED_FRAME,
        EntriesReceived("app.log", STREAM_ENTRIES, "Y2h1bmsy", Mode.COMPRESSED_PACKED_FORWARD),
        id="compressed",
    ),
    pytest.param(KEEPALIVE_FRAME, Keepalive(), id="keepalive"),
]


def drain(conn: ServerConnection | ClientConnection) -> list[object]:
    """Collect events until the codec needs data or reports the close."""
    events: list[object] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def feed_whole(conn: ServerConnection | ClientConnection, data: bytes) -> list[object]:
    conn.receive_data(data)
    return drain(conn)


def feed_bytewise(conn: ServerConnection | ClientConnection, data: bytes) -> list[object]:
    events: list[object] = []
    for piece in [data[i : i + 1] for i in range(len(data))] or [b""]:
        conn.receive_data(piece)
        events += drain(conn)
    return events


Feeder = Callable[[ServerConnection | ClientConnection, bytes], list[object]]
FEEDERS = [pytest.param(feed_whole, id="whole"), pytest.param(feed_bytewise, id="bytewise")]


def error_kind(conn: ServerConnection | ClientConnection, data: bytes) -> str:
    """Feed ``data`` whole and return the error kind it must provoke."""
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    return info.value.error_kind


def frame(*elements: object) -> bytes:
    return msgpack.packb(list(elements), use_bin_type=True)


def event_time(seconds: int, nanos: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanos))


# --- golden frames -------------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(("data", "expected"), GOLDEN)
def test_golden_frame_decodes(feed: Feeder, data: bytes, expected: object) -> None:
    conn = ServerConnection()
    assert feed(conn, data) == [expected]
    assert feed(conn, b"") == [ConnectionClosed()]


@pytest.mark.parametrize("feed", FEEDERS)
def test_frames_back_to_back_keep_their_order(feed: Feeder) -> None:
    frames = [p.values[0] for p in GOLDEN]
    expected = [p.values[1] for p in GOLDEN]
    assert feed(ServerConnection(), b"".join(frames) * 2) == expected * 2


def test_str_and_bin_packed_entries_decode_alike() -> None:
    (from_str,) = feed_whole(ServerConnection(), PACKED_STR_FRAME)
    (from_bin,) = feed_whole(ServerConnection(), PACKED_BIN_FRAME)
    assert from_str == from_bin
    assert from_str.entries == STREAM_ENTRIES


# --- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_value", "expected_ns"),
    [
        pytest.param(T0, T0 * NS, id="int"),
        pytest.param(T0 + 0.25, T0 * NS + 250_000_000, id="float"),
        pytest.param(event_time(T0, 999_999_999), T0 * NS + 999_999_999, id="eventtime-fixext8"),
    ],
)
def test_time_forms(time_value: object, expected_ns: int) -> None:
    (event,) = feed_whole(ServerConnection(), frame("t", time_value, {"a": 1}))
    assert event.entries == (Entry(expected_ns, {"a": 1}),)
    (event,) = feed_whole(ServerConnection(), frame("t", [[time_value, {"a": 1}]]))
    assert event.entries == (Entry(expected_ns, {"a": 1}),)


def test_fluent_bit_time_with_metadata_in_entries() -> None:
    # Fluent Bit 2.x: ["t", [[[EventTime(1700000000, 7), {"meta": 1}], {"a": 1}]]]
    (event,) = feed_whole(ServerConnection(), frame("t", [[[event_time(T0, 7), {"m": 1}], {}]]))
    assert event.entries == (Entry(T0 * NS + 7, {}),)


def test_eventtime_as_ext8_is_accepted() -> None:
    # ["t", EventTime(1700000000, 9) as ext8 (c7 08 00), {}]
    data = bytes.fromhex("93 a1 74 c7 08 00 6553f100 00000009 80")
    (event,) = feed_whole(ServerConnection(), data)
    assert event.entries == (Entry(T0 * NS + 9, {}),)


@pytest.mark.parametrize(
    "time_value",
    [
        None,
        "1700000000",
        float("nan"),
        -1,
        True,
        event_time(1, 2).data,
        msgpack.ExtType(1, b"x" * 8),
    ],
)
def test_invalid_time_is_malformed(time_value: object) -> None:
    assert error_kind(ServerConnection(), frame("t", time_value, {})) == "malformed"


# --- compression -----------------------------------------------------------------------------


def test_concatenated_gzip_members_are_all_read() -> None:
    first = msgpack.packb([T0, {"n": 1}])
    second = msgpack.packb([T0, {"n": 2}]) + msgpack.packb([T0, {"n": 3}])
    payload = gzip.compress(first) + gzip.compress(second) + gzip.compress(b"")
    (event,) = feed_whole(ServerConnection(), frame("t", payload, {"compressed": "gzip"}))
    assert [e.record["n"] for e in event.entries] == [1, 2, 3]
    assert event.mode is Mode.COMPRESSED_PACKED_FORWARD


def test_compressed_text_means_uncompressed() -> None:
    (event,) = feed_whole(ServerConnection(), frame("t", ENTRY_STREAM, {"compressed": "text"}))
    assert event.entries == STREAM_ENTRIES
    assert event.mode is Mode.PACKED_FORWARD


def test_decompression_bomb_is_stopped_without_inflating_it() -> None:
    bomb = gzip.compress(b"\x00" * (16 * 1024 * 1024))  # 16 MiB of zeros, ~16 KiB packed
    conn = ServerConnection(max_decompressed_bytes=1024 * 1024)
    tracemalloc.start()
    try:
        assert error_kind(conn, frame("t", bomb, {"compressed": "gzip"})) == "oversized"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"not gzip at all", "malformed"),
        (gzip.compress(ENTRY_STREAM)[:-5], "malformed"),
        (gzip.compress(ENTRY_STREAM) + b"\x00\x00", "malformed"),
        (gzip.compress(b"\x92\x01"), "malformed"),  # inflates to a truncated entry
    ],
    ids=["garbage", "truncated-member", "trailing-garbage", "truncated-entry"],
)
def test_broken_gzip_payload(payload: bytes, kind: str) -> None:
    assert error_kind(ServerConnection(), frame("t", payload, {"compressed": "gzip"})) == kind


def test_unknown_compression_is_unsupported() -> None:
    data = frame("t", b"\x28\xb5\x2f\xfd", {"compressed": "zstd"})
    assert error_kind(ServerConnection(), data) == "unsupported_mode"


# --- acks, options, keepalive -------------------------------------------------------------


def test_ack_is_exactly_a_map_of_ack_to_chunk() -> None:
    # {"ack": "p8n9gmxTQVC8/nh2wlKKeQ=="}
    expected = bytes.fromhex("81 a3 61636b b8") + b"p8n9gmxTQVC8/nh2wlKKeQ=="
    assert ServerConnection().ack("p8n9gmxTQVC8/nh2wlKKeQ==") == expected


@pytest.mark.parametrize("mode_frame", ["message", "forward", "packed"])
def test_chunk_option_is_reported_in_every_mode(mode_frame: str) -> None:
    options = {"chunk": "Q0hVTks=\n", "size": 1, "unknown": [1, 2]}
    data = {
        "message": frame("t", T0, {"a": 1}, options),
        "forward": frame("t", [[T0, {"a": 1}]], options),
        "packed": frame("t", msgpack.packb([T0, {"a": 1}]), options),
    }[mode_frame]
    (event,) = feed_whole(ServerConnection(), data)
    assert event.chunk == "Q0hVTks=\n"
    assert event.entries == (Entry(T0 * NS, {"a": 1}),)


def test_nil_options_mean_none() -> None:
    (event,) = feed_whole(ServerConnection(), frame("t", [[T0, {}]], None))
    assert event.chunk is None


def test_empty_forward_and_packed_frames_carry_no_entries() -> None:
    events = feed_whole(ServerConnection(), frame("t", [], {"chunk": "c"}) + frame("t", b""))
    assert [(e.entries, e.chunk) for e in events] == [((), "c"), ((), None)]


def test_heartbeat_reply_is_one_zero_byte() -> None:
    assert heartbeat_reply(b"\x00") == b"\x00"
    assert heartbeat_reply(b"") == b"\x00"


def test_new_chunk_id_is_base64_of_16_random_bytes() -> None:
    ids = {new_chunk_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(base64.b64decode(i, validate=True)) == 16 for i in ids)


# --- text ------------------------------------------------------------------------------------


def test_invalid_utf8_becomes_replacement_characters() -> None:
    # ["t\xff", 1700000000, {"k\xff" (bin): "v\xfe", "nested": ["\xc3"]}] with raw bytes
    data = (
        bytes.fromhex("93 a2 74ff ce 6553f100 82")
        + bytes.fromhex("c4 02 6bff a2 76fe")
        + bytes.fromhex("a6 6e6573746564 91 a1 c3")
    )
    (event,) = feed_whole(ServerConnection(), data)
    assert event.tag == "t\ufffd"
    assert event.entries[0].record == {"k\ufffd": "v\ufffd", "nested": ["\ufffd"]}


def test_bin_values_stay_bytes() -> None:
    (event,) = feed_whole(ServerConnection(), frame("t", T0, {"blob": b"\x00\xff"}))
    assert event.entries[0].record == {"blob": b"\x00\xff"}


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        frame("t", T0, {"big": "x" * 200}),
        frame("t", T0, {str(i): i for i in range(60)}),
        frame("t", [[T0, {"ok": 1}], [T0, {"big": "x" * 200}]]),
        frame("t", msgpack.packb([T0, {"big": b"x" * 200}])),
        frame("t", T0, {"many": list(range(300))}),
    ],
    ids=["message-long-string", "message-many-fields", "forward", "packed", "long-array"],
)
def test_oversized_record_is_rejected(data: bytes) -> None:
    assert error_kind(ServerConnection(max_record_bytes=128), data) == "oversized"


def test_record_at_the_size_limit_is_accepted() -> None:
    record = {"k": "x" * 100}
    size = len(msgpack.packb(record))
    (event,) = feed_whole(ServerConnection(max_record_bytes=size), frame("t", T0, record))
    assert event.entries[0].record == record


def test_frame_at_the_buffer_limit_is_accepted_and_one_byte_more_is_not() -> None:
    data = frame("t", T0, {"k": "x" * 500})
    assert len(feed_bytewise(ServerConnection(max_buffer_bytes=len(data)), data)) == 1
    assert error_kind(ServerConnection(max_buffer_bytes=len(data) - 1), data) == "oversized"


def test_many_small_frames_in_one_feed_do_not_trip_the_buffer_limit() -> None:
    data = MESSAGE_FRAME * 100
    assert len(feed_whole(ServerConnection(max_buffer_bytes=len(MESSAGE_FRAME)), data)) == 100


@pytest.mark.parametrize(
    "header",
    [
        bytes.fromhex("dd ffffffff"),  # an array of 4 Gi elements
        bytes.fromhex("93 a1 74 db ffffffff"),  # ["t", <a 4 GiB string>, ...
        bytes.fromhex("93 a1 74 ce 6553f100 df ffffffff"),  # ["t", 1700000000, <4 Gi pairs>
    ],
    ids=["array32", "str32", "map32"],
)
def test_declared_huge_structure_is_not_allocated(header: bytes) -> None:
    conn = ServerConnection(max_buffer_bytes=64 * 1024)
    tracemalloc.start()
    try:
        assert feed_whole(conn, header) == []
        conn.receive_data(b"\xc0" * (64 * 1024))
        with pytest.raises(RemoteProtocolError) as info:
            drain(conn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.error_kind == "oversized"
    assert peak < 1024 * 1024


def test_declared_array_longer_than_its_data_waits_then_truncates() -> None:
    # ["t", 1700000000, {"a": <array32 declaring 4 Gi elements, 3 present>}]: nothing is
    # allocated for the declared length; the frame waits for data, and EOF is truncation.
    data = bytes.fromhex("93 a1 74 ce 6553f100 81 a1 61 dd ffffffff c0c0c0")
    conn = ServerConnection()
    assert feed_whole(conn, data) == []
    assert error_kind(conn, b"") == "truncated"


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (frame("t"), "malformed"),
        (frame("t", T0), "malformed"),
        (frame("t", T0, {}, {}, {}), "malformed"),
        (frame("t", [], {}, {}), "malformed"),
        (frame(1, T0, {}), "malformed"),
        (frame(None, [[T0, {}]]), "malformed"),
        (frame("t", T0, "not a map"), "malformed"),
        (frame("t", T0, None), "malformed"),
        (frame("t", [[T0, [1, 2]]]), "malformed"),
        (frame("t", [[T0]]), "malformed"),
        (frame("t", [[T0, {}, 3]]), "malformed"),
        (frame("t", [42]), "malformed"),
        (frame("t", T0, {}, "not a map"), "malformed"),
        (frame("t", T0, {}, {"chunk": 5}), "malformed"),
        (frame("t", msgpack.packb([T0, 5])), "malformed"),
        (frame("t", msgpack.packb([T0, {}])[:-1]), "malformed"),
        (msgpack.packb(["t", T0, {1: "int key"}]), "malformed"),
        (msgpack.packb(["t", T0, {"a": {2.5: "float key"}}]), "malformed"),
        (msgpack.packb(42), "malformed"),
        (msgpack.packb({"not": "an array"}), "malformed"),
        (b"\xc1", "malformed"),
        (b"\x91" * 5000, "malformed"),
        (b'["t",1,{}]', "unsupported_mode"),
        (b'{"json": true}', "unsupported_mode"),
    ],
)
def test_malformed_frames(data: bytes, kind: str) -> None:
    assert error_kind(ServerConnection(), data) == kind


def test_bin_tag_is_decoded_as_text() -> None:
    (event,) = feed_whole(ServerConnection(), frame(b"bin.tag", T0, {}))
    assert event.tag == "bin.tag"


def test_error_is_sticky_and_later_data_is_ignored() -> None:
    conn = ServerConnection()
    assert error_kind(conn, frame("t", T0, "bad") + MESSAGE_FRAME) == "malformed"
    conn.receive_data(MESSAGE_FRAME)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.error_kind == "malformed"


def test_error_messages_do_not_quote_the_peer() -> None:
    secret = "4111111111111111"
    for data in (frame(secret, T0, secret), frame("t", T0, {secret: "x" * 300})):
        conn = ServerConnection(max_record_bytes=64)
        conn.receive_data(data)
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert secret not in str(info.value)


def test_eof_inside_a_frame_is_truncation() -> None:
    conn = ServerConnection()
    assert feed_whole(conn, MESSAGE_FRAME + MESSAGE_FRAME[:5]) == [
        EntriesReceived("app.log", (Entry(T0 * NS, {"msg": "hi"}),), None, Mode.MESSAGE)
    ]
    assert error_kind(conn, b"") == "truncated"


def test_eof_at_a_boundary_closes_cleanly_and_stays_closed() -> None:
    conn = ServerConnection()
    assert feed_whole(conn, b"") == [ConnectionClosed()]
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


# --- handshake -------------------------------------------------------------------------------


def pair(server_key: bytes, client_key: bytes | None) -> tuple[ServerConnection, ClientConnection]:
    server = ServerConnection(shared_key=server_key, self_hostname="aggregator")
    client = ClientConnection(shared_key=client_key, self_hostname="node-1")
    return server, client


def test_helo_offers_nonce_and_auth_salt() -> None:
    helo = msgpack.unpackb(ServerConnection(shared_key=b"k").initial_bytes(), raw=True)
    assert helo[0] == b"HELO"
    assert len(helo[1][b"nonce"]) == 16
    assert len(helo[1][b"auth"]) == 16
    assert helo[1][b"keepalive"] is True
    assert ServerConnection().initial_bytes() == b""


def test_client_ping_follows_the_spec_digest() -> None:
    server, client = pair(b"secret", b"secret")
    helo = server.initial_bytes()
    nonce = msgpack.unpackb(helo)[1]["nonce"]
    assert feed_whole(client, helo) == []
    ping = msgpack.unpackb(client.data_to_send(), raw=True)
    _, hostname, salt, digest, username, password = ping
    assert hostname == b"node-1"
    assert digest == hashlib.sha512(salt + b"node-1" + nonce + b"secret").hexdigest().encode()
    assert (username, password) == (b"", b"")


@pytest.mark.parametrize("feed", FEEDERS)
def test_paired_handshake_then_data_then_ack(feed: Feeder) -> None:
    server, client = pair(b"secret", b"secret")
    assert feed(client, server.initial_bytes()) == []
    assert feed(server, client.data_to_send()) == [AuthenticationSucceeded("node-1")]
    pong = server.data_to_send()
    assert msgpack.unpackb(pong)[:4] == ["PONG", True, "", "aggregator"]
    assert feed(client, pong) == [AuthenticationSucceeded("aggregator")]

    chunk = new_chunk_id()
    entries = [Entry(T0 * NS + 1, {"msg": "one"}), Entry(T0 * NS + 2, {"msg": "two"})]
    data = client.pack_forward("app", entries, chunk=chunk, compress=True)
    (event,) = feed(server, data)
    assert event == EntriesReceived("app", tuple(entries), chunk, Mode.COMPRESSED_PACKED_FORWARD)
    assert feed(client, server.ack(chunk)) == [AckReceived(chunk)]


def test_wrong_shared_key_is_refused_with_a_failed_pong() -> None:
    server, client = pair(b"secret", b"guess")
    feed_whole(client, server.initial_bytes())
    assert error_kind(server, client.data_to_send()) == "auth"
    pong = server.data_to_send()
    assert msgpack.unpackb(pong) == ["PONG", False, "shared_key mismatch", "", ""]
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.error_kind == "auth"
    assert error_kind(client, pong) == "auth"


@pytest.mark.parametrize(
    "data",
    [MESSAGE_FRAME, KEEPALIVE_FRAME, frame("PING", "h"), frame("PING", "h", 1, 2, 3, 4)],
    ids=["message", "keepalive", "short-ping", "ping-wrong-types"],
)
def test_anything_but_a_valid_ping_before_auth_fails(data: bytes) -> None:
    server = ServerConnection(shared_key=b"secret")
    assert error_kind(server, data) == "auth"
    assert msgpack.unpackb(server.data_to_send())[:3] == ["PONG", False, "invalid ping message"]


def test_pre_auth_frames_are_limited_to_64_kib() -> None:
    server = ServerConnection(shared_key=b"secret")
    assert error_kind(server, frame("PING", "x" * 70_000)) == "oversized"


def test_client_rejects_a_pong_with_a_wrong_digest() -> None:
    server, client = pair(b"secret", b"secret")
    feed_whole(client, server.initial_bytes())
    client.data_to_send()
    forged = frame("PONG", True, "", "aggregator", "0" * 128)
    assert error_kind(client, forged) == "auth"


@pytest.mark.parametrize(
    "data",
    [frame("PONG", True, "", "h", "d"), frame("HELO"), frame("HELO", {"nonce": 5}), b"\xc0"],
    ids=["pong-first", "helo-short", "helo-bad-nonce", "nil"],
)
def test_client_rejects_a_bad_helo(data: bytes) -> None:
    assert error_kind(ClientConnection(shared_key=b"k"), data) == "auth"


def test_client_without_key_refuses_a_server_that_wants_auth() -> None:
    server, client = pair(b"secret", None)
    assert error_kind(client, server.initial_bytes()) == "auth"


def test_client_rejects_unexpected_messages() -> None:
    assert error_kind(ClientConnection(), frame("what")) == "malformed"


def test_pack_forward_before_auth_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection(shared_key=b"k").pack_forward("t", [], chunk="c", compress=False)


# --- client encoding -------------------------------------------------------------------------


def test_pack_forward_uses_bin_entries_eventtime_and_options() -> None:
    entries = [Entry(T0 * NS + 42, {"msg": "x"})]
    data = ClientConnection().pack_forward("app", entries, chunk="c1", compress=False)
    tag, stream, options = msgpack.unpackb(data, raw=False)
    assert (tag, options) == ("app", {"chunk": "c1", "size": 1})
    assert isinstance(stream, bytes)  # sent as msgpack bin
    assert stream.startswith(bytes.fromhex("92 d7 00 6553f100 0000002a"))


def test_pack_forward_compressed_is_gzip() -> None:
    entries = [Entry(T0 * NS, {"msg": "x"})] * 3
    data = ClientConnection().pack_forward("app", entries, chunk="c", compress=True)
    _, stream, options = msgpack.unpackb(data, raw=False)
    assert options == {"chunk": "c", "size": 3, "compressed": "gzip"}
    assert gzip.decompress(stream) == msgpack.packb([event_time(T0, 0), {"msg": "x"}]) * 3


@pytest.mark.parametrize(
    "entry",
    [Entry(-1, {}), Entry(2**32 * NS, {}), Entry(0, {"obj": object()})],
    ids=["negative-time", "time-past-2106", "unpackable-value"],
)
def test_pack_forward_rejects_what_cannot_be_encoded(entry: Entry) -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection().pack_forward("t", [entry], chunk="c", compress=False)


# --- a real peer -----------------------------------------------------------------------------


def capture_fluent_logger_bytes(emit: Callable[[FluentSender], None]) -> bytes:
    """Run fluent-logger against a plain TCP server on port 0 and return what it sent."""
    captured = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                while chunk := conn.recv(65536):
                    captured.extend(chunk)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sender = FluentSender(
            "app", host="127.0.0.1", port=listener.getsockname()[1], nanosecond_precision=True
        )
        try:
            emit(sender)
        finally:
            sender.close()
        thread.join(timeout=10)
    assert not thread.is_alive()
    return bytes(captured)


def test_fluent_logger_bytes_decode() -> None:
    def emit(sender: FluentSender) -> None:
        assert sender.emit_with_time("web", EventTime(T0, 123_456_789), {"msg": "hello", "n": 1})
        assert sender.emit_with_time("db", T0 + 1, {"msg": "int time", "ok": True})
        assert sender.emit_with_time("float", T0 + 2.5, {"nested": {"a": [1, 2.5, None]}})

    conn = ServerConnection()
    events = feed_whole(conn, capture_fluent_logger_bytes(emit))
    assert feed_whole(conn, b"") == [ConnectionClosed()]
    assert events == [
        EntriesReceived(
            "app.web",
            (Entry(T0 * NS + 123_456_789, {"msg": "hello", "n": 1}),),
            None,
            Mode.MESSAGE,
        ),
        EntriesReceived(
            "app.db",
            (Entry((T0 + 1) * NS, {"msg": "int time", "ok": True}),),
            None,
            Mode.MESSAGE,
        ),
        EntriesReceived(
            "app.float",
            (Entry((T0 + 2) * NS + 500_000_000, {"nested": {"a": [1, 2.5, None]}}),),
            None,
            Mode.MESSAGE,
        ),
    ]

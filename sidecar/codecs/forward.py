"""Fluentd Forward Protocol v1 codec, sans-IO: bytes in, events out; no sockets, no asyncio.

Implements https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1 (sections
"Heartbeat Message", "Handshake Messages", "Event Modes", "Option", "Response", "EventTime Ext
Format"), receiving as Fluentd's ``in_forward`` does and sending as its ``out_forward`` does.

Strategy:

* Framing. A msgpack ``Unpacker`` is used only to *skip* the next top-level object: it runs in
  C, resumes across feeds (byte-at-a-time input stays linear) and builds nothing, so a peer that
  declares a 4 GiB array or string costs only the bytes it really sent. The complete frame is
  then cut from our own buffer. An incomplete frame may hold at most ``max_buffer_bytes`` (64 KiB
  while the handshake is pending, and for everything a client receives).
* Decoding. A complete frame is read element by element by a per-frame ``Unpacker``
  (``raw=False, unicode_errors="replace"``: invalid UTF-8 becomes U+FFFD; map keys must be
  strings; every string, array, map and ext length capped at ``max_record_bytes``). The type
  byte of the second element, peeked in the frame, selects the mode. PackedForward entries,
  ``str`` (Fluentd) or ``bin`` (Fluent Bit), are sliced out of the frame as raw bytes - decoding
  them as text would corrupt them - gunzipped when ``compressed`` is ``gzip`` (every
  concatenated member, never more than ``max_decompressed_bytes``), then read as a stream of
  ``[time, record]``. Each record's packed size is measured with ``tell()``.
* A frame is validated whole before its ``EntriesReceived`` is returned: one bad record rejects
  the frame, no part of it is delivered, and the sender retries the chunk whole.
* Handshake frames are decoded with ``raw=True``: salts and nonces are binary even when a peer
  packs them as ``str`` (Fluent Bit does), and digests are taken over the exact bytes.
* Errors: ``RemoteProtocolError.error_kind`` is one of the ``*_KIND`` constants below; messages
  never quote peer bytes. After one the connection is dead and ``next_event`` raises again.
* Memory: decoded Python objects can take ~70x their packed size, so the worst case per frame is
  about that factor times max(max_buffer_bytes, max_decompressed_bytes); size limits with that.
"""

from __future__ import annotations

import base64
import enum
import gzip
import hashlib
import hmac
import math
import os
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeGuard, TypeVar

import msgpack

from sidecar.codecs.errors import LocalProtocolError, RemoteProtocolError

_MIB: Final = 1024 * 1024

MALFORMED_KIND: Final = "malformed"
OVERSIZED_KIND: Final = "oversized"
TRUNCATED_KIND: Final = "truncated"
AUTH_KIND: Final = "auth"
UNSUPPORTED_MODE_KIND: Final = "unsupported_mode"

_HANDSHAKE_FRAME_LIMIT: Final = 64 * 1024
_NS_PER_S: Final = 1_000_000_000
_MAX_TIME_NS: Final = 2**63 - 1
_EVENT_TIME_EXT_CODE: Final = 0
_JSON_OPENERS: Final = (b"[", b"{")  # in_forward's JSON mode: one byte, a msgpack fixint here
_RAW_LENGTH_WIDTHS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_UNPACK_ERRORS: Final = (ValueError, msgpack.UnpackException)
_GZIP_FIRST_WINDOW: Final = 64
_GZIP_MAX_WINDOW: Final = _MIB


class NeedData(enum.Enum):
    """``next_event`` has nothing complete to return: feed more bytes."""

    NEED_DATA = "need_data"


NEED_DATA: Final = NeedData.NEED_DATA


class Mode(enum.Enum):
    """The carrier mode of a frame (spec "Event Modes"); values suit metric labels."""

    MESSAGE = "message"
    FORWARD = "forward"
    PACKED_FORWARD = "packed_forward"
    COMPRESSED_PACKED_FORWARD = "compressed_packed_forward"


@dataclass(frozen=True, slots=True)
class Entry:
    """One event: nanoseconds since the Unix epoch and its record (string keys)."""

    time_ns: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EntriesReceived:
    """A frame's events. If ``chunk`` is set the sender waits for ``ack(chunk)``."""

    tag: str
    entries: tuple[Entry, ...]
    chunk: str | None
    mode: Mode


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A bare msgpack nil: the client's health check, no events."""


@dataclass(frozen=True, slots=True)
class AuthenticationSucceeded:
    """The shared-key handshake completed; ``hostname`` is the one the peer announced."""

    hostname: str


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The server acknowledged the chunk with this id."""

    chunk: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, at a frame boundary."""


ServerEvent: TypeAlias = EntriesReceived | Keepalive | AuthenticationSucceeded | ConnectionClosed
ClientEvent: TypeAlias = AckReceived | AuthenticationSucceeded | ConnectionClosed


def heartbeat_reply(datagram: bytes) -> bytes:
    """Return the answer to a UDP heartbeat datagram (spec "Heartbeat Message").

    Like ``in_forward``, any datagram is answered with the single byte 0x00; its content is
    not inspected.
    """
    return b"\x00"


def new_chunk_id() -> str:
    """Return a fresh chunk id: Base64 of 16 random bytes, as ``out_forward`` makes them.

    (``out_forward`` uses Ruby's ``Base64.encode64``, which appends a newline; the id is
    opaque to the server, so the spec's form without one is used here.)
    """
    return base64.b64encode(os.urandom(16)).decode("ascii")


class _Framer:
    """Cuts a byte stream into complete top-level msgpack objects, without decoding them."""

    def __init__(self, limit: int, max_limit: int) -> None:
        self.limit = limit  # may be raised up to max_limit, e.g. once authenticated
        self._buffer = bytearray()  # unconsumed input; starts at a frame boundary
        self._scanned = 0  # bytes of _buffer already fed to the skipper
        self._offset = 0  # stream offset of _buffer[0]
        self._skipper = msgpack.Unpacker(max_buffer_size=max_limit)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def discard(self) -> None:
        """Drop buffered input (the connection failed)."""
        self._buffer = bytearray()
        self._skipper = msgpack.Unpacker(max_buffer_size=1)

    def next_frame(self) -> bytes | None:
        """Return the next complete frame, or None if more bytes are needed."""
        while True:
            try:
                self._skipper.skip()
            except msgpack.OutOfData:
                if not self._feed_skipper():
                    return None
                continue
            except _UNPACK_ERRORS:
                raise RemoteProtocolError("invalid msgpack stream", MALFORMED_KIND) from None
            size = self._skipper.tell() - self._offset
            frame = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._scanned -= size
            self._offset += size
            return frame

    def _feed_skipper(self) -> bool:
        """Feed unscanned bytes, keeping the incomplete frame within the limit."""
        if self._scanned == len(self._buffer):
            return False
        room = self.limit - self._scanned
        if room <= 0:
            raise RemoteProtocolError("frame exceeds the buffer limit", OVERSIZED_KIND)
        chunk = self._buffer[self._scanned : self._scanned + room]
        self._skipper.feed(chunk)
        self._scanned += len(chunk)
        return True


_E = TypeVar("_E")


class _Connection(ABC, Generic[_E]):
    """Sans-IO plumbing shared by both directions: input, EOF, sticky errors, output."""

    def __init__(self, frame_limit: int, max_frame_limit: int) -> None:
        self._framer = _Framer(frame_limit, max_frame_limit)
        self._outbound = bytearray()
        self._eof = False
        self._closed = False
        self._error_kind: str | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side (EOF).

        Call ``next_event`` until it returns NEED_DATA before feeding more: the buffer limit
        is applied as frames are cut. Bytes fed after a protocol error are dropped; feeding
        after EOF raises LocalProtocolError.
        """
        if self._eof:
            raise LocalProtocolError("receive_data called after EOF")
        if not data:
            self._eof = True
        elif self._error_kind is None:
            self._framer.feed(data)

    def data_to_send(self) -> bytes:
        """Return, and forget, the bytes the codec needs written to the peer (handshake)."""
        data = bytes(self._outbound)
        self._outbound.clear()
        return data

    def next_event(self) -> _E | ConnectionClosed | NeedData:
        """Return the next event, NEED_DATA, or ConnectionClosed (repeatedly) after EOF.

        Raises RemoteProtocolError when the peer sent something invalid; from then on every
        call raises again, and the caller should send ``data_to_send()`` and close.
        """
        if self._error_kind is not None:
            raise RemoteProtocolError("connection unusable after an error", self._error_kind)
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._error_kind = exc.error_kind
            self._framer.discard()
            raise

    def _next_event(self) -> _E | ConnectionClosed | NeedData:
        while not self._closed:
            frame = self._framer.next_frame()
            if frame is None:
                if not self._eof:
                    return NEED_DATA
                if self._framer.buffered:
                    raise RemoteProtocolError("peer closed inside a frame", TRUNCATED_KIND)
                self._closed = True
                break
            event = self._handle_frame(frame)
            if event is not None:
                return event
        return ConnectionClosed()

    @abstractmethod
    def _handle_frame(self, frame: bytes) -> _E | None:
        """Turn one complete frame into an event, or None if it produces none."""


class ServerConnection(_Connection[EntriesReceived | Keepalive | AuthenticationSucceeded]):
    """The receiving side of one forward connection, as ``in_forward``.

    With ``shared_key`` set the handshake is required: send ``initial_bytes()`` first; the
    PING is answered through ``data_to_send()`` (a PONG, on success and on failure), and until
    it succeeds any other frame fails with error_kind "auth". Username/password authorization
    is not supported: the HELO carries an ``auth`` salt as ``in_forward``'s does, and the
    username and password digest in the PING are ignored.
    """

    def __init__(
        self,
        *,
        shared_key: bytes | None = None,
        self_hostname: str = "logminer",
        max_buffer_bytes: int = 64 * _MIB,
        max_record_bytes: int = 1 * _MIB,
        max_decompressed_bytes: int = 64 * _MIB,
    ) -> None:
        if min(max_buffer_bytes, max_record_bytes, max_decompressed_bytes) < 1:
            raise ValueError("limits must be positive")
        handshake = _ServerHandshake(shared_key, self_hostname) if shared_key is not None else None
        first_limit = max_buffer_bytes if handshake is None else _HANDSHAKE_FRAME_LIMIT
        super().__init__(min(first_limit, max_buffer_bytes), max_buffer_bytes)
        self._handshake = handshake
        self._max_buffer_bytes = max_buffer_bytes
        self._decoder = _MessageDecoder(max_record_bytes, max_decompressed_bytes)

    def initial_bytes(self) -> bytes:
        """Bytes to send as soon as the connection opens: the HELO if auth is on, else b""."""
        return self._handshake.helo if self._handshake is not None else b""

    def ack(self, chunk: str) -> bytes:
        """Encode the response ``{"ack": chunk}`` (spec "Response").

        Call it only once the chunk's records are durable: the sender then forgets them.
        """
        return msgpack.packb({"ack": chunk})

    def _handle_frame(
        self, frame: bytes
    ) -> EntriesReceived | Keepalive | AuthenticationSucceeded | None:
        if self._handshake is None or self._handshake.done:
            return self._decoder.decode(frame)
        pong, hostname = self._handshake.answer_ping(frame)
        self._outbound += pong
        if hostname is None:
            raise RemoteProtocolError("client failed shared-key authentication", AUTH_KIND)
        self._framer.limit = self._max_buffer_bytes
        return AuthenticationSucceeded(hostname)


class _ClientState(enum.Enum):
    AWAIT_HELO = enum.auto()
    AWAIT_PONG = enum.auto()
    ESTABLISHED = enum.auto()


class ClientConnection(_Connection[AckReceived | AuthenticationSucceeded]):
    """The sending side of one forward connection, as ``out_forward`` (our exporter).

    With ``shared_key`` set, the server's HELO is answered internally with a PING (read it
    from ``data_to_send()``); ``AuthenticationSucceeded`` follows a PONG that proves the
    server holds the same key, and ``pack_forward`` may be used only after that.
    """

    def __init__(self, *, shared_key: bytes | None = None, self_hostname: str = "logminer") -> None:
        super().__init__(_HANDSHAKE_FRAME_LIMIT, _HANDSHAKE_FRAME_LIMIT)
        self._shared_key = shared_key
        self._hostname = self_hostname
        self._salt = os.urandom(16).hex()  # out_forward: SecureRandom.hex(16)
        self._nonce = b""
        self._state = _ClientState.ESTABLISHED if shared_key is None else _ClientState.AWAIT_HELO

    def pack_forward(
        self, tag: str, entries: Sequence[Entry], *, chunk: str, compress: bool
    ) -> bytes:
        """Encode a PackedForward frame, or CompressedPackedForward (gzip) if ``compress``.

        Options carry ``chunk`` (the server answers with ``AckReceived(chunk)``) and ``size``;
        times are sent as EventTime. Raises LocalProtocolError before authentication, or if a
        time is outside EventTime's range or a record value cannot be packed.
        """
        if self._state is not _ClientState.ESTABLISHED:
            raise LocalProtocolError("pack_forward called before the handshake completed")
        packer = msgpack.Packer(use_bin_type=True)
        try:
            stream = b"".join(packer.pack([_event_time(e.time_ns), e.record]) for e in entries)
        except (TypeError, ValueError, OverflowError):
            raise LocalProtocolError("record cannot be packed as msgpack") from None
        options: dict[str, Any] = {"chunk": chunk, "size": len(entries)}
        if compress:
            stream = gzip.compress(stream, compresslevel=6, mtime=0)
            options["compressed"] = "gzip"
        return packer.pack([tag, stream, options])

    def _handle_frame(self, frame: bytes) -> AckReceived | AuthenticationSucceeded | None:
        message = _unpack_small(frame)
        if self._state is _ClientState.AWAIT_HELO:
            self._answer_helo(message)
            return None
        if self._state is _ClientState.AWAIT_PONG:
            return self._check_pong(message)
        if _is_handshake(message, b"HELO"):
            raise RemoteProtocolError("server requires shared-key authentication", AUTH_KIND)
        if type(message) is dict and type(message.get(b"ack")) is bytes:
            return AckReceived(message[b"ack"].decode("utf-8", "replace"))
        raise RemoteProtocolError("unexpected message from server", MALFORMED_KIND)

    def _answer_helo(self, message: object) -> None:
        """Queue the PING answering a HELO (spec "HELO", "PING")."""
        if not (_is_handshake(message, b"HELO") and len(message) == 2):
            raise RemoteProtocolError("expected a HELO message", AUTH_KIND)
        options = message[1]
        nonce = options.get(b"nonce") if type(options) is dict else None
        if type(nonce) is not bytes:
            raise RemoteProtocolError("HELO without a nonce", AUTH_KIND)
        assert self._shared_key is not None  # AWAIT_HELO only exists with a shared key
        self._nonce = nonce
        digest = _shared_key_digest(
            self._salt.encode(), self._hostname.encode(), nonce, self._shared_key
        )
        ping = ["PING", self._hostname, self._salt, digest.decode("ascii"), "", ""]
        self._outbound += msgpack.packb(ping)
        self._state = _ClientState.AWAIT_PONG

    def _check_pong(self, message: object) -> AuthenticationSucceeded:
        """Verify the server's PONG proves the shared key (spec "PONG")."""
        if not (_is_handshake(message, b"PONG") and len(message) == 5):
            raise RemoteProtocolError("expected a PONG message", AUTH_KIND)
        _, auth_result, _reason, hostname, digest = message
        if auth_result is not True or type(hostname) is not bytes or type(digest) is not bytes:
            raise RemoteProtocolError("server rejected authentication", AUTH_KIND)
        assert self._shared_key is not None  # AWAIT_PONG only exists with a shared key
        expected = _shared_key_digest(self._salt.encode(), hostname, self._nonce, self._shared_key)
        if not hmac.compare_digest(digest.lower(), expected):
            raise RemoteProtocolError("server does not hold the shared key", AUTH_KIND)
        self._state = _ClientState.ESTABLISHED
        return AuthenticationSucceeded(hostname.decode("utf-8", "replace"))


class _ServerHandshake:
    """Server half of the shared-key handshake (spec "Handshake Messages")."""

    def __init__(self, shared_key: bytes, hostname: str) -> None:
        self._shared_key = shared_key
        self._hostname = hostname
        self._nonce = os.urandom(16)
        self.done = False
        options = {"nonce": self._nonce, "auth": os.urandom(16), "keepalive": True}
        self.helo: bytes = msgpack.packb(["HELO", options], use_bin_type=True)

    def answer_ping(self, frame: bytes) -> tuple[bytes, str | None]:
        """Return the PONG for this frame and the client's hostname, None if auth failed."""
        ping = _unpack_small(frame)
        if not (
            _is_handshake(ping, b"PING")
            and len(ping) == 6
            and all(type(field) is bytes for field in ping[1:])
        ):
            return self._pong_failure("invalid ping message"), None
        _, client_hostname, salt, digest, _username, _password = ping
        expected = _shared_key_digest(salt, client_hostname, self._nonce, self._shared_key)
        if not hmac.compare_digest(digest.lower(), expected):
            return self._pong_failure("shared_key mismatch"), None
        self.done = True
        proof = _shared_key_digest(salt, self._hostname.encode(), self._nonce, self._shared_key)
        pong = ["PONG", True, "", self._hostname, proof.decode("ascii")]
        return msgpack.packb(pong), client_hostname.decode("utf-8", "replace")

    @staticmethod
    def _pong_failure(reason: str) -> bytes:
        return msgpack.packb(["PONG", False, reason, "", ""])


def _shared_key_digest(salt: bytes, hostname: bytes, nonce: bytes, shared_key: bytes) -> bytes:
    """sha512_hex(shared_key_salt + hostname + nonce + shared_key), as in PING and PONG."""
    return hashlib.sha512(salt + hostname + nonce + shared_key).hexdigest().encode("ascii")


def _unpack_small(frame: bytes) -> object:
    """Decode a handshake-sized frame with every string as bytes; None if invalid."""
    try:
        return msgpack.unpackb(frame, raw=True)
    except _UNPACK_ERRORS:
        return None


def _is_handshake(message: object, kind: bytes) -> TypeGuard[list[Any]]:
    """Whether ``message`` is a handshake array of this kind (HELO, PING, PONG)."""
    return type(message) is list and bool(message) and message[0] == kind


def _event_time(time_ns: int) -> msgpack.ExtType:
    """Encode nanoseconds as EventTime: ext 0 of two big-endian uint32 (seconds, nanos)."""
    seconds, nanos = divmod(time_ns, _NS_PER_S)
    if not 0 <= seconds < 2**32:
        raise LocalProtocolError("time outside the EventTime range")
    return msgpack.ExtType(_EVENT_TIME_EXT_CODE, struct.pack(">II", seconds, nanos))


@dataclass(frozen=True, slots=True)
class _Options:
    chunk: str | None
    compressed: object


class _MessageDecoder:
    """Decodes one complete transport-phase frame (spec "Event Modes", "Option")."""

    def __init__(self, max_record_bytes: int, max_decompressed_bytes: int) -> None:
        self._max_record_bytes = max_record_bytes
        self._max_decompressed_bytes = max_decompressed_bytes

    def decode(self, frame: bytes) -> EntriesReceived | Keepalive:
        """Return the frame's event; raise RemoteProtocolError if it is invalid."""
        try:
            return self._decode(frame)
        except _UNPACK_ERRORS:
            raise RemoteProtocolError("invalid msgpack in frame", MALFORMED_KIND) from None

    def _decode(self, frame: bytes) -> EntriesReceived | Keepalive:
        head = frame[0]
        if head == 0xC0:
            return Keepalive()
        if not _is_array(head):
            kind = UNSUPPORTED_MODE_KIND if frame in _JSON_OPENERS else MALFORMED_KIND
            raise RemoteProtocolError("frame is not a msgpack array", kind)
        reader = self._reader(frame)
        length = reader.read_array_header()
        _check_arity(length, 2, 4)
        tag = _tag(reader.unpack())
        second = frame[reader.tell()]
        if _is_array(second):
            return self._forward(tag, reader, length, frame)
        if _is_raw(second):
            return self._packed_forward(tag, reader, length, frame)
        return self._message(tag, reader, length, frame)

    def _message(
        self, tag: str, reader: msgpack.Unpacker, length: int, frame: bytes
    ) -> EntriesReceived:
        """Spec "Message Modes": ``[tag, time, record, option?]``."""
        _check_arity(length, 3, 4)
        time_ns = _time_ns(reader.unpack())
        entry = Entry(time_ns, self._record(reader, frame))
        chunk = self._options(reader, length == 4).chunk
        return EntriesReceived(tag, (entry,), chunk, Mode.MESSAGE)

    def _forward(
        self, tag: str, reader: msgpack.Unpacker, length: int, frame: bytes
    ) -> EntriesReceived:
        """Spec "Forward Mode": ``[tag, [entry*], option?]``."""
        _check_arity(length, 2, 3)
        count = reader.read_array_header()
        entries = tuple(self._entry(reader, frame) for _ in range(count))
        chunk = self._options(reader, length == 3).chunk
        return EntriesReceived(tag, entries, chunk, Mode.FORWARD)

    def _packed_forward(
        self, tag: str, reader: msgpack.Unpacker, length: int, frame: bytes
    ) -> EntriesReceived:
        """Spec "(Compressed)PackedForward Mode": ``[tag, <<entry*>>, option?]``."""
        _check_arity(length, 2, 3)
        start, size = _raw_span(frame, reader.tell())
        reader.skip()
        options = self._options(reader, length == 3)
        payload = memoryview(frame)[start : start + size]
        stream: bytearray | memoryview
        if options.compressed == "gzip":
            stream = _gunzip(payload, self._max_decompressed_bytes)
            mode = Mode.COMPRESSED_PACKED_FORWARD
        elif options.compressed in (None, "text"):
            stream, mode = payload, Mode.PACKED_FORWARD
        else:
            raise RemoteProtocolError("unsupported compression", UNSUPPORTED_MODE_KIND)
        entries = []
        stream_reader = self._reader(stream)
        while stream_reader.tell() < len(stream):
            entries.append(self._entry(stream_reader, stream))
        return EntriesReceived(tag, tuple(entries), options.chunk, mode)

    def _reader(self, source: bytes | bytearray | memoryview) -> msgpack.Unpacker:
        """An Unpacker over ``source`` whose every length is capped at one record's size."""
        cap = self._max_record_bytes
        reader = msgpack.Unpacker(
            raw=False,
            unicode_errors="replace",
            strict_map_key=True,
            max_buffer_size=max(len(source), 1),
            max_str_len=cap,
            max_bin_len=cap,
            max_array_len=cap,
            max_map_len=cap,
            max_ext_len=cap,
        )
        reader.feed(source)
        return reader

    def _entry(self, reader: msgpack.Unpacker, source: bytes | bytearray | memoryview) -> Entry:
        """Spec "Entry": ``[time, record]``."""
        if reader.read_array_header() != 2:
            raise RemoteProtocolError("entry is not [time, record]", MALFORMED_KIND)
        time_ns = _time_ns(reader.unpack())
        return Entry(time_ns, self._record(reader, source))

    def _record(
        self, reader: msgpack.Unpacker, source: bytes | bytearray | memoryview
    ) -> dict[str, Any]:
        """Read a record map, enforcing max_record_bytes on its packed size."""
        start = reader.tell()
        try:
            record = reader.unpack()
        except ValueError:
            if _packed_size(source, start) > self._max_record_bytes:
                raise RemoteProtocolError("record exceeds the size limit", OVERSIZED_KIND) from None
            raise
        if reader.tell() - start > self._max_record_bytes:
            raise RemoteProtocolError("record exceeds the size limit", OVERSIZED_KIND)
        if type(record) is not dict:
            raise RemoteProtocolError("record is not a map", MALFORMED_KIND)
        if all(type(key) is str for key in record):
            return record
        return {
            key if type(key) is str else key.decode("utf-8", "replace"): value
            for key, value in record.items()
        }

    @staticmethod
    def _options(reader: msgpack.Unpacker, present: bool) -> _Options:
        """Spec "Option": ``chunk`` must be a string; unknown options are ignored."""
        value = reader.unpack() if present else None
        if value is None:
            return _Options(None, None)
        if type(value) is not dict:
            raise RemoteProtocolError("options is not a map", MALFORMED_KIND)
        chunk = value.get("chunk")
        if chunk is not None and type(chunk) is not str:
            raise RemoteProtocolError("chunk option is not a string", MALFORMED_KIND)
        return _Options(chunk, value.get("compressed"))


def _check_arity(length: int, low: int, high: int) -> None:
    if not low <= length <= high:
        raise RemoteProtocolError("frame has a wrong number of elements", MALFORMED_KIND)


def _is_array(type_byte: int) -> bool:
    return 0x90 <= type_byte <= 0x9F or type_byte in (0xDC, 0xDD)


def _is_raw(type_byte: int) -> bool:
    """str or bin."""
    return 0xA0 <= type_byte <= 0xBF or type_byte in _RAW_LENGTH_WIDTHS


def _raw_span(frame: bytes, pos: int) -> tuple[int, int]:
    """Offset and length of the payload of the str/bin object at ``pos``."""
    head = frame[pos]
    if head <= 0xBF:
        return pos + 1, head & 0x1F
    start = pos + 1 + _RAW_LENGTH_WIDTHS[head]
    return start, int.from_bytes(frame[pos + 1 : start], "big")


def _packed_size(source: bytes | bytearray | memoryview, start: int) -> int:
    """Packed size of the object at ``start`` (0 if it is not valid msgpack)."""
    skipper = msgpack.Unpacker(max_buffer_size=max(len(source) - start, 1))
    skipper.feed(memoryview(source)[start:])
    try:
        skipper.skip()
    except _UNPACK_ERRORS:
        return 0
    return int(skipper.tell())


def _tag(value: object) -> str:
    """A tag: str, or bin decoded with replacement."""
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    raise RemoteProtocolError("tag is not a string", MALFORMED_KIND)


def _time_ns(value: object) -> int:
    """Spec "EventTime Ext Format": integer or float seconds, or EventTime, to nanoseconds.

    Fluent Bit 2.x may send ``[time, metadata]`` in place of the time (``in_forward`` takes
    the first element); the metadata is dropped.
    """
    if type(value) is list and len(value) == 2 and type(value[1]) is dict:
        value = value[0]
    if type(value) is int:
        time_ns = value * _NS_PER_S
    elif type(value) is float and math.isfinite(value):
        seconds = math.floor(value)
        time_ns = seconds * _NS_PER_S + round((value - seconds) * _NS_PER_S)
    elif (
        isinstance(value, msgpack.ExtType)
        and value.code == _EVENT_TIME_EXT_CODE
        and len(value.data) == 8
    ):
        seconds, nanos = struct.unpack(">II", value.data)
        time_ns = seconds * _NS_PER_S + nanos
    else:
        raise RemoteProtocolError("invalid event time", MALFORMED_KIND)
    if not 0 <= time_ns <= _MAX_TIME_NS:
        raise RemoteProtocolError("event time out of range", MALFORMED_KIND)
    return time_ns


def _gunzip(data: memoryview, limit: int) -> bytearray:
    """Decompress every concatenated gzip member, failing once output passes ``limit``.

    Each call may produce at most the remaining budget plus one byte, so a decompression bomb
    is stopped without being inflated; reaching that cap always fails, so no input is ever
    left unconsumed mid-member. Input goes in growing windows: at a member's end zlib copies
    the leftover of the window, and small first windows keep many tiny members linear.
    """
    out = bytearray()
    pos = 0
    while pos < len(data):
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        window = _GZIP_FIRST_WINDOW
        while not member.eof:
            if pos >= len(data):
                raise RemoteProtocolError("truncated gzip member", MALFORMED_KIND)
            chunk = data[pos : pos + window]
            try:
                out += member.decompress(chunk, limit + 1 - len(out))
            except zlib.error:
                raise RemoteProtocolError("invalid gzip data", MALFORMED_KIND) from None
            if len(out) > limit:
                raise RemoteProtocolError("decompressed entries exceed the limit", OVERSIZED_KIND)
            pos += len(chunk) - len(member.unused_data)
            window = min(2 * window, _GZIP_MAX_WINDOW)
    return out

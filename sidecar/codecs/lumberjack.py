"""Lumberjack v2 (Filebeat ``output.logstash``), sans-IO: bytes in, events out.

Strategy, as in h11: no sockets and no asyncio.  The caller feeds received bytes with
``receive_data`` (``b""`` means EOF) and pulls events with ``next_event`` until it returns
``NEED_DATA``.  A small step machine parses each frame field by field as soon as its bytes
are buffered, so input split at any byte boundary decodes identically, in linear time.
``ServerConnection`` decodes what a shipper sends; ``ClientConnection`` is the spec-built
sending side (used by the tests, usable by the product).

Wire format (spec: https://github.com/logstash-plugins/logstash-input-beats/blob/main/PROTOCOL.md,
as implemented by the Filebeat client https://github.com/elastic/go-lumber/blob/main/client/v2/client.go
and the servers go-lumber ``server/v2/reader.go`` and logstash-input-beats ``BeatsParser.java``).
Every frame starts with the version byte ``'2'`` and a frame-type byte; integers are uint32
big-endian:

* ``'W'`` window size: ``count``.  The writer sends at most ``count`` data frames before it
  waits for their acknowledgement.
* ``'J'`` JSON data frame: ``seq``, ``length``, ``length`` bytes of one JSON object.
* ``'D'`` legacy key/value data frame: ``seq``, ``pairs``, then per pair ``key length``,
  key bytes, ``value length``, value bytes (all strings).  Filebeat never sends it; it is
  decoded for old forwarders that speak it inside a version-2 stream, as logstash accepts.
* ``'C'`` compressed frame: ``length``, ``length`` bytes of a zlib (RFC 1950) stream whose
  inflated content is itself a stream of whole frames.  Filebeat sends ``W`` followed by one
  ``C`` holding the window's ``J`` frames.  Nested ``C`` frames are rejected (nobody sends
  them and they would multiply the inflation bound).
* ``'A'`` ack (reader to writer): ``seq``.

Sequence numbers, as go-lumber's client (what Filebeat uses) assigns them: every window
restarts at 1, so a window of ``n`` events carries seqs ``1..n``.

Acknowledgement semantics (what a receiver must do with ``ServerConnection.ack``):

* Acks are cumulative within a window: ``ack(k)`` acknowledges seqs ``1..k`` of the oldest
  unacknowledged window.  Filebeat waits until it reads an ack equal to the window's last
  seq (``AwaitACK``); an ack greater than that is a protocol error on its side.
* The receiver should ack only the highest seq whose record is durable (invariant 3), and
  must ack the last seq of a window before that window counts as delivered.  With
  ``pipelining`` Filebeat may send the next window before the previous ack; windows are
  then acknowledged in order, each with its own seqs.
* Keepalive: while a window is still being processed, logstash (``ConnectionHandler``) and
  go-lumber's server (``handler.go``) periodically send ``ack(0)``.  Filebeat treats any ack
  below the window's last seq as "not done yet" and restarts its read timeout, so sending
  ``ack(0)`` or ``ack(highest durable seq so far)`` both keep the connection alive.
* An empty window (``W`` with 0) is answered by logstash with ``ack(0)``.

Limits: a frame may declare at most ``max_frame_bytes`` of payload (checked before its bytes
arrive), a compressed frame inflates to at most ``max_decompressed_bytes`` (bounded with
``decompressobj(max_length)``, so a bomb never allocates past the bound), and the bytes
buffered for an incomplete frame may not exceed ``max_buffer_bytes``.  Peer mistakes raise
``RemoteProtocolError`` (message never quotes peer bytes; ``error_kind`` is one of
``"malformed"``, ``"oversized"``, ``"unsupported_version"``), after which the connection is
unusable; API misuse raises ``LocalProtocolError``; anything else escaping is a bug.
"""

from __future__ import annotations

import enum
import json
import re
import struct
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from sidecar.codecs.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MALFORMED",
    "NEED_DATA",
    "OVERSIZED",
    "UNSUPPORTED_VERSION",
    "AckReceived",
    "ClientConnection",
    "ClientEvent",
    "ConnectionClosed",
    "DataFrame",
    "Event",
    "Sentinel",
    "ServerConnection",
    "ServerEvent",
    "WindowSize",
]

_MIB = 1024 * 1024
_UINT32_MAX = 0xFFFFFFFF
_UINT32 = struct.Struct(">I")
_TWO_UINT32 = struct.Struct(">II")

_VERSION = ord("2")
_WINDOW = ord("W")
_JSON = ord("J")
_DATA = ord("D")
_COMPRESSED = ord("C")
_ACK = ord("A")

MALFORMED = "malformed"
OVERSIZED = "oversized"
UNSUPPORTED_VERSION = "unsupported_version"


class Sentinel(enum.Enum):
    """Non-event results of ``next_event``."""

    NEED_DATA = enum.auto()


NEED_DATA = Sentinel.NEED_DATA
NeedData = Literal[Sentinel.NEED_DATA]


@dataclass(frozen=True, slots=True)
class WindowSize:
    """The writer will send up to ``size`` data frames before waiting for their ack."""

    size: int


@dataclass(frozen=True, slots=True)
class DataFrame:
    """One shipped event: its per-window sequence number and the decoded JSON object."""

    seq: int
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The reader acknowledged data frames up to ``seq`` of the oldest open window."""

    seq: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, at a frame boundary."""


ServerEvent = WindowSize | DataFrame | ConnectionClosed
ClientEvent = AckReceived | ConnectionClosed
Event = ServerEvent | ClientEvent
_T = TypeVar("_T")


def _malformed(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, MALFORMED)


def _oversized(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, OVERSIZED)


def _check_version(version: int) -> None:
    if version != _VERSION:
        raise RemoteProtocolError("unsupported lumberjack version", UNSUPPORTED_VERSION)


def _check_limit(name: str, value: int) -> None:
    if value <= 0:
        raise LocalProtocolError(f"{name} must be positive")


class _StepReader(ABC, Generic[_T]):
    """A byte buffer driven by steps: a step runs once the bytes it asked for are buffered.

    Every frame starts with ``_on_header`` once ``header_size`` bytes are buffered; steps call
    ``_expect(n, step)`` to ask for the next field and ``_restart()`` at the end of a frame.
    A step returns a decoded item, or ``None`` to keep reading.
    """

    def __init__(self, header_size: int) -> None:
        self._buffer = bytearray()
        self._header_size = header_size
        self._restart()

    @abstractmethod
    def _on_header(self, chunk: bytes) -> _T | None:
        """Decode the first ``header_size`` bytes of a frame."""

    def _restart(self) -> None:
        self._expect(self._header_size, self._on_header)
        self._mid_frame = False

    def _expect(self, size: int, step: Callable[[bytes], _T | None]) -> None:
        self._need = size
        self._step = step
        self._mid_frame = True

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by a step."""
        return len(self._buffer)

    @property
    def at_boundary(self) -> bool:
        """True when nothing of a next frame has been received."""
        return not self._buffer and not self._mid_frame

    def pull(self) -> _T | NeedData:
        """Run steps while their bytes are buffered; return the first decoded item."""
        while len(self._buffer) >= self._need:
            with memoryview(self._buffer) as view:
                chunk = bytes(view[: self._need])
            del self._buffer[: self._need]
            item = self._step(chunk)
            if item is not None:
                return item
        return NEED_DATA


@dataclass(frozen=True, slots=True)
class _Compressed:
    payload: bytes


@dataclass(slots=True)
class _KeyValueFrame:
    seq: int
    pairs_left: int
    budget: int
    fields: dict[str, str] = field(default_factory=dict)
    key: str | None = None


_Frame = WindowSize | DataFrame | _Compressed


class _FrameReader(_StepReader[_Frame]):
    """Decodes the writer's frames (W, J, D and, on the wire only, C) one field at a time."""

    def __init__(self, *, max_frame_bytes: int, allow_compressed: bool) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._allow_compressed = allow_compressed
        super().__init__(header_size=2)

    def _on_header(self, chunk: bytes) -> None:
        version, code = chunk
        _check_version(version)
        if code == _WINDOW:
            self._expect(4, self._on_window)
        elif code == _JSON:
            self._expect(8, self._on_json_header)
        elif code == _DATA:
            self._expect(8, self._on_kv_header)
        elif code == _COMPRESSED and self._allow_compressed:
            self._expect(4, self._on_compressed_header)
        elif code == _COMPRESSED:
            raise _malformed("nested compressed frame")
        else:
            raise _malformed("unknown frame type")

    def _check_declared(self, size: int) -> None:
        if size > self._max_frame_bytes:
            raise _oversized("declared frame size exceeds max_frame_bytes")

    def _on_window(self, chunk: bytes) -> WindowSize:
        self._restart()
        return WindowSize(_UINT32.unpack(chunk)[0])

    def _on_json_header(self, chunk: bytes) -> None:
        seq, length = _TWO_UINT32.unpack(chunk)
        self._check_declared(length)
        self._expect(length, lambda payload: self._on_json_payload(seq, payload))

    def _on_json_payload(self, seq: int, payload: bytes) -> DataFrame:
        self._restart()
        return DataFrame(seq, _decode_json_object(payload))

    def _on_compressed_header(self, chunk: bytes) -> None:
        (length,) = _UINT32.unpack(chunk)
        self._check_declared(length)
        self._expect(length, self._on_compressed_payload)

    def _on_compressed_payload(self, payload: bytes) -> _Compressed:
        self._restart()
        return _Compressed(payload)

    def _on_kv_header(self, chunk: bytes) -> DataFrame | None:
        seq, pairs = _TWO_UINT32.unpack(chunk)
        # Each pair carries two 4-byte lengths, so the pair count alone bounds the frame.
        self._check_declared(8 + 8 * pairs)
        return self._next_kv_field(_KeyValueFrame(seq, pairs, self._max_frame_bytes - 8))

    def _next_kv_field(self, kv: _KeyValueFrame) -> DataFrame | None:
        if kv.pairs_left == 0:
            self._restart()
            return DataFrame(kv.seq, kv.fields)
        self._expect(4, lambda chunk: self._on_kv_length(kv, chunk))
        return None

    def _on_kv_length(self, kv: _KeyValueFrame, chunk: bytes) -> None:
        (length,) = _UINT32.unpack(chunk)
        kv.budget -= 4 + length
        if kv.budget < 0:
            raise _oversized("key/value frame exceeds max_frame_bytes")
        self._expect(length, lambda chunk: self._on_kv_string(kv, chunk))

    def _on_kv_string(self, kv: _KeyValueFrame, chunk: bytes) -> DataFrame | None:
        text = chunk.decode("utf-8", errors="replace")
        if kv.key is None:
            kv.key = text
            self._expect(4, lambda chunk: self._on_kv_length(kv, chunk))
            return None
        kv.fields[kv.key] = text
        kv.key = None
        kv.pairs_left -= 1
        return self._next_kv_field(kv)


# A lone surrogate can only come from a \uD800-\uDFFF escape: decoded UTF-8 never holds one,
# and json joins valid escape pairs.  Lone surrogates cannot be re-encoded downstream.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError("non-standard JSON constant")


def _decode_json_object(payload: bytes) -> dict[str, Any]:
    """Decode one JSON object; invalid UTF-8 and lone surrogates become U+FFFD."""
    text = payload.decode("utf-8", errors="replace")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        if _SURROGATE_ESCAPE.search(text):
            value = _replace_lone_surrogates(value)
    except (ValueError, RecursionError):
        raise _malformed("data frame is not valid JSON") from None
    if not isinstance(value, dict):
        raise _malformed("data frame is not a JSON object")
    return value


def _replace_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _replace_lone_surrogates(key): _replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def _inflate(payload: bytes, limit: int) -> bytes:
    """Inflate one complete zlib stream of at most ``limit`` bytes, allocating no more."""
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(payload, limit + 1)
    except zlib.error:
        raise _malformed("compressed frame is not a valid zlib stream") from None
    if len(inflated) > limit:
        raise _oversized("compressed frame inflates past max_decompressed_bytes")
    if not inflater.eof:
        raise _malformed("compressed frame is truncated")
    if inflater.unused_data:
        raise _malformed("compressed frame has trailing bytes")
    return inflated


class _Connection(ABC, Generic[_T]):
    """EOF and error bookkeeping shared by both ends; subclasses decode."""

    def __init__(self) -> None:
        self._eof = False
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes received from the peer; ``b""`` signals EOF.

        Raises ``LocalProtocolError`` if called after EOF.  After a ``RemoteProtocolError``
        the bytes are discarded (the connection is unusable).
        """
        if self._eof:
            raise LocalProtocolError("receive_data called after EOF")
        if not data:
            self._eof = True
        elif self._error is None:
            self._feed(bytes(data))

    def next_event(self) -> _T | NeedData:
        """Return the next event, or ``NEED_DATA`` when more bytes must be received.

        After EOF at a frame boundary it returns ``ConnectionClosed()`` (every time).  Raises
        ``RemoteProtocolError`` if the peer broke the protocol; it raises again on every
        later call.
        """
        if self._error is not None:
            raise RemoteProtocolError(str(self._error), self._error.error_kind)
        try:
            return self._next()
        except RemoteProtocolError as error:
            self._error = error
            raise

    @abstractmethod
    def _feed(self, data: bytes) -> None:
        """Hand received bytes to the decoder."""

    @abstractmethod
    def _next(self) -> _T | NeedData:
        """Decode the next event; raise ``RemoteProtocolError`` on a peer mistake."""

    def _out_of_data(self, reader: _StepReader[Any]) -> ConnectionClosed | NeedData:
        """What running out of buffered bytes means: wait, a clean close, or a truncation."""
        if not self._eof:
            return NEED_DATA
        if not reader.at_boundary:
            raise _malformed("connection closed inside a frame")
        return ConnectionClosed()


class ServerConnection(_Connection[ServerEvent]):
    """The receiving (reader) side: decodes what Filebeat sends and builds ack frames."""

    def __init__(
        self,
        *,
        max_buffer_bytes: int = 64 * _MIB,
        max_frame_bytes: int = 16 * _MIB,
        max_decompressed_bytes: int = 64 * _MIB,
    ) -> None:
        """Limits are in bytes and must be positive (else ``LocalProtocolError``)."""
        super().__init__()
        _check_limit("max_buffer_bytes", max_buffer_bytes)
        _check_limit("max_frame_bytes", max_frame_bytes)
        _check_limit("max_decompressed_bytes", max_decompressed_bytes)
        self._max_buffer_bytes = max_buffer_bytes
        self._max_frame_bytes = max_frame_bytes
        self._max_decompressed_bytes = max_decompressed_bytes
        self._wire = _FrameReader(max_frame_bytes=max_frame_bytes, allow_compressed=True)
        self._inflated: _FrameReader | None = None

    def ack(self, seq: int) -> bytes:
        """Build the ack frame ``'2' 'A' seq``; acknowledges seqs ``1..seq`` of the oldest
        open window (see the module docstring; ``ack(0)`` is the keepalive).

        Raises ``LocalProtocolError`` unless ``0 <= seq <= 2**32 - 1``.
        """
        if not 0 <= seq <= _UINT32_MAX:
            raise LocalProtocolError("ack sequence number out of uint32 range")
        return bytes((_VERSION, _ACK)) + _UINT32.pack(seq)

    def _feed(self, data: bytes) -> None:
        self._wire.feed(data)

    def _next(self) -> ServerEvent | NeedData:
        while True:
            if self._inflated is not None:
                frame = self._inflated.pull()
                if frame is not NEED_DATA:
                    assert not isinstance(frame, _Compressed)
                    return frame
                if not self._inflated.at_boundary:
                    raise _malformed("compressed frame ends inside a frame")
                self._inflated = None
            frame = self._wire.pull()
            if frame is NEED_DATA:
                if self._wire.buffered > self._max_buffer_bytes:
                    raise _oversized("incomplete frame exceeds max_buffer_bytes")
                return self._out_of_data(self._wire)
            if not isinstance(frame, _Compressed):
                return frame
            self._inflated = _FrameReader(
                max_frame_bytes=self._max_frame_bytes, allow_compressed=False
            )
            self._inflated.feed(_inflate(frame.payload, self._max_decompressed_bytes))


class _AckReader(_StepReader[int]):
    """Decodes the reader's ack frames into their sequence numbers."""

    def __init__(self) -> None:
        super().__init__(header_size=6)

    def _on_header(self, chunk: bytes) -> int:
        _check_version(chunk[0])
        if chunk[1] != _ACK:
            raise _malformed("expected an ack frame")
        self._restart()
        return int(_UINT32.unpack_from(chunk, 2)[0])


class ClientConnection(_Connection[ClientEvent]):
    """The sending (writer) side, framing windows exactly as Filebeat's go-lumber client."""

    def __init__(self, *, compress_level: int = 3) -> None:
        """``compress_level`` 1-9 sends each window as one zlib ``C`` frame; 0 sends bare
        ``J`` frames.  Other values raise ``LocalProtocolError``."""
        super().__init__()
        if not 0 <= compress_level <= 9:
            raise LocalProtocolError("compress_level must be between 0 and 9")
        self._compress_level = compress_level
        self._reader = _AckReader()
        self._open_windows: deque[int] = deque()

    @property
    def unacked_windows(self) -> int:
        """Windows sent whose last seq has not been acknowledged yet."""
        return len(self._open_windows)

    def send_window(self, events: Sequence[Mapping[str, Any]]) -> bytes:
        """Return the bytes of one window: ``W`` then the events as ``J`` frames with seqs
        ``1..len(events)``, wrapped in one ``C`` frame unless ``compress_level`` is 0.

        Raises ``LocalProtocolError`` for an empty window, a non-mapping event, or an event
        that is not JSON-serialisable (strict JSON, UTF-8).
        """
        if not events or len(events) > _UINT32_MAX:
            raise LocalProtocolError("a window holds 1 to 2**32-1 events")
        frames = b"".join(_json_frame(seq, event) for seq, event in enumerate(events, start=1))
        if self._compress_level:
            compressed = zlib.compress(frames, self._compress_level)
            frames = bytes((_VERSION, _COMPRESSED)) + _UINT32.pack(len(compressed)) + compressed
        self._open_windows.append(len(events))
        return bytes((_VERSION, _WINDOW)) + _UINT32.pack(len(events)) + frames

    def _feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def _next(self) -> ClientEvent | NeedData:
        seq = self._reader.pull()
        if seq is NEED_DATA:
            return self._out_of_data(self._reader)
        if self._open_windows and seq == self._open_windows[0]:
            self._open_windows.popleft()
        elif seq != 0 and (not self._open_windows or seq > self._open_windows[0]):
            raise _malformed("ack beyond the open window")
        return AckReceived(seq)


def _json_frame(seq: int, event: Mapping[str, Any]) -> bytes:
    if not isinstance(event, Mapping):
        raise LocalProtocolError("each event must be a mapping")
    try:
        payload = json.dumps(
            dict(event), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        raise LocalProtocolError("event is not JSON-serialisable") from None
    return bytes((_VERSION, _JSON)) + _TWO_UINT32.pack(seq, len(payload)) + payload

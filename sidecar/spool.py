"""Durable, bounded queue of sanitized batches between processing and delivery.

Layout: a directory of segment files ``segment-<n>.spool`` written append-only,
and one cursor file per consumer (exporter). Each entry is a header
``length (u32) | crc32 (u32) | appended_ns (u64)`` followed by the payload
(the sanitized batch, msgpack-encoded by the caller); the CRC covers the
timestamp and the payload. Appending rolls to a new segment past
``segment_bytes``. A consumer reads from its cursor and ``commit``s a position
after delivery; a segment is deleted once every consumer has passed it.
Cursors are rewritten atomically (temp file + rename), so after a crash a
consumer resumes at its last commit: delivery is at-least-once.

Durability: ``fsync: always`` syncs every append (survives power loss);
``interval`` syncs at most every ``fsync_interval_ms`` (an acknowledged
record survives a killed process, since the write reached the page cache, but
the last interval may be lost on power loss); ``never`` leaves it to the OS.

Recovery: on open, every segment is scanned; a torn or corrupt tail (a kill
mid-write) is truncated and counted. Bounds: ``append`` blocks while the spool
holds ``max_bytes`` (the pipeline stops admitting, so receivers apply
backpressure); entries older than ``max_age_seconds`` are skipped on read and
counted as expired, never silently. ``MemorySpool`` has the same interface
without the disk, for tests and embedding.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from sidecar.durable import fsync_dir

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIQ")
SEGMENT_GLOB = "segment-*.spool"


@dataclass(frozen=True)
class SpoolSettings:
    fsync: Literal["always", "interval", "never"] = field(
        default="interval", metadata={"doc": "When appends are synced to disk (see README)."})
    fsync_interval_ms: int = field(
        default=1000, metadata={"doc": "Longest time between syncs with fsync: interval.",
                                "min": 1})
    segment_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"doc": "Size at which a new segment starts.",
                                            "min": 4096})
    max_bytes: int = field(
        default=1024 * 1024 * 1024,
        metadata={"doc": "Spool bound; when reached, receivers apply backpressure.",
                  "min": 65536})
    max_age_seconds: float = field(
        default=7 * 24 * 3600.0,
        metadata={"doc": "Entries older than this are dropped (counted); 0 keeps them forever.",
                  "min": 0.0})

    def __post_init__(self) -> None:
        # The tail segment is never deleted, so the bound must leave room beyond it.
        if self.max_bytes < 2 * self.segment_bytes:
            raise ValueError("max_bytes must be at least twice segment_bytes")


@dataclass(frozen=True, order=True)
class Position:
    """Where an entry ends: a consumer that commits it has delivered everything before."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Entry:
    payload: bytes
    appended_ns: int
    end: Position


class SpoolError(OSError):
    """The spool cannot be used (disk error, unreadable directory); names the path."""


class Spool(Protocol):
    expired: int
    torn_bytes: int

    def append(self, payload: bytes, timeout: float | None = None) -> bool: ...

    def read(self, consumer: str, max_entries: int) -> list[Entry]: ...

    def commit(self, consumer: str, position: Position) -> None: ...

    @property
    def bytes_used(self) -> int: ...

    def close(self) -> None: ...


class _Bounded:
    """What both spools share: the size bound (``append`` waits for room) and the age limit."""

    def __init__(self, max_bytes: int, max_age_seconds: float):
        self._max_bytes = max_bytes
        self._max_age_ns = int(max_age_seconds * 1e9)
        self._room = threading.Condition()
        self._used = 0
        self.expired = 0  # entries skipped for age
        self.torn_bytes = 0  # bytes cut off torn tails at recovery (FileSpool)

    def commit(self, consumer: str, position: Position) -> None:
        raise NotImplementedError

    def _drop_expired(self, consumer: str, entries: list[Entry]) -> list[Entry]:
        """Skip (commit past and count) entries older than the age limit."""
        if not self._max_age_ns:
            return entries
        cutoff = time.time_ns() - self._max_age_ns
        fresh = [e for e in entries if e.appended_ns >= cutoff]
        if len(fresh) < len(entries):
            self.expired += len(entries) - len(fresh)
            self.commit(consumer, max(e.end for e in entries if e.appended_ns < cutoff))
        return fresh

    @property
    def bytes_used(self) -> int:
        return self._used

    def _wait_for_room(self, size: int, timeout: float | None) -> bool:
        with self._room:
            return self._room.wait_for(
                lambda: self._used == 0 or self._used + size <= self._max_bytes, timeout)

    def _freed(self, size: int) -> None:
        with self._room:
            self._used -= size
            self._room.notify_all()


class MemorySpool(_Bounded):
    """In-memory spool: same contract, no durability (tests, embedding)."""

    def __init__(self, consumers: Sequence[str], max_bytes: int = 64 * 1024 * 1024,
                 max_age_seconds: float = 0.0):
        super().__init__(max_bytes, max_age_seconds)
        self._entries: list[Entry] = []
        self._first = 0  # index of self._entries[0]
        self._cursors = {name: 0 for name in consumers}
        self._lock = threading.Lock()

    def append(self, payload: bytes, timeout: float | None = None) -> bool:
        """Add one entry; False if no room appeared within ``timeout``."""
        if not self._wait_for_room(len(payload), timeout):
            return False
        with self._lock:
            index = self._first + len(self._entries)
            self._entries.append(Entry(payload, time.time_ns(), Position(0, index + 1)))
            self._used += len(payload)
        return True

    def read(self, consumer: str, max_entries: int) -> list[Entry]:
        with self._lock:
            start = self._cursors[consumer] - self._first
            entries = self._entries[start:start + max_entries]
        return self._drop_expired(consumer, entries)

    def commit(self, consumer: str, position: Position) -> None:
        with self._lock:
            self._cursors[consumer] = max(self._cursors[consumer], position.offset)
            done = min(self._cursors.values()) - self._first
            freed = sum(len(e.payload) for e in self._entries[:done])
            del self._entries[:done]
            self._first += max(done, 0)
        if freed:
            self._freed(freed)

    def close(self) -> None:
        return None


class FileSpool(_Bounded):
    """The on-disk spool described in the module docstring. One process per directory."""

    def __init__(self, directory: Path, settings: SpoolSettings, consumers: Sequence[str]):
        super().__init__(settings.max_bytes, settings.max_age_seconds)
        self._dir = Path(directory)
        self._settings = settings
        self._lock = threading.Lock()
        self._last_sync = time.monotonic()
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._segments = self._recover()
            self._cursors = {name: self._load_cursor(name) for name in consumers}
            if not self._segments:
                self._segments = [1]
            self._tail_id = self._segments[-1]
            self._tail = open(self._segment_path(self._tail_id), "ab")
        except OSError as exc:
            raise SpoolError(f"spool directory {self._dir} is not usable: "
                             f"{exc.strerror or exc}") from None
        self._used = sum(self._segment_path(s).stat().st_size for s in self._segments)

    # -- recovery and cursors

    def _segment_path(self, segment: int) -> Path:
        return self._dir / f"segment-{segment:012d}.spool"

    def _recover(self) -> list[int]:
        segments = sorted(int(p.stem.split("-")[1]) for p in self._dir.glob(SEGMENT_GLOB))
        for segment in segments:
            path = self._segment_path(segment)
            good = self._valid_prefix(path)
            size = path.stat().st_size
            if good < size:
                self.torn_bytes += size - good
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
        return segments

    @staticmethod
    def _valid_prefix(path: Path) -> int:
        """Length of the longest prefix of whole entries with matching checksums."""
        data = path.read_bytes()
        offset = 0
        while offset + HEADER.size <= len(data):
            length, crc, appended = HEADER.unpack_from(data, offset)
            end = offset + HEADER.size + length
            body = data[offset + HEADER.size:end]
            if end > len(data) or zlib.crc32(body, zlib.crc32(struct.pack(">Q", appended))) != crc:
                break
            offset = end
        return offset

    def _cursor_path(self, consumer: str) -> Path:
        return self._dir / f"cursor-{consumer.replace('/', '_')}"

    def _load_cursor(self, consumer: str) -> Position:
        """The consumer's committed position; the spool's start if there is none.

        Cursors are not fsynced (one per delivered batch would cost too much), so after a
        power loss one may be empty: delivery then restarts from the oldest segment -
        duplicates, never losses (at-least-once).
        """
        first = Position(self._segments[0] if self._segments else 1, 0)
        try:
            segment, offset = self._cursor_path(consumer).read_text().split()
            return Position(int(segment), int(offset))
        except FileNotFoundError:
            return first
        except ValueError:
            log.warning("cursor of %s is unreadable; redelivering from the spool's start",
                        consumer)
            return first

    # -- the queue

    def append(self, payload: bytes, timeout: float | None = None) -> bool:
        """Write one entry (synced per policy); False if no room appeared in ``timeout``.

        Raises SpoolError on a disk error; the entry is then not in the spool: the
        tail segment is cut back to its last whole entry and reopened, so a failed
        write leaves neither a torn entry nor buffered bytes behind.
        """
        if not self._wait_for_room(len(payload) + HEADER.size, timeout):
            return False
        appended = time.time_ns()
        crc = zlib.crc32(payload, zlib.crc32(struct.pack(">Q", appended)))
        with self._lock:
            try:
                if self._tail.closed:
                    self._reopen_tail()
                if self._tail.tell() >= self._settings.segment_bytes:
                    self._roll()
                self._tail.write(HEADER.pack(len(payload), crc, appended) + payload)
                self._tail.flush()
                self._sync()
            except OSError as exc:
                self._abandon_tail()
                raise SpoolError(f"cannot write to spool {self._dir}: "
                                 f"{exc.strerror or exc}") from None
            self._used += len(payload) + HEADER.size
        return True

    def _abandon_tail(self) -> None:
        """After a failed write: drop the buffered bytes and cut the torn entry off."""
        with contextlib.suppress(OSError):
            self._tail.close()  # may raise while flushing the failed bytes; it closes anyway
        with contextlib.suppress(OSError):
            self._reopen_tail()

    def _reopen_tail(self) -> None:
        path = self._segment_path(self._tail_id)
        os.truncate(path, self._valid_prefix(path))
        self._tail = open(path, "ab")

    def _roll(self) -> None:
        os.fsync(self._tail.fileno())
        self._tail.close()
        self._tail_id += 1
        self._segments.append(self._tail_id)
        self._tail = open(self._segment_path(self._tail_id), "ab")
        fsync_dir(self._dir)

    def _sync(self) -> None:
        policy = self._settings.fsync
        now = time.monotonic()
        if policy == "always" or (
                policy == "interval"
                and now - self._last_sync >= self._settings.fsync_interval_ms / 1000):
            os.fsync(self._tail.fileno())
            self._last_sync = now

    def read(self, consumer: str, max_entries: int) -> list[Entry]:
        """Up to ``max_entries`` entries after ``consumer``'s cursor, oldest first."""
        with self._lock:
            cursor = self._cursors[consumer]
            segments = [s for s in self._segments if s >= cursor.segment]
        entries: list[Entry] = []
        for segment in segments:
            offset = cursor.offset if segment == cursor.segment else 0
            entries.extend(self._read_segment(segment, offset, max_entries - len(entries)))
            if len(entries) >= max_entries:
                break
        return self._drop_expired(consumer, entries)

    def _read_segment(self, segment: int, offset: int, limit: int) -> list[Entry]:
        out: list[Entry] = []
        try:
            with open(self._segment_path(segment), "rb") as f:
                f.seek(offset)
                while len(out) < limit:
                    header = f.read(HEADER.size)
                    if len(header) < HEADER.size:
                        break
                    length, _, appended = HEADER.unpack(header)
                    payload = f.read(length)
                    if len(payload) < length:
                        break  # still being written
                    offset += HEADER.size + length
                    out.append(Entry(payload, appended, Position(segment, offset)))
        except FileNotFoundError:
            pass
        return out

    def commit(self, consumer: str, position: Position) -> None:
        """Record that ``consumer`` delivered everything up to ``position`` (durably)."""
        with self._lock:
            if position <= self._cursors[consumer]:
                return
            self._cursors[consumer] = position
            path = self._cursor_path(consumer)
            temp = path.with_suffix(".tmp")
            temp.write_text(f"{position.segment} {position.offset}\n")
            os.replace(temp, path)
            oldest = min(c.segment for c in self._cursors.values())
            done = [s for s in self._segments if s < oldest and s != self._tail_id]
            freed = 0
            for segment in done:
                path = self._segment_path(segment)
                freed += path.stat().st_size
                path.unlink()
                self._segments.remove(segment)
        if freed:
            self._freed(freed)

    def close(self) -> None:
        with self._lock:
            if not self._tail.closed:
                self._tail.flush()
                os.fsync(self._tail.fileno())
                self._tail.close()

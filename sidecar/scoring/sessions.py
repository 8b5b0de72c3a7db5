"""Session keys, and the table that holds every live session's model state.

Strategy: a record's session key comes from one configured source - a regex over
the sanitized body (``regex:<pattern>``, e.g. HDFS ``blk_-?\\d+``), a record
attribute (``attr:<name>``) - and falls back to its stream (tag and host); with
``stream`` the stream is the session. Patterns are RE2 (linear time on any input).

The table maps session keys to slots of preallocated numpy arrays (one row of
LSTM state and one row of cached next-key log-probabilities per slot), so a batch
gathers and scatters state with single fancy-indexing operations and memory is
fixed by ``capacity``. An ordered dict keeps sessions in last-use order: idle
expiry pops from its front, and opening a session when every slot is taken evicts
the least recently used one. Expired and closed sessions are handed back to the
caller, who scores their end before releasing the slot.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import re2
from re2 import _re2

from sidecar.record import Record

_UNANCHORED = _re2.RE2.Anchor.UNANCHORED


class TextPattern:
    """An RE2 pattern searched in record text; ``find`` returns the first match.

    The match is capture group 1 if the pattern has a capturing group, else the
    whole match. Patterns that match the empty string are refused (ValueError),
    as are patterns RE2 cannot compile.
    """

    def __init__(self, pattern: str):
        try:
            compiled = re2.compile(pattern)
        except re2.error as exc:
            raise ValueError(f"pattern {pattern!r} is not valid RE2 syntax ({exc})") from None
        if compiled.fullmatch("") is not None:
            raise ValueError(f"pattern {pattern!r} matches the empty string")
        self.pattern = pattern
        # The public match API builds a match object per call (~2 us here); the compiled
        # RE2 object answers with spans over UTF-8 bytes in a third of that.
        self._regexp = compiled._regexp
        self._group = 1 if compiled.groups else 0

    def find(self, text: str) -> str | None:
        """The first match in ``text``, or None."""
        data = text.encode("utf-8", "surrogatepass")
        spans = self._regexp.Match(_UNANCHORED, data, 0, len(data))
        start, end = spans[self._group]
        if start < 0:
            return None
        return data[start:end].decode("utf-8", "surrogatepass")


class SessionKeyer:
    """Maps a record to its session key, per a spec ``regex:<p>``, ``attr:<name>`` or ``stream``.

    Records without a match or without the attribute fall back to their stream key
    ``<tag>@<host>`` (host from resource ``host.name``, else attribute ``host``), or
    ``<tag>`` when the record names no host.
    A malformed spec raises ValueError.
    """

    def __init__(self, spec: str):
        kind, _, arg = spec.partition(":")
        self.spec = spec
        self._pattern: TextPattern | None = None
        self._attribute: str | None = None
        if kind == "regex" and arg:
            self._pattern = TextPattern(arg)
        elif kind == "attr" and arg:
            self._attribute = arg
        elif spec != "stream":
            raise ValueError(f"session key {spec!r}: expected \"regex:<pattern>\", "
                             "\"attr:<name>\" or \"stream\"")

    def __call__(self, record: Record) -> str:
        if self._pattern is not None:
            found = self._pattern.find(record.body)
            if found is not None:
                return found
        elif self._attribute is not None:
            value = record.attributes.get(self._attribute)
            if value is not None and value != "":
                return str(value)
        host = record.resource.get("host.name") or record.attributes.get("host") or ""
        return f"{record.tag}@{host}" if host else record.tag


@dataclass(frozen=True)
class Assignment:
    """Slots for one run of records (see ``SessionTable.assign``)."""

    slots: np.ndarray
    """The slot of each record's session (int64)."""
    closed: list[tuple[str, int]]
    """(key, slot) of sessions an end marker closed, in order; release after scoring."""
    opened: int
    """Sessions opened."""
    evicted: int
    """Sessions evicted, least recently used first, to make room."""


class SessionTable:
    """Live sessions and their model state, in arrays of ``capacity`` rows.

    ``state[p, slot]`` is state part p (h0, c0, h1, c1, ...) of a session and
    ``logp[slot]`` the log-probabilities it predicts for its next key. A new session
    starts from ``initial_state`` and ``initial_logp`` (the model after the start key).
    Not thread-safe: one pipeline thread owns it.
    """

    def __init__(self, capacity: int, initial_state: np.ndarray, initial_logp: np.ndarray):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        parts, hidden = initial_state.shape
        self.capacity = capacity
        self.state = np.zeros((parts, capacity, hidden), np.float32)
        self.logp = np.zeros((capacity, initial_logp.shape[0]), np.float32)
        self.last_template: list[str | None] = [None] * capacity
        self._initial_state = initial_state.astype(np.float32)[:, None, :]
        self._initial_logp = initial_logp.astype(np.float32)
        self._live: OrderedDict[str, int] = OrderedDict()
        self._last_seen = [0.0] * capacity
        self._free = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: str) -> bool:
        return key in self._live

    def assign(self, keys: Sequence[str], now: float,
               ends: Sequence[bool] | None = None) -> Assignment:
        """Give each record (session key ``keys[i]``, seen at ``now``) its session's slot.

        Unknown keys open a session, evicting the least recently used one when the
        table is full. ``ends[i]`` true (if given) closes record i's session after
        it: a later record with the same key opens a new session. ``len(keys)`` must
        not exceed ``capacity``, so that no session of this run is evicted by this run.
        """
        if len(keys) > self.capacity:
            raise ValueError("more records than table capacity in one assignment")
        live, last_seen, free = self._live, self._last_seen, self._free
        find, touch = live.get, live.move_to_end  # hot loop: bound once
        slots: list[int] = []
        opened: list[int] = []
        closed: list[tuple[str, int]] = []
        evicted = 0
        for key, end in zip(keys, [False] * len(keys) if ends is None else ends, strict=True):
            slot = find(key)
            if slot is None:
                if free:
                    slot = free.pop()
                else:
                    slot = live.popitem(last=False)[1]
                    evicted += 1
                live[key] = slot
                opened.append(slot)
            else:
                touch(key)
            last_seen[slot] = now
            slots.append(slot)
            if end:
                del live[key]
                closed.append((key, slot))
        if opened:
            self.state[:, opened] = self._initial_state
            self.logp[opened] = self._initial_logp
            for slot in opened:
                self.last_template[slot] = None
        return Assignment(np.array(slots, np.int64), closed, len(opened), evicted)

    def expire(self, now: float, idle_seconds: float) -> list[tuple[str, int]]:
        """Remove and return (key, slot) of sessions unused for ``idle_seconds``, oldest first."""
        expired = []
        live, last_seen = self._live, self._last_seen
        while live:
            key, slot = next(iter(live.items()))
            if now - last_seen[slot] < idle_seconds:
                break
            del live[key]
            expired.append((key, slot))
        return expired

    def drain(self) -> list[tuple[str, int]]:
        """Remove and return (key, slot) of every live session, oldest first."""
        drained = list(self._live.items())
        self._live.clear()
        return drained

    def release(self, slots: Sequence[int]) -> None:
        """Make the slots of removed sessions available again."""
        self._free.extend(slots)

"""Session keys and the session table: key sources, LRU bound, idle expiry, end markers."""

from __future__ import annotations

import numpy as np
import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from sidecar.record import Record
from sidecar.scoring.sessions import SessionKeyer, SessionTable, TextPattern

PARTS, HIDDEN, VOCAB = 4, 3, 5


def make_table(capacity: int) -> SessionTable:
    initial_state = np.arange(PARTS * HIDDEN, dtype=np.float32).reshape(PARTS, HIDDEN)
    initial_logp = np.log(np.full(VOCAB, 1 / VOCAB, np.float32))
    return SessionTable(capacity, initial_state, initial_logp)


# ---------------------------------------------------------------- session keys


def test_regex_key_is_the_first_match():
    keyer = SessionKeyer(r"regex:blk_-?\d+")
    record = Record(body="Receiving block blk_-1608999687919862906 src: /10.250.19.102 blk_7")
    assert keyer(record) == "blk_-1608999687919862906"


def test_regex_key_uses_the_first_capturing_group():
    keyer = SessionKeyer(r"regex:customer=(<CUSTOMER_ID:[0-9a-f]+>)")
    record = Record(body="login ok customer=<CUSTOMER_ID:9f86d081> from <IPV4:1a2b>")
    assert keyer(record) == "<CUSTOMER_ID:9f86d081>"


def test_attribute_key_and_stream_fallback():
    keyer = SessionKeyer("attr:trace_id")
    assert keyer(Record(body="x", attributes={"trace_id": "4bf92f35"})) == "4bf92f35"
    no_trace = Record(body="x", tag="app.web", resource={"host.name": "node-1"})
    assert keyer(no_trace) == "app.web@node-1"


def test_stream_key_takes_the_host_attribute_when_no_resource_host():
    keyer = SessionKeyer("stream")
    assert keyer(Record(body="blk_1", tag="hdfs", attributes={"host": "dn-3"})) == "hdfs@dn-3"
    assert keyer(Record(body="blk_1", tag="hdfs")) == "hdfs"


def test_regex_without_a_match_falls_back_to_the_stream():
    keyer = SessionKeyer(r"regex:blk_-?\d+")
    assert keyer(Record(body="no block here", tag="hdfs", attributes={"host": "dn"})) == "hdfs@dn"


@pytest.mark.parametrize("spec", ["", "regex:", "attr:", "field:x", "regex:(a", r"regex:(a)\1",
                                  "regex:a*"])
def test_bad_session_key_specs_are_refused(spec):
    with pytest.raises(ValueError):
        SessionKeyer(spec)


def test_text_pattern_handles_non_ascii_offsets():
    pattern = TextPattern(r"id=(\S+)")
    assert pattern.find("naïve ünïcödé 🚀 id=Zoë42 end") == "Zoë42"
    assert pattern.find("nothing") is None


@given(st.text(alphabet=st.sampled_from("ab_-019é🚀 blk"), max_size=40))
def test_text_pattern_agrees_with_the_public_re2_api(text):
    pattern = r"blk_(-?\d+)"
    match = re2.search(pattern, text)
    assert TextPattern(pattern).find(text) == (match.group(1) if match else None)


# ---------------------------------------------------------------- the table


def test_sessions_keep_their_slot_and_start_from_the_initial_state():
    table = make_table(4)
    first = table.assign(["a", "b", "a"], now=0.0)
    assert first.slots.tolist()[0] == first.slots.tolist()[2] != first.slots.tolist()[1]
    assert first.opened == 2 and first.evicted == 0 and len(table) == 2
    for slot in set(first.slots.tolist()):
        np.testing.assert_array_equal(table.state[:, slot], table._initial_state[:, 0])
    table.state[:, first.slots[0]] = 7.0
    again = table.assign(["a"], now=1.0)
    assert again.slots[0] == first.slots[0] and again.opened == 0
    assert (table.state[:, again.slots[0]] == 7.0).all()


def test_lru_bound_evicts_the_least_recently_used_session():
    table = make_table(3)
    table.assign(["a", "b", "c"], now=0.0)
    table.assign(["a"], now=1.0)  # b is now the least recently used
    result = table.assign(["d"], now=2.0)
    assert result.evicted == 1 and len(table) == 3
    assert "b" not in table and all(key in table for key in "acd")
    result = table.assign(["e", "f"], now=3.0)  # evicts c, then a
    assert result.evicted == 2 and "c" not in table and "a" not in table and "d" in table


def test_memory_is_bounded_by_capacity():
    table = make_table(100)
    shapes = (table.state.shape, table.logp.shape)
    evicted = 0
    for batch in range(50):
        evicted += table.assign([f"s{batch}-{i}" for i in range(100)], now=float(batch)).evicted
    assert len(table) == 100 and evicted == 4900
    assert (table.state.shape, table.logp.shape) == shapes == ((PARTS, 100, HIDDEN), (100, VOCAB))


def test_a_reopened_slot_is_reset():
    table = make_table(1)
    slot = table.assign(["a"], now=0.0).slots[0]
    table.state[:, slot] = -1.0
    table.logp[slot] = 0.0
    table.last_template[slot] = "<*> old"
    assert table.assign(["b"], now=1.0).slots[0] == slot
    np.testing.assert_array_equal(table.state[:, slot], table._initial_state[:, 0])
    np.testing.assert_array_equal(table.logp[slot], table._initial_logp)
    assert table.last_template[slot] is None


def test_idle_sessions_expire_oldest_first_and_only_when_idle():
    table = make_table(10)
    table.assign(["a", "b"], now=0.0)
    table.assign(["c"], now=5.0)
    table.assign(["a"], now=8.0)
    assert table.expire(now=9.0, idle_seconds=10.0) == []
    expired = table.expire(now=15.5, idle_seconds=10.0)
    assert [key for key, _ in expired] == ["b", "c"] and len(table) == 1
    table.release([slot for _, slot in expired])
    assert table.assign(["x", "y"], now=16.0).opened == 2 and len(table) == 3


def test_an_end_marker_closes_the_session_after_its_record():
    table = make_table(10)
    result = table.assign(["a", "a", "b", "a"], now=0.0, ends=[False, True, False, False])
    slots = result.slots.tolist()
    assert slots[0] == slots[1] != slots[3]  # the fourth record opens a new session "a"
    assert result.closed == [("a", slots[1])] and result.opened == 3
    assert len(table) == 2


def test_closed_slots_are_reused_only_after_release():
    table = make_table(2)
    closed = table.assign(["a"], now=0.0, ends=[True]).slots[0]
    assert len(table) == 0
    assert table.assign(["b"], now=1.0).slots[0] != closed
    assert table.assign(["c"], now=2.0).evicted == 1  # the closed slot is not free yet
    table.release([closed])
    result = table.assign(["d"], now=3.0)
    assert result.slots[0] == closed and result.evicted == 0


def test_drain_removes_every_session():
    table = make_table(5)
    table.assign(["a", "b", "c"], now=0.0)
    assert [key for key, _ in table.drain()] == ["a", "b", "c"] and len(table) == 0


def test_an_assignment_larger_than_the_table_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        make_table(2).assign(["a", "b", "c"], now=0.0)

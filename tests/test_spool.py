"""Spool: durability, per-consumer cursors, recovery from torn tails, bounds."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sidecar.spool import FileSpool, MemorySpool, SpoolError, SpoolSettings


def small(**kw):
    return SpoolSettings(**{"segment_bytes": 4096, "fsync": "always", **kw})


def payloads(entries):
    return [e.payload for e in entries]


@pytest.mark.parametrize("make", [
    lambda tmp: FileSpool(tmp, small(), ["a", "b"]),
    lambda tmp: MemorySpool(["a", "b"]),
], ids=["file", "memory"])
def test_each_consumer_reads_everything_from_its_own_cursor(tmp_path, make):
    spool = make(tmp_path)
    items = [f"entry {i}".encode() * 20 for i in range(100)]
    for item in items:
        assert spool.append(item)
    got_a = []
    while entries := spool.read("a", 7):
        got_a += payloads(entries)
        spool.commit("a", entries[-1].end)
    assert got_a == items
    first = spool.read("b", 3)
    assert payloads(first) == items[:3]
    spool.commit("b", first[-1].end)
    assert payloads(spool.read("b", 1)) == [items[3]]
    spool.close()


def test_segments_are_deleted_once_every_consumer_passed_them(tmp_path):
    spool = FileSpool(tmp_path, small(), ["a", "b"])
    for _i in range(200):
        spool.append(b"x" * 100)
    segments = len(list(tmp_path.glob("segment-*")))
    assert segments > 3
    entries = spool.read("a", 200)
    spool.commit("a", entries[-1].end)
    assert len(list(tmp_path.glob("segment-*"))) == segments  # b still needs them
    spool.commit("b", entries[-1].end)
    assert len(list(tmp_path.glob("segment-*"))) == 1  # only the tail remains
    assert spool.read("a", 1) == [] and spool.read("b", 1) == []
    spool.close()


def test_cursor_and_entries_survive_reopen(tmp_path):
    spool = FileSpool(tmp_path, small(), ["out"])
    for i in range(10):
        spool.append(f"{i}".encode())
    spool.commit("out", spool.read("out", 4)[-1].end)
    spool.close()
    reopened = FileSpool(tmp_path, small(), ["out"])
    assert payloads(reopened.read("out", 100)) == [f"{i}".encode() for i in range(4, 10)]
    reopened.close()


def test_torn_tail_is_truncated_counted_and_appends_continue(tmp_path):
    spool = FileSpool(tmp_path, small(segment_bytes=1 << 20), ["out"])
    for i in range(5):
        spool.append(f"record {i}".encode())
    spool.close()
    segment = next(tmp_path.glob("segment-*"))
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x01\x00garbage-from-a-killed-write")
    reopened = FileSpool(tmp_path, small(segment_bytes=1 << 20), ["out"])
    assert reopened.torn_bytes == len(b"\x00\x00\x01\x00garbage-from-a-killed-write")
    reopened.append(b"after recovery")
    assert payloads(reopened.read("out", 100)) == [
        *(f"record {i}".encode() for i in range(5)), b"after recovery"]
    reopened.close()


def test_kill_9_mid_stream_keeps_every_acknowledged_entry(tmp_path):
    """A writer process prints each index after append() returned; kill it; all printed survive."""
    script = textwrap.dedent(f"""
        import sys
        from sidecar.spool import FileSpool, SpoolSettings
        spool = FileSpool({str(tmp_path)!r}, SpoolSettings(segment_bytes=8192), ["out"])
        i = 0
        while True:
            spool.append(b"entry-%d" % i + b"." * (i % 50))
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    deadline = time.monotonic() + 20
    while acknowledged < 3000 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    spool = FileSpool(tmp_path, SpoolSettings(segment_bytes=8192), ["out"])
    got = payloads(spool.read("out", 10**6))
    assert len(got) >= acknowledged + 1
    assert [g.split(b".")[0] for g in got[:acknowledged + 1]] == [
        b"entry-%d" % i for i in range(acknowledged + 1)]
    spool.close()


def test_append_blocks_while_full_and_resumes_when_delivered(tmp_path):
    spool = FileSpool(tmp_path, small(max_bytes=65536), ["out"])
    while spool.append(b"y" * 1000, timeout=0):
        pass
    assert not spool.append(b"y" * 1000, timeout=0.05)
    done = threading.Event()
    threading.Thread(target=lambda: (spool.append(b"late" * 300, timeout=10), done.set())).start()
    assert not done.wait(0.1)
    entries = spool.read("out", 10**6)
    spool.commit("out", entries[-1].end)
    assert done.wait(5)
    assert payloads(spool.read("out", 10)) == [b"late" * 300]
    spool.close()


def test_entries_past_max_age_are_skipped_and_counted(tmp_path):
    spool = FileSpool(tmp_path, small(max_age_seconds=0.05), ["out"])
    spool.append(b"old")
    time.sleep(0.1)
    spool.append(b"new")
    assert payloads(spool.read("out", 10)) == [b"new"]
    assert spool.expired == 1
    spool.close()


def test_unusable_directory_is_a_clear_error(tmp_path):
    occupied = tmp_path / "spool"
    occupied.write_text("a file where the spool directory should be")
    with pytest.raises(SpoolError, match="is not usable"):
        FileSpool(occupied, small(), ["out"])


def test_disk_full_on_append_is_a_spool_error_and_leaves_no_torn_entry(tmp_path):
    spool = FileSpool(tmp_path, small(segment_bytes=1 << 20), ["out"])
    spool.append(b"before")
    used = spool.bytes_used
    spool._tail = open("/dev/full", "ab")  # a real ENOSPC from the kernel on flush
    with pytest.raises(SpoolError, match="cannot write to spool"):
        spool.append(b"payload")
    assert spool.bytes_used == used
    spool.append(b"after")  # the spool reopened its real tail
    assert payloads(spool.read("out", 10)) == [b"before", b"after"]
    spool.close()
    assert payloads(FileSpool(tmp_path, small(segment_bytes=1 << 20), ["out"]).read("out", 10)) \
        == [b"before", b"after"]

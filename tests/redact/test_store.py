"""Tests for the referential token store: round trip, tamper detection, torn tails, rotation."""

from __future__ import annotations

import base64
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.redact.store import (
    CorruptStoreError,
    TokenStore,
    TokenStoreError,
    WrongKeyError,
    generate_key,
    load_key,
    rotate,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
HEADER_SIZE = 32
REPO = Path(__file__).resolve().parents[2]


def tok(i: int, kind: str = "EMAIL") -> str:
    return f"<{kind}:ab12:{i:016x}>"


def orig(i: int) -> str:
    return f"customer{i}@example.com"


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, total frame size) of each frame, read with the documented file format."""
    data = path.read_bytes()
    out, offset = [], HEADER_SIZE
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        out.append((offset, 8 + length + 4))
        offset += 8 + length + 4
    return out


def make_store(path: Path, n: int, key: bytes = KEY) -> None:
    with TokenStore.open(path, key) as store:
        for i in range(n):
            store.put(tok(i), orig(i))


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def fix_body_crc(path: Path, offset: int) -> None:
    """Recompute the body CRC of the frame at ``offset`` (a tamperer who knows the format)."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack_from(">I", data, offset)
    body = data[offset + 8 : offset + 8 + length]
    struct.pack_into(">I", data, offset + 8 + length, zlib.crc32(body))
    path.write_bytes(bytes(data))


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_before_and_after_flush_and_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    with TokenStore.open(path, KEY) as store:
        store.put(tok(1), orig(1))
        assert store.reveal(tok(1)) == orig(1)  # still in the write buffer
        store.flush()
        store.put(tok(2, "IBAN"), "DE89 3704 0044 0532 0130 00")
        assert store.reveal(tok(1)) == orig(1)  # from the file
        assert store.reveal(tok(2, "IBAN")) == "DE89 3704 0044 0532 0130 00"
        assert store.reveal(tok(3)) is None
        assert len(store) == 2
    with TokenStore.open(path, KEY) as store:
        assert len(store) == 2
        assert store.reveal(tok(1)) == orig(1)
        assert store.reveal(tok(2, "IBAN")) == "DE89 3704 0044 0532 0130 00"
        assert store.torn_tail_bytes == 0
        store.put(tok(3), "")
    with TokenStore.open(path, KEY, read_only=True) as store:
        assert store.reveal(tok(3)) == ""
        assert len(store) == 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_round_trip_property(originals: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens"
        with TokenStore.open(path, KEY, fsync="never") as store:
            for i, value in enumerate(originals):
                store.put(tok(i), value)
        with TokenStore.open(path, KEY, read_only=True) as store:
            assert [store.reveal(tok(i)) for i in range(len(originals))] == originals


def test_lone_surrogates_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 0)
    with TokenStore.open(path, KEY) as store:
        store.put(tok(0), "bad\udc80byte")
    with TokenStore.open(path, KEY) as store:
        assert store.reveal(tok(0)) == "bad\udc80byte"


def test_duplicate_put_is_ignored_and_first_original_kept(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 1)
    size = path.stat().st_size
    with TokenStore.open(path, KEY) as store:
        store.put(tok(0), "something else")
        assert len(store) == 1
    assert path.stat().st_size == size
    with TokenStore.open(path, KEY) as store:
        assert store.reveal(tok(0)) == orig(0)


def test_originals_are_encrypted_at_rest_and_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokens"
    with TokenStore.open(path, KEY) as store:
        store.put(tok(0), "alice.wonderland@example.com")
        store.put(tok(1), "4111 1111 1111 1111")
    data = path.read_bytes()
    assert b"alice" not in data and b"4111" not in data
    assert tok(0).encode() in data  # tokens are stored in clear, by design
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens"]


def test_put_rejects_malformed_token_without_quoting_it(tmp_path: Path) -> None:
    with TokenStore.open(tmp_path / "tokens", KEY) as store:
        with pytest.raises(ValueError) as err:
            store.put("jane.doe@example.com", tok(0))  # swapped arguments
        assert "jane" not in str(err.value)
        with pytest.raises(ValueError):
            store.put("<email:ab12:0000000000000000>", "x")
        assert len(store) == 0
    assert b"jane" not in (tmp_path / "tokens").read_bytes()


def test_put_rejects_oversized_original(tmp_path: Path) -> None:
    with TokenStore.open(tmp_path / "tokens", KEY) as store:
        with pytest.raises(ValueError, match="limit"):
            store.put(tok(0), "x" * ((1 << 20) + 1))
        assert store.reveal(tok(0)) is None


# --- keys -------------------------------------------------------------------------------------


def test_wrong_key_is_reported_up_front(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 2)
    for read_only in (False, True):
        with pytest.raises(WrongKeyError, match="wrong key"):
            TokenStore.open(path, OTHER_KEY, read_only=read_only)


def test_load_key_accepts_hex_and_base64() -> None:
    key = bytes(range(200, 232))
    assert load_key(key.hex()) == key
    assert load_key(key.hex().upper() + "\n") == key
    assert load_key(base64.b64encode(key).decode()) == key
    assert load_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key


@pytest.mark.parametrize(
    "value", ["", "secret-passphrase", "00" * 31, "00" * 33, "QUJD", "zz" * 32, "é" * 44]
)
def test_load_key_rejects_other_values_without_quoting_them(value: str) -> None:
    with pytest.raises(ValueError, match="32 bytes") as err:
        load_key(value)
    if value:
        assert value not in str(err.value)


def test_generate_key_gives_distinct_loadable_keys() -> None:
    first, second = generate_key(), generate_key()
    assert first != second
    assert len(load_key(first)) == 32


def test_open_rejects_raw_key_of_wrong_length(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 raw bytes"):
        TokenStore.open(tmp_path / "tokens", b"short")
    assert not (tmp_path / "tokens").exists()


# --- tamper detection -------------------------------------------------------------------------


FRAME_PARTS = ["length", "length_crc", "token_len", "token", "nonce", "ciphertext", "tag", "crc"]


@pytest.mark.parametrize("record", [1, 2])  # a middle record and the last one
@pytest.mark.parametrize("part", FRAME_PARTS)
def test_flipped_byte_names_the_record_offset(tmp_path: Path, record: int, part: str) -> None:
    path = tmp_path / "tokens"
    make_store(path, 3)
    offset, size = frames(path)[record]
    token_end = 9 + len(tok(record))
    position = {
        "length": 3,  # low byte: a plausible length, caught by the length CRC
        "length_crc": 5,
        "token_len": 8,
        "token": 12,
        "nonce": token_end + 3,
        "ciphertext": token_end + 12 + 2,
        "tag": size - 4 - 3,
        "crc": size - 1,
    }[part]
    flip(path, offset + position)
    with pytest.raises(CorruptStoreError) as err:
        TokenStore.open(path, KEY)
    assert err.value.offset == offset
    assert f"offset {offset}" in str(err.value)
    assert "customer" not in str(err.value)


@pytest.mark.parametrize("part", ["nonce", "ciphertext", "tag"])
def test_tampering_that_fixes_the_crc_fails_authentication(tmp_path: Path, part: str) -> None:
    path = tmp_path / "tokens"
    make_store(path, 3)
    offset, size = frames(path)[1]
    body_pos = {"nonce": 9 + len(tok(1)) + 1, "ciphertext": 9 + len(tok(1)) + 13, "tag": size - 6}
    flip(path, offset + body_pos[part])
    fix_body_crc(path, offset)
    with TokenStore.open(path, KEY) as store:
        assert store.reveal(tok(0)) == orig(0)
        with pytest.raises(CorruptStoreError, match=f"offset {offset}: .*authentication"):
            store.reveal(tok(1))
    with pytest.raises(CorruptStoreError) as err:
        rotate(path, KEY, OTHER_KEY)
    assert err.value.offset == offset


def test_record_cannot_be_moved_to_another_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 2)
    offset, _ = frames(path)[1]
    data = bytearray(path.read_bytes())
    start = offset + 9
    assert data[start : start + len(tok(1))] == tok(1).encode()
    data[start : start + len(tok(7))] = tok(7).encode()
    path.write_bytes(bytes(data))
    fix_body_crc(path, offset)
    with TokenStore.open(path, KEY) as store:
        assert store.reveal(tok(1)) is None
        with pytest.raises(CorruptStoreError, match="authentication"):
            store.reveal(tok(7))


def test_tampered_header_is_corruption_not_wrong_key(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 1)
    flip(path, 20)  # inside the key check value
    with pytest.raises(CorruptStoreError) as err:
        TokenStore.open(path, KEY)
    assert err.value.offset == 0


def test_foreign_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"not a token store, just some text that is long enough")
    with pytest.raises(TokenStoreError, match="not a token store"):
        TokenStore.open(path, KEY)


def test_file_changed_after_open_is_detected_on_reveal(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 2)
    offset, size = frames(path)[0]
    with TokenStore.open(path, KEY, read_only=True) as store:
        flip(path, offset + size - 1)
        with pytest.raises(CorruptStoreError, match=f"offset {offset}: record checksum"):
            store.reveal(tok(0))


# --- crash safety -----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 7, 8, 20, -1])
def test_torn_tail_is_skipped_counted_and_appended_over(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "tokens"
    make_store(path, 4)
    offset, size = frames(path)[3]
    keep = keep % size
    os.truncate(path, offset + keep)
    with TokenStore.open(path, KEY) as store:
        assert store.torn_tail_bytes == keep
        assert len(store) == 3
        assert [store.reveal(tok(i)) for i in range(4)] == [orig(0), orig(1), orig(2), None]
        assert path.stat().st_size == offset  # truncated to the good prefix
        store.put(tok(9), orig(9))
    assert frames(path)[3][0] == offset
    with TokenStore.open(path, KEY) as store:
        assert store.torn_tail_bytes == 0
        assert store.reveal(tok(9)) == orig(9)
        assert len(store) == 4


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 2)
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bytes(300))
    with TokenStore.open(path, KEY) as store:
        assert store.torn_tail_bytes == 300
        assert len(store) == 2
    assert path.stat().st_size == good


def test_read_only_open_skips_torn_tail_without_truncating(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 2)
    offset, _ = frames(path)[1]
    os.truncate(path, offset + 10)
    with TokenStore.open(path, KEY, read_only=True) as store:
        assert store.torn_tail_bytes == 10
        assert store.reveal(tok(0)) == orig(0)
        with pytest.raises(TokenStoreError, match="read-only"):
            store.put(tok(5), orig(5))
    assert path.stat().st_size == offset + 10


_CHILD = """
import sys
from pathlib import Path
from sidecar.redact.store import TokenStore
store = TokenStore.open(Path(sys.argv[1]), bytes(range(32)), fsync="never")
i = 0
while True:
    store.put(f"<EMAIL:ab12:{i:016x}>", f"customer{i}@example.com" * (1 + i % 7))
    i += 1
    if i % 50 == 0:
        store.flush()
"""


def test_store_survives_kill_minus_9_mid_append(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() or path.stat().st_size < 200_000:
            assert child.poll() is None, "writer process died on its own"
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with TokenStore.open(path, KEY) as store:
        n = len(store)
        assert n > 0
        for i in range(n):
            assert store.reveal(tok(i)) == orig(i) * (1 + i % 7)
        assert store.reveal(tok(n)) is None


# --- key rotation -----------------------------------------------------------------------------


def test_rotate_re_encrypts_under_the_new_key(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 5)
    before = path.read_bytes()
    assert rotate(path, KEY, OTHER_KEY) == 5
    after = path.read_bytes()
    assert before != after and len(before) == len(after)
    with pytest.raises(WrongKeyError):
        TokenStore.open(path, KEY)
    with TokenStore.open(path, OTHER_KEY) as store:
        assert [store.reveal(tok(i)) for i in range(5)] == [orig(i) for i in range(5)]
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]


def test_rotate_with_wrong_old_key_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 2)
    before = path.read_bytes()
    with pytest.raises(WrongKeyError):
        rotate(path, OTHER_KEY, KEY)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]


def test_rotate_failure_midway_leaves_store_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 3)
    offset, size = frames(path)[2]
    flip(path, offset + size - 6)
    fix_body_crc(path, offset)
    before = path.read_bytes()
    with pytest.raises(CorruptStoreError):
        rotate(path, KEY, OTHER_KEY)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]


def test_rotate_drops_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    make_store(path, 3)
    offset, _ = frames(path)[2]
    os.truncate(path, offset + 3)
    assert rotate(path, KEY, OTHER_KEY) == 2
    with TokenStore.open(path, OTHER_KEY) as store:
        assert store.torn_tail_bytes == 0
        assert len(store) == 2


def test_rotate_refuses_while_a_writer_has_the_store(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    with TokenStore.open(path, KEY) as store:
        store.put(tok(0), orig(0))
        with pytest.raises(TokenStoreError, match="in use"):
            rotate(path, KEY, OTHER_KEY)
    assert rotate(path, KEY, OTHER_KEY) == 1


def test_rotate_missing_store(tmp_path: Path) -> None:
    with pytest.raises(TokenStoreError, match="no token store"):
        rotate(tmp_path / "tokens", KEY, OTHER_KEY)


# --- lifecycle, locking, fsync policy, threads ------------------------------------------------


def test_second_writer_is_refused_but_readers_are_not(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    with TokenStore.open(path, KEY) as store:
        store.put(tok(0), orig(0))
        store.flush()
        with pytest.raises(TokenStoreError, match="in use"):
            TokenStore.open(path, KEY)
        with TokenStore.open(path, KEY, read_only=True) as reader:
            assert reader.reveal(tok(0)) == orig(0)
    TokenStore.open(path, KEY).close()


def test_read_only_open_of_missing_store(tmp_path: Path) -> None:
    with pytest.raises(TokenStoreError, match="no token store"):
        TokenStore.open(tmp_path / "tokens", KEY, read_only=True)
    assert not (tmp_path / "tokens").exists()


def test_close_is_idempotent_and_closed_store_refuses_use(tmp_path: Path) -> None:
    store = TokenStore.open(tmp_path / "tokens", KEY)
    store.put(tok(0), orig(0))
    store.close()
    store.close()
    with pytest.raises(TokenStoreError, match="closed"):
        store.put(tok(1), orig(1))
    with pytest.raises(TokenStoreError, match="closed"):
        store.reveal(tok(0))
    with TokenStore.open(tmp_path / "tokens", KEY) as reopened:
        assert reopened.reveal(tok(0)) == orig(0)


def test_invalid_fsync_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        TokenStore.open(tmp_path / "tokens", KEY, fsync="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "writes_on_put", "syncs_after_puts", "syncs_after_flush"),
    [("always", True, 2, 2), ("batch", False, 0, 1), ("never", False, 0, 0)],
)
def test_fsync_policy(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    writes_on_put: bool,
    syncs_after_puts: int,
    syncs_after_flush: int,
) -> None:
    path = tmp_path / "tokens"
    store = TokenStore.open(path, KEY, fsync=policy)  # type: ignore[arg-type]
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store.put(tok(0), orig(0))
    store.put(tok(1), orig(1))
    store.put(tok(0), orig(0))
    assert (path.stat().st_size > HEADER_SIZE) is writes_on_put
    assert len(synced) == syncs_after_puts
    store.flush()
    store.flush()
    assert len(synced) == syncs_after_flush
    assert len(frames(path)) == 2
    store.close()
    assert len(synced) == syncs_after_flush


def test_batch_buffer_is_written_when_full_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    with TokenStore.open(path, KEY) as store:
        for i in range(10):
            store.put(tok(i), "x" * 10_000)
        assert path.stat().st_size > HEADER_SIZE
        assert store.reveal(tok(9)) == "x" * 10_000


def test_concurrent_puts_store_each_token_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    store = TokenStore.open(path, KEY, fsync="never")

    def worker(seed: int) -> None:
        for j in range(300):
            i = (j * 7 + seed * 13) % 200
            store.put(tok(i), orig(i))
            if j % 37 == 0:
                store.flush()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 200
    store.close()
    assert len(frames(path)) == 200
    with TokenStore.open(path, KEY) as reopened:
        assert all(reopened.reveal(tok(i)) == orig(i) for i in range(200))

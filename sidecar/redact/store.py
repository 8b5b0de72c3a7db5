"""Referential token store: token -> original, AES-GCM encrypted at rest, append-only.

Strategy: the store is one append-only file. Every record holds a token in clear (tokens are
not secret, they appear in sanitized output) and its original encrypted with AES-256-GCM under
a fresh random 12-byte nonce, the token being the associated data so a record cannot be moved
to another token. Opening the store scans the record frames (checksums only, nothing is
decrypted) to build an in-memory index token -> file offset; originals are decrypted only by
``reveal``. ``put`` is cheap: a token already stored is a dict hit; a new one is encrypted at
once (no original is buffered in clear) and its frame appended to a write buffer that
``flush`` writes with ``os.pwrite`` at the end of the good prefix, so a failed write is simply
retried over the same bytes. Records are never rewritten in place; ``rotate`` re-encrypts the
whole store into a temp file under a new key and swaps it in with ``os.replace``.

Keys: the operator key is 32 raw bytes (AES-256). Two subkeys are derived from it with
HMAC-SHA256 of fixed labels: the key check value stored in the header (so a wrong key is
detected up front, not as a record authentication failure) and the record encryption key.

Crash safety: a kill mid-append leaves at most a torn tail: a final frame that extends past
the end of the file, or a zero-filled tail (an allocated but unwritten extent after power
loss). Such a tail is skipped and counted on open (``torn_tail_bytes``); a writer truncates it
so new appends follow the good prefix. Any other checksum failure is corruption or tampering
and raises ``CorruptStoreError`` naming the record offset; a frame that checksums but fails
GCM authentication raises it on ``reveal`` or ``rotate``. Truncation at a frame boundary
cannot be told from an older store and is not detected.

Concurrency: one writer process at a time, enforced with an exclusive ``flock`` on the file
(a second writer, or ``rotate`` while a writer is open, fails with ``TokenStoreError``).
Readers (``read_only=True``, e.g. ``logminer reveal``) take no lock and see the records present
when they opened the store. Within a process ``put``/``flush``/``reveal``/``close`` are
serialised by a lock.

File format (integers big-endian, CRC32 as ``zlib.crc32``)::

    header (32 bytes): magic b"LMTOKST\\0" | u16 version=1 | u16 reserved=0
                       | 16-byte key check value | u32 crc32(preceding 28 bytes)
    record frame:      u32 body_len | u32 crc32(body_len field) | body | u32 crc32(body)
    body:              u8 token_len | token (ASCII) | 12-byte nonce | ciphertext | 16-byte tag

The ciphertext is the UTF-8 original (``surrogatepass``, so any ``str`` round-trips exactly).
Files are created with mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Literal

from Crypto.Cipher import AES

from sidecar import defaults
from sidecar.redact.tokens import TOKEN_PATTERN

FsyncPolicy = Literal["always", "batch", "never"]

DEFAULT_PATH: Final = Path(defaults.DATA_DIR) / "tokens"
KEY_BYTES: Final = 32
MAX_ORIGINAL_BYTES: Final = 1 << 20

_MAGIC: Final = b"LMTOKST\x00"
_VERSION: Final = 1
_HEADER: Final = struct.Struct(">8sHH16s")
_HEADER_SIZE: Final = _HEADER.size + 4
_U32: Final = struct.Struct(">I")
_FRAME_HEAD: Final = struct.Struct(">II")
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_MAX_TOKEN_BYTES: Final = 255
_MIN_BODY: Final = 1 + 1 + _NONCE_BYTES + _TAG_BYTES
_MAX_BODY: Final = 1 + _MAX_TOKEN_BYTES + _NONCE_BYTES + MAX_ORIGINAL_BYTES + _TAG_BYTES
_KCV_LABEL: Final = b"logminer token store v1: key check value"
_RECORD_KEY_LABEL: Final = b"logminer token store v1: record encryption key"
_BUFFER_LIMIT: Final = 64 * 1024
_CHUNK: Final = 64 * 1024
_FSYNC_POLICIES: Final = ("always", "batch", "never")


@dataclass(frozen=True)
class TokenStoreSettings:
    enabled: bool = field(
        default=False,
        metadata={
            "doc": "Keep token -> original, AES-GCM encrypted (key from "
            f"{defaults.TOKEN_STORE_KEY_ENV}[_FILE]), for `logminer reveal`."
        },
    )
    path: str | None = field(
        default=None, metadata={"doc": "Store file (default: data_dir/tokens)."}
    )
    fsync: FsyncPolicy = field(default="batch", metadata={"doc": "always | batch | never."})


class TokenStoreError(Exception):
    """The token store cannot be used as asked (missing, locked, read-only, closed)."""


class WrongKeyError(TokenStoreError):
    """The key does not match the key check value in the store header."""


class CorruptStoreError(TokenStoreError):
    """A header or record failed its checksum or authentication; ``offset`` locates it."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"token store {path} is corrupt at record offset {offset}: {reason}")
        self.offset = offset


def load_key(value: str) -> bytes:
    """Decode an operator-supplied key: base64 (standard or URL-safe, padding optional) or hex.

    Surrounding whitespace (a trailing newline in a mounted key file) is ignored. Returns the
    32 raw key bytes; raises ``ValueError`` for anything else. The message never quotes the
    value.
    """
    text = value.strip()
    if len(text) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    padded = text.replace("-", "+").replace("_", "/")
    padded += "=" * (-len(padded) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"token store key must be exactly {KEY_BYTES} bytes given as base64 (44 characters)"
            f" or hex (64 characters); got {len(text)} characters that do not decode to that"
        )
    return raw


def generate_key() -> str:
    """Return a new random 32-byte key, base64-encoded, for an operator to install."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


class TokenStore:
    """An open token store; build it with ``TokenStore.open``.

    Single writer process (see the module docstring); thread-safe within the process.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        key: bytes,
        fsync: FsyncPolicy,
        read_only: bool,
        index: dict[str, int],
        end: int,
        torn_tail_bytes: int,
    ) -> None:
        self._path = path
        self._fd = fd
        self._record_key = _derive(key, _RECORD_KEY_LABEL)
        self._fsync = fsync
        self._read_only = read_only
        self._index = index
        self._end = end
        self._torn_tail_bytes = torn_tail_bytes
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        key: bytes,
        *,
        fsync: FsyncPolicy = "batch",
        read_only: bool = False,
    ) -> TokenStore:
        """Open the store at ``path``, creating it (and its directory, 0700) if absent.

        ``key`` is the 32-byte key (see ``load_key``); a key that does not match the store
        raises ``WrongKeyError``. ``fsync``: "always" writes and fsyncs on every new ``put``;
        "batch" buffers and fsyncs on each ``flush`` (call it before acknowledging records)
        and whenever the buffer fills; "never" leaves durability to the OS. A writer takes an
        exclusive lock (``TokenStoreError`` if another process holds it) and truncates a torn
        tail. ``read_only=True`` neither creates, locks nor truncates anything and refuses
        ``put``. Raises ``CorruptStoreError`` if a header or frame fails its checksum.
        """
        _check_key(key)
        if fsync not in _FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {_FSYNC_POLICIES}, got {fsync!r}")
        if not read_only:
            _create_if_absent(path, key)
        try:
            fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TokenStoreError(f"no token store at {path}") from None
        try:
            if not read_only:
                _lock_exclusive(fd, path)
            _check_header(fd, path, key)
            size = os.fstat(fd).st_size
            index: dict[str, int] = {}
            end = _HEADER_SIZE
            with open(fd, "rb", closefd=False) as f:
                f.seek(_HEADER_SIZE)
                for offset, body in _frames(f, path, size):
                    index.setdefault(_body_token(body, path, offset), offset)
                    end = offset + _FRAME_HEAD.size + len(body) + _U32.size
            torn = size - end
            if torn and not read_only:
                os.ftruncate(fd, end)
                if fsync != "never":
                    os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, key, fsync, read_only, index, end, torn)

    @property
    def path(self) -> Path:
        """The store file."""
        return self._path

    @property
    def torn_tail_bytes(self) -> int:
        """Bytes of torn tail found (and, for a writer, truncated) when the store was opened."""
        return self._torn_tail_bytes

    def put(self, token: str, original: str) -> None:
        """Record that ``token`` stands for ``original``; a token already stored is ignored.

        ``token`` must match ``TOKEN_PATTERN`` (this also catches swapped arguments, which would
        write an original in clear) and ``original`` encode to at most ``MAX_ORIGINAL_BYTES``;
        otherwise ``ValueError`` (whose message quotes neither). Durability follows the fsync
        policy. Raises ``TokenStoreError`` if the store is closed or read-only.
        """
        with self._lock:
            self._check_writable()
            if token in self._index:
                return
            if TOKEN_PATTERN.fullmatch(token) is None:
                raise ValueError("token store put: token is not of the form <TYPE:kid:tok>")
            data = original.encode("utf-8", "surrogatepass")
            if len(data) > MAX_ORIGINAL_BYTES:
                raise ValueError(
                    f"token store put: original is {len(data)} bytes, the limit is "
                    f"{MAX_ORIGINAL_BYTES}"
                )
            self._index[token] = self._end + len(self._pending)
            self._pending += _encode_frame(self._record_key, token.encode("ascii"), data)
            if self._fsync == "always" or len(self._pending) >= _BUFFER_LIMIT:
                self._flush_locked()

    def flush(self) -> None:
        """Write buffered records to the file, and fsync unless the policy is "never"."""
        with self._lock:
            self._check_writable()
            self._flush_locked()

    def reveal(self, token: str) -> str | None:
        """Return the original behind ``token``, or ``None`` if the store does not hold it.

        Raises ``CorruptStoreError`` (naming the record offset) if the record fails its
        checksum or GCM authentication, never returning altered data.
        """
        with self._lock:
            self._check_open()
            offset = self._index.get(token)
            if offset is None:
                return None
            body = self._read_body(offset)
        stored, nonce, ciphertext, tag = _split_body(body, self._path, offset)
        if stored != token.encode("ascii"):
            raise CorruptStoreError(self._path, offset, "record token does not match the index")
        return _decrypt(self._record_key, stored, nonce, ciphertext, tag, self._path, offset)

    def close(self) -> None:
        """Flush (writer) and close the file, releasing the writer lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self._read_only:
                    self._flush_locked()
            finally:
                self._closed = True
                os.close(self._fd)

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TokenStoreError(f"token store {self._path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise TokenStoreError(f"token store {self._path} is open read-only")

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        data = bytes(self._pending)
        _pwrite_all(self._fd, data, self._end)
        if self._fsync != "never":
            os.fsync(self._fd)
        self._end += len(data)
        self._pending.clear()

    def _read_body(self, offset: int) -> bytes:
        """The verified body of the frame at ``offset``, from the write buffer or the file."""
        if offset >= self._end:
            start = offset - self._end
            (length, _) = _FRAME_HEAD.unpack_from(self._pending, start)
            body_start = start + _FRAME_HEAD.size
            return bytes(self._pending[body_start : body_start + length])
        head = os.pread(self._fd, _FRAME_HEAD.size, offset)
        length = _frame_length(head)
        if length is None:
            raise CorruptStoreError(self._path, offset, "frame header checksum mismatch")
        _check_length(length, self._path, offset)
        rest = os.pread(self._fd, length + _U32.size, offset + _FRAME_HEAD.size)
        if len(rest) < length + _U32.size:
            raise CorruptStoreError(self._path, offset, "record truncated after open")
        if not _body_ok(rest):
            raise CorruptStoreError(self._path, offset, "record checksum mismatch")
        return rest[:length]


def rotate(path: Path, old_key: bytes, new_key: bytes) -> int:
    """Re-encrypt the store at ``path`` from ``old_key`` to ``new_key``; return records rewritten.

    Every record is decrypted and authenticated under ``old_key`` and re-encrypted with a fresh
    nonce into a temp file (0600) in the same directory, which replaces ``path`` atomically via
    ``os.replace`` only once complete and fsynced: on any error the store is left unchanged. A
    torn tail is dropped. Raises ``WrongKeyError`` if ``old_key`` does not open the store,
    ``CorruptStoreError`` on a bad record, ``TokenStoreError`` if it is missing or a writer has
    it open.
    """
    _check_key(old_key)
    _check_key(new_key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TokenStoreError(f"no token store at {path}") from None
    try:
        _lock_exclusive(fd, path)
        _check_header(fd, path, old_key)
        size = os.fstat(fd).st_size
        old_record_key = _derive(old_key, _RECORD_KEY_LABEL)
        new_record_key = _derive(new_key, _RECORD_KEY_LABEL)
        tmp_fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        count = 0
        try:
            with open(tmp_fd, "wb") as out, open(fd, "rb", closefd=False) as f:
                out.write(_header(new_key))
                f.seek(_HEADER_SIZE)
                for offset, body in _frames(f, path, size):
                    token, nonce, ciphertext, tag = _split_body(body, path, offset)
                    original = _decrypt(old_record_key, token, nonce, ciphertext, tag, path, offset)
                    data = original.encode("utf-8", "surrogatepass")
                    out.write(_encode_frame(new_record_key, token, data))
                    count += 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            os.unlink(tmp_name)
            raise
        _fsync_dir(path.parent)
    finally:
        os.close(fd)
    return count


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"token store key must be {KEY_BYTES} raw bytes (AES-256); see load_key")


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def _header(key: bytes) -> bytes:
    fields = _HEADER.pack(_MAGIC, _VERSION, 0, _derive(key, _KCV_LABEL)[:16])
    return fields + _U32.pack(zlib.crc32(fields))


def _check_header(fd: int, path: Path, key: bytes) -> None:
    raw = os.pread(fd, _HEADER_SIZE, 0)
    if len(raw) < _HEADER_SIZE:
        raise CorruptStoreError(path, 0, "file is shorter than the store header")
    fields, (crc,) = raw[: _HEADER.size], _U32.unpack_from(raw, _HEADER.size)
    magic, version, _, kcv = _HEADER.unpack(fields)
    if magic != _MAGIC:
        raise TokenStoreError(f"{path} is not a token store (bad magic)")
    if zlib.crc32(fields) != crc:
        raise CorruptStoreError(path, 0, "header checksum mismatch")
    if version != _VERSION:
        raise TokenStoreError(f"token store {path} has unsupported version {version}")
    if not hmac.compare_digest(kcv, _derive(key, _KCV_LABEL)[:16]):
        raise WrongKeyError(f"wrong key for token store {path}: the key check value differs")


def _create_if_absent(path: Path, key: bytes) -> None:
    """Create an empty store atomically (temp file + link, so an existing one is never lost)."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp_fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(tmp_fd, "wb") as out:
            out.write(_header(key))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return
    finally:
        os.unlink(tmp_name)
    _fsync_dir(path.parent)


def _lock_exclusive(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TokenStoreError(f"token store {path} is in use by another writer") from None


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _encode_frame(record_key: bytes, token: bytes, original: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    cipher = AES.new(record_key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
    cipher.update(token)
    ciphertext, tag = cipher.encrypt_and_digest(original)
    body = bytes((len(token),)) + token + nonce + ciphertext + tag
    length = _U32.pack(len(body))
    return length + _U32.pack(zlib.crc32(length)) + body + _U32.pack(zlib.crc32(body))


def _frame_length(head: bytes) -> int | None:
    """The body length from a complete frame header, or ``None`` if its checksum fails."""
    length, crc = _FRAME_HEAD.unpack(head)
    return length if zlib.crc32(head[:4]) == crc else None


def _check_length(length: int, path: Path, offset: int) -> None:
    if not _MIN_BODY <= length <= _MAX_BODY:
        raise CorruptStoreError(path, offset, f"record length {length} out of range")


def _body_ok(rest: bytes) -> bool:
    """Whether ``rest`` (body followed by its CRC32) checksums."""
    (crc,) = _U32.unpack_from(rest, len(rest) - 4)
    return bool(zlib.crc32(rest[:-4]) == crc)


def _frames(f: BinaryIO, path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, body) for each checksummed frame from ``f``'s position up to a torn tail.

    Stops quietly at a torn tail (a frame extending past ``size``, or an all-zero remainder);
    raises ``CorruptStoreError`` for any other checksum failure.
    """
    offset = f.tell()
    while offset < size:
        head = f.read(_FRAME_HEAD.size)
        if len(head) < _FRAME_HEAD.size:
            return
        length = _frame_length(head)
        if length is None:
            if not any(head) and _rest_is_zero(f):
                return
            raise CorruptStoreError(path, offset, "frame header checksum mismatch")
        _check_length(length, path, offset)
        rest = f.read(length + _U32.size)
        if len(rest) < length + _U32.size:
            return
        if not _body_ok(rest):
            if not any(rest) and _rest_is_zero(f):
                return
            raise CorruptStoreError(path, offset, "record checksum mismatch")
        yield offset, rest[:length]
        offset += _FRAME_HEAD.size + length + _U32.size


def _rest_is_zero(f: BinaryIO) -> bool:
    while chunk := f.read(_CHUNK):
        if any(chunk):
            return False
    return True


def _split_body(body: bytes, path: Path, offset: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(token, nonce, ciphertext, tag) of a checksummed body."""
    token_end = 1 + body[0]
    if body[0] == 0 or token_end + _NONCE_BYTES + _TAG_BYTES > len(body):
        raise CorruptStoreError(path, offset, "record token length out of range")
    nonce_end = token_end + _NONCE_BYTES
    tag_start = len(body) - _TAG_BYTES
    return body[1:token_end], body[token_end:nonce_end], body[nonce_end:tag_start], body[tag_start:]


def _body_token(body: bytes, path: Path, offset: int) -> str:
    token = _split_body(body, path, offset)[0]
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise CorruptStoreError(path, offset, "record token is not ASCII") from None


def _decrypt(
    record_key: bytes,
    token: bytes,
    nonce: bytes,
    ciphertext: bytes,
    tag: bytes,
    path: Path,
    offset: int,
) -> str:
    cipher = AES.new(record_key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
    cipher.update(token)
    try:
        data = cipher.decrypt_and_verify(ciphertext, tag)
    except ValueError:
        raise CorruptStoreError(path, offset, "record failed authentication") from None
    return data.decode("utf-8", "surrogatepass")

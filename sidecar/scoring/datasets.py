"""Training and evaluation data -> per-session event sequences and model keys.

Strategy: every input form becomes sessions of template *texts*, the common currency. Session
files are read into `Session`s (an id and its events as written: ``E5`` or ``5``) and a
`TemplateTable` (``EventId,EventTemplate`` CSV, or one template per line) gives each event
its text; raw and JSON-lines logs go through the sidecar's own redactor, miner and session
keyer. A `Vocabulary` turns texts into model class indices (0 = unknown, 1..T = templates,
then the start and end keys). A bundle trained on key sequences thus stores texts that the
live miner's templates can be matched to, and evaluation data reaches a bundle's keys through
the same texts.

Formats read (``.gz`` is decompressed transparently):

- session files (DeepLog / AIT): one session per line, ``k k k`` or ``session_id,k k k``;
- session CSVs (``*.csv``): a header with an id column (``BlockId``, ``SessionId``, ...; else
  the first column) and ``EventSequence`` (or ``Sequence``); rows can be selected with
  ``PATH?column=value&column=value`` (e.g. ``?deep_loglizer_split=train&Label=Normal``);
- label CSVs (Loghub ``anomaly_label.csv``): a header, then session id and ``Normal`` /
  ``Anomaly`` (``0`` / ``1`` accepted);
- logs: raw text (one record per line) or JSON lines (message in ``message``, ``log``,
  ``body`` or ``msg``; the other keys become attributes).

Sessions are split into train / validation / test by a keyed hash of their id, so the split
does not depend on file order and a session is on the same side in every file it occurs in.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sidecar.record import Record
from sidecar.redact import RedactionSettings, Redactor
from sidecar.scoring.sessions import SessionKeyer
from sidecar.templates import MinerSettings, TemplateMiner

#: Model class index of an event whose template the vocabulary does not know.
UNKNOWN_KEY = 0

#: CSV columns that hold a session's event sequence / its id, in order of preference.
SEQUENCE_COLUMNS = ("EventSequence", "Sequence", "sequence", "events")
ID_COLUMNS = ("BlockId", "SessionId", "session_id", "id")

#: JSON-lines keys that hold the message text, in order of preference.
MESSAGE_KEYS = ("message", "log", "body", "msg")

_TOKEN = re.compile(r"[^\s,\[\]'\"]+")
_LABELS = {"normal": False, "0": False, "anomaly": True, "abnormal": True, "1": True}


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Session:
    """One session: its id and its events, as written in the input."""

    id: str
    events: tuple[str, ...]


@dataclass(frozen=True)
class SessionSource:
    """A session file plus an optional row selection (CSV files only)."""

    path: Path
    where: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> SessionSource:
        """Parse ``PATH`` or ``PATH?column=value&column=value``."""
        path, _, query = text.partition("?")
        where = []
        for item in filter(None, query.split("&")):
            column, sep, value = item.partition("=")
            if not sep or not column:
                raise DataError(f"{text}: selection {item!r} is not column=value")
            where.append((column, value))
        return cls(Path(path), tuple(where))

    @property
    def selection(self) -> str:
        """The selection as written after ``?`` (empty when the whole file is used)."""
        return "&".join(f"{column}={value}" for column, value in self.where)

    def __str__(self) -> str:
        return f"{self.path}?{self.selection}" if self.where else str(self.path)


# --------------------------------------------------------------------------- files


def open_text(path: Path) -> TextIO:
    """Open a UTF-8 text file, decompressing ``.gz``; DataError if it cannot be read."""
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_csv(path: Path) -> bool:
    return path.name.endswith((".csv", ".csv.gz"))


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text))


def read_sessions(source: SessionSource) -> list[Session]:
    """All sessions of a session file or session CSV (rows filtered by ``source.where``).

    Lines without an id get the id ``#<line number>``. DataError on a CSV without a
    sequence column, on an unknown selection column, or on a selection for a non-CSV file.
    """
    if not _is_csv(source.path):
        if source.where:
            raise DataError(f"{source}: row selection needs a CSV file with a header")
        with open_text(source.path) as handle:
            return [_session_line(line, number) for number, line in enumerate(handle, 1)
                    if line.strip()]
    with open_text(source.path) as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        sequence = next((c for c in SEQUENCE_COLUMNS if c in columns), None)
        if sequence is None:
            raise DataError(f"{source.path}: no sequence column (one of "
                            f"{', '.join(SEQUENCE_COLUMNS)}) in the header")
        missing = [column for column, _ in source.where if column not in columns]
        if missing:
            raise DataError(f"{source.path}: selection column(s) {', '.join(missing)} not in "
                            f"the header ({', '.join(columns)})")
        id_column = next((c for c in ID_COLUMNS if c in columns), columns[0])
        return [Session(row[id_column], _tokens(row[sequence])) for row in reader
                if all(row[column] == value for column, value in source.where)]


def _session_line(line: str, number: int) -> Session:
    head, sep, tail = line.partition(",")
    if sep:
        return Session(head.strip(), _tokens(tail))
    return Session(f"#{number}", _tokens(line))


def read_labels(path: Path) -> dict[str, bool]:
    """Session id -> anomalous, from a label CSV (header, then id and label columns).

    DataError on an unknown label or on a session labelled twice with different labels.
    """
    labels: dict[str, bool] = {}
    with open_text(path) as handle:
        rows = csv.reader(handle)
        next(rows, None)
        for number, row in enumerate(rows, 2):
            if not row or not row[0].strip():
                continue
            if len(row) < 2 or row[1].strip().lower() not in _LABELS:
                raise DataError(f"{path}:{number}: expected 'id,Normal|Anomaly|0|1'")
            session_id, anomalous = row[0].strip(), _LABELS[row[1].strip().lower()]
            if labels.setdefault(session_id, anomalous) != anomalous:
                raise DataError(f"{path}:{number}: session {session_id} has two labels")
    return labels


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class TemplateTable:
    """Template ids and texts, in file order; ``path`` is where they came from."""

    path: Path
    ids: tuple[str, ...]
    texts: tuple[str, ...]

    def text_of(self, token: str, key_map: Mapping[str, str]) -> str | None:
        """The template text of a session token, or None if the table has no such id.

        ``key_map`` renames tokens first (DeepLog's key 17 is Loghub's E29: ``{"17": "E29"}``);
        then a token matches an id exactly, or by its number (``5`` <-> ``E5``).
        """
        token = key_map.get(token, token)
        index = self._index.get(token)
        if index is None:
            index = self._index.get(_number(token) or "")
        return None if index is None else self.texts[index]

    @cached_property
    def _index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        for position, template_id in enumerate(self.ids):
            index.setdefault(_number(template_id) or template_id, position)
        index.update({template_id: position for position, template_id in enumerate(self.ids)})
        return index


def _number(token: str) -> str | None:
    match = re.fullmatch(r"[A-Za-z]*0*(\d+)", token)
    return match.group(1) if match else None


def read_templates(path: Path) -> TemplateTable:
    """Read ``EventId,EventTemplate`` CSV (any extra columns ignored) or one template per line.

    In the line form the id of line n is ``n`` (1-based). DataError on an empty file, a
    CSV without those columns, or a duplicated id.
    """
    with open_text(path) as handle:
        if _is_csv(path):
            reader = csv.DictReader(handle)
            if not {"EventId", "EventTemplate"} <= set(reader.fieldnames or []):
                raise DataError(f"{path}: expected a header with EventId,EventTemplate")
            pairs = [(row["EventId"].strip(), row["EventTemplate"].strip()) for row in reader]
        else:
            pairs = [(str(n), line.strip()) for n, line in enumerate(handle, 1) if line.strip()]
    if not pairs:
        raise DataError(f"{path}: no templates")
    duplicated = [i for i, count in Counter(i for i, _ in pairs).items() if count > 1]
    if duplicated:
        raise DataError(f"{path}: duplicated template id(s) {', '.join(duplicated[:5])}")
    return TemplateTable(path, tuple(i for i, _ in pairs), tuple(t for _, t in pairs))


def parse_key_map(items: Iterable[str]) -> dict[str, str]:
    """Parse ``TOKEN=EVENT_ID`` items (e.g. ``17=E29``) into a token -> id mapping."""
    key_map = {}
    for item in items:
        token, sep, event_id = item.partition("=")
        if not sep or not token.strip() or not event_id.strip():
            raise DataError(f"key map item {item!r} is not TOKEN=EVENT_ID")
        key_map[token.strip()] = event_id.strip()
    return key_map


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Template texts and the model keys around them.

    Key 0 is unknown, key i (1..T) is ``templates[i-1]``, ``start_key`` = T+1,
    ``end_key`` = T+2, ``size`` = T+3. This is the ``vocab.json`` of a bundle.
    """

    templates: tuple[str, ...]

    @property
    def start_key(self) -> int:
        return len(self.templates) + 1

    @property
    def end_key(self) -> int:
        return len(self.templates) + 2

    @property
    def size(self) -> int:
        return len(self.templates) + 3

    @cached_property
    def key_of_text(self) -> dict[str, int]:
        """Template text -> key (the first key wins if two templates share a text)."""
        mapping: dict[str, int] = {}
        for key, text in enumerate(self.templates, 1):
            mapping.setdefault(text, key)
        return mapping

    def encode(self, texts: Iterable[str | None]) -> np.ndarray:
        """Keys of template texts (unknown or None -> 0), as int32."""
        mapping = self.key_of_text
        return np.fromiter((UNKNOWN_KEY if t is None else mapping.get(t, UNKNOWN_KEY)
                            for t in texts), dtype=np.int32)

    def to_json(self) -> dict[str, Any]:
        """The ``vocab.json`` document."""
        return {"format": 1,
                "templates": {str(key): text for key, text in enumerate(self.templates, 1)},
                "unknown_key": UNKNOWN_KEY, "start_key": self.start_key,
                "end_key": self.end_key, "vocab_size": self.size}

    @classmethod
    def from_templates(cls, templates: Mapping[int, str]) -> Vocabulary:
        """The vocabulary of a loaded bundle (key -> text for keys 1..T)."""
        return cls(tuple(templates[key] for key in range(1, len(templates) + 1)))


def session_texts(sessions: Iterable[Session], table: TemplateTable,
                  key_map: Mapping[str, str], *, strict: bool) -> list[tuple[str | None, ...]]:
    """Template texts of each session's events; None where the table has no such id.

    With ``strict``, an unknown id is a DataError naming the session (training data must be
    fully described by its template table).
    """
    result = []
    for session in sessions:
        texts = tuple(table.text_of(token, key_map) for token in session.events)
        if strict and None in texts:
            token = session.events[texts.index(None)]
            raise DataError(f"session {session.id}: event {token!r} has no template in "
                            f"{table.path} (use a key map such as 17=E29 if ids differ)")
        result.append(texts)
    return result


def direct_keys(sessions: Iterable[Session], vocab: Vocabulary) -> list[np.ndarray]:
    """Keys of sessions whose events *are* model keys (``5`` or ``E5``); others -> 0."""
    known = range(1, len(vocab.templates) + 1)
    result = []
    for session in sessions:
        numbers = (_number(token) for token in session.events)
        result.append(np.fromiter((int(n) if n is not None and int(n) in known else UNKNOWN_KEY
                                   for n in numbers), dtype=np.int32))
    return result


# --------------------------------------------------------------------------- splits and checks


def split_part(session_id: str, seed: int, validation_fraction: float,
               test_fraction: float) -> str:
    """``validation``, ``test`` or ``train``: where a session falls by a keyed hash of its id.

    The hash of ``'<seed>:<id>'`` is uniform in [0, 1): below ``validation_fraction`` is
    validation, the next ``test_fraction`` is test, the rest is train.
    """
    digest = hashlib.sha256(f"{seed}:{session_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    if position < validation_fraction:
        return "validation"
    return "test" if position < validation_fraction + test_fraction else "train"


def session_ref(file_sha256: str, session_id: str) -> str:
    """A session's identity across files: its id, or for ``#<line>`` ids (files without
    session ids) the id qualified by the file's sha256."""
    return f"{file_sha256}:{session_id}" if session_id.startswith("#") else session_id


def check_training_data(sequences: Sequence[np.ndarray], *, min_sessions: int,
                        min_events: int, where: str) -> None:
    """Refuse training data that is too small or has fewer than two distinct templates."""
    events = sum(len(s) for s in sequences)
    distinct = len(set(np.concatenate(sequences).tolist())) if events else 0
    if len(sequences) < min_sessions or events < min_events:
        raise DataError(f"{where}: too little training data: {len(sequences)} sessions with "
                        f"{events} events (need at least {min_sessions} sessions and "
                        f"{min_events} events)")
    if distinct < 2:
        raise DataError(f"{where}: the training sessions use {distinct} distinct template(s); "
                        "a next-template model needs at least two")


def key_distribution(sequences: Iterable[np.ndarray], vocab: Vocabulary) -> dict[str, float]:
    """Share of each template key among all events (every template key listed, JSON keys)."""
    counts = np.zeros(vocab.size, dtype=np.int64)
    for sequence in sequences:
        counts += np.bincount(sequence, minlength=vocab.size)
    total = max(int(counts.sum()), 1)
    return {str(key): round(float(counts[key]) / total, 6)
            for key in range(1, len(vocab.templates) + 1)}


# --------------------------------------------------------------------------- logs


def read_log_records(path: Path) -> Iterator[Record]:
    """Records of a raw log (one per line) or a JSON-lines file, tagged with the file name.

    A file is JSON lines when its name ends in ``.jsonl``/``.json`` (optionally ``.gz``);
    the message goes to the body, the other keys to the attributes. DataError (with the
    line number) on a JSON line that is not an object.
    """
    jsonl = path.name.removesuffix(".gz").endswith((".jsonl", ".json"))
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not jsonl:
                yield Record(body=line, tag=path.name)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{number}: not a JSON object")
            key = next((k for k in MESSAGE_KEYS if isinstance(obj.get(k), str)), None)
            body = obj.pop(key) if key is not None else ""
            yield Record(body=body, attributes=obj, tag=path.name)


# --------------------------------------------------------------------------- training data


@dataclass(frozen=True)
class DataSpec:
    """What a bundle is trained on and how it is split (recorded in, and rebuilt from, its
    card). Either session files (``sessions`` with ``templates`` and ``key_map``, anomalies
    in ``validation_abnormal``) or raw / JSON-lines ``logs`` (redacted and mined as the
    sidecar does, sessions by ``session_key``, anomalous sessions named by ``labels``)."""

    sessions: tuple[SessionSource, ...] = ()
    templates: Path | None = None
    key_map: Mapping[str, str] = field(default_factory=dict)
    validation_abnormal: tuple[SessionSource, ...] = ()
    logs: tuple[Path, ...] = ()
    labels: Path | None = None
    session_key: str = "stream"
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.0
    min_sessions: int = 10
    min_events: int = 100
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    miner: MinerSettings = field(default_factory=MinerSettings)
    hash_secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_card(cls, training: Mapping[str, Any], session_key: str,
                  hash_secret: bytes | None = None) -> DataSpec:
        """The spec a card's ``training`` section records (no size minimums: the data was
        accepted once); DataError if the card does not record its data files as `train`
        writes them, or a data file is gone or its sha256 changed."""
        try:
            entries = [(SessionSource.parse(entry["path"] + (f"?{entry['select']}"
                                                             if entry.get("select") else "")),
                        entry["sha256"], entry["role"]) for entry in training["data"]]
            seed = int(training["seed"])
            validation_fraction = float(training["validation_fraction"])
        except (KeyError, TypeError, ValueError):
            raise DataError("the card does not list its training data files") from None
        by_role: dict[str, list[SessionSource]] = {}
        for source, digest, role in entries:
            if not source.path.is_file() or file_sha256(source.path) != digest:
                raise DataError(f"{source.path}: training data missing or changed since "
                                "training (sha256 differs from the card)")
            by_role.setdefault(role, []).append(source)

        def path_of(role: str) -> Path | None:
            return by_role[role][0].path if role in by_role else None

        return cls(sessions=tuple(by_role.get("train", ())), templates=path_of("templates"),
                   key_map=dict(training.get("key_map", {})),
                   validation_abnormal=tuple(by_role.get("validation_abnormal", ())),
                   logs=tuple(s.path for s in by_role.get("logs", ())),
                   labels=path_of("labels"), session_key=session_key, seed=seed,
                   validation_fraction=validation_fraction,
                   test_fraction=float(training.get("test_fraction", 0.0)),
                   min_sessions=0, min_events=0, hash_secret=hash_secret)


@dataclass(frozen=True)
class TrainingData:
    """Sessions split for training (keys) and validation (texts), with provenance.

    ``seen`` holds the `session_ref` of every session the model was trained or validated
    on, so an evaluation can leave them out; ``data`` is the card's list of data files.
    """

    vocab: Vocabulary
    train: list[np.ndarray]
    validation_normal: list[tuple[str | None, ...]]
    validation_abnormal: list[tuple[str | None, ...]]
    seen: frozenset[str]
    data: list[dict[str, Any]]
    split: str

    def validation(self, vocab: Vocabulary) -> tuple[list[np.ndarray], np.ndarray]:
        """Validation sessions encoded with ``vocab``, and their labels (True = anomalous)."""
        texts = self.validation_normal + self.validation_abnormal
        labels = np.array([False] * len(self.validation_normal)
                          + [True] * len(self.validation_abnormal), dtype=bool)
        return [vocab.encode(t) for t in texts], labels


#: A session as (its `session_ref`, the template texts of its events).
TextSession = tuple[str, tuple[str | None, ...]]


def load_training_data(spec: DataSpec) -> TrainingData:
    """Read, split and check training data (no TensorFlow needed).

    Normal sessions fall into train / validation / test by `split_part` of their id (test
    sessions are held out for evaluation); of the labelled anomalous sessions only the
    validation part is used, so the rest of the same file can serve as a test set.
    DataError when the data is unusable: no data, session files without a template table,
    events the table does not describe, too little data, fewer than two templates, or an
    empty validation part.
    """
    data: list[dict[str, Any]] = []
    if spec.logs:
        if spec.sessions or spec.validation_abnormal:
            raise DataError("train on logs or on session files, not both (with logs, name "
                            "the anomalous sessions in a label file)")
        vocab, normal, abnormal = _mined_sessions(spec, data)
    elif spec.sessions and spec.templates is not None:
        table = read_templates(spec.templates)
        vocab = Vocabulary(table.texts)
        normal = _table_sessions(spec.sessions, "train", table, spec, data)
        abnormal = _table_sessions(spec.validation_abnormal, "validation_abnormal", table,
                                   spec, data)
        data.append(_data_entry(spec.templates, "templates", 0))
    else:
        raise DataError("no training data: give logs, or session files with a template table "
                        "(it gives each key its text, so the bundle can score raw lines)")
    parts: dict[str, list[tuple[str | None, ...]]] = {"train": [], "validation": [], "test": []}
    validation_abnormal = []
    seen = set()
    for ref, texts in normal:
        part = split_part(ref, spec.seed, spec.validation_fraction, spec.test_fraction)
        parts[part].append(texts)
        if part != "test":
            seen.add(ref)
    for ref, texts in abnormal:
        if split_part(ref, spec.seed, spec.validation_fraction, spec.test_fraction) == \
                "validation":
            validation_abnormal.append(texts)
            seen.add(ref)
    train = [vocab.encode(t) for t in parts["train"]]
    where = ", ".join(map(str, spec.logs or spec.sessions))
    check_training_data(train, min_sessions=spec.min_sessions, min_events=spec.min_events,
                        where=where)
    if not parts["validation"]:
        raise DataError(f"{where}: the validation part ({spec.validation_fraction:.0%} of the "
                        "normal sessions) is empty: add data or raise the validation fraction")
    split = (f"by sha256('{spec.seed}:<session id>'): validation = lowest "
             f"{spec.validation_fraction:.0%} (normal: early stopping and FPR for g"
             + ("; anomalous: recall for g" if validation_abnormal else "") + "), "
             + (f"test = next {spec.test_fraction:.0%} (held out, unused), "
                if spec.test_fraction else "")
             + "train = the rest of the normal sessions")
    return TrainingData(vocab, train, parts["validation"], validation_abnormal,
                        frozenset(seen), data, split)


def _data_entry(path: Path, role: str, sessions: int, select: str = "") -> dict[str, Any]:
    entry = {"path": str(path), "sha256": file_sha256(path), "sessions": sessions, "role": role}
    return entry | ({"select": select} if select else {})


def _table_sessions(sources: Iterable[SessionSource], role: str, table: TemplateTable,
                    spec: DataSpec, data: list[dict[str, Any]]) -> list[TextSession]:
    """Sessions of session files as template texts (training files must be fully known)."""
    result: list[TextSession] = []
    for source in sources:
        sessions = read_sessions(source)
        digest = file_sha256(source.path)
        texts = session_texts(sessions, table, spec.key_map, strict=role == "train")
        result += [(session_ref(digest, s.id), t) for s, t in zip(sessions, texts, strict=True)]
        data.append(_data_entry(source.path, role, len(sessions), source.selection))
    return result


def _mined_sessions(spec: DataSpec, data: list[dict[str, Any]]
                    ) -> tuple[Vocabulary, list[TextSession], list[TextSession]]:
    """Sessions of raw logs: redacted and mined as the sidecar does, keyed by the session key.

    Two passes: the first teaches the miner every line, the second assigns each line the
    template it ends up in, so early lines get the final, generalised templates too. The
    hash secret only matters for tokens inside session keys; without one a random secret
    is used (tokens never leave this function).
    """
    redactor = Redactor(spec.redaction, spec.hash_secret or os.urandom(32))
    miner = TemplateMiner(spec.miner)
    keyer = SessionKeyer(spec.session_key)

    def sanitized(path: Path) -> Iterator[Record]:
        for record in read_log_records(path):
            redactor.redact_record(record)
            yield record

    for path in spec.logs:
        for record in sanitized(path):
            miner.add(record.body)
    sessions: dict[str, list[str | None]] = {}
    for path in spec.logs:
        keys = set()
        for record in sanitized(path):
            match = miner.match(record.body)
            key = keyer(record)
            sessions.setdefault(key, []).append(match.template if match is not None else None)
            keys.add(key)
        data.append(_data_entry(path, "logs", len(keys)))
    labels = read_labels(spec.labels) if spec.labels is not None else {}
    if spec.labels is not None:
        data.append(_data_entry(spec.labels, "labels", sum(labels.values())))
    templates = miner.templates()
    vocab = Vocabulary(tuple(templates[i] for i in sorted(templates)))
    normal = [(key, tuple(t)) for key, t in sessions.items() if not labels.get(key)]
    abnormal = [(key, tuple(t)) for key, t in sessions.items() if labels.get(key)]
    return vocab, normal, abnormal

"""Sessions for scenario mining: input -> sanitized events, each session judged by the bundle.

Strategy: raw or JSON-lines logs take the live path of ``logminer evaluate`` (`run_live`:
the sidecar's redactor, then its scoring stage with the template miner, vocabulary map,
session keyer and model). A session is a run of records between end markers
(`session_runs`) and belongs to the *kind* of its first record: the input file's name
without extensions. Each event carries the template its record ends up in (the miner
generalises online, so an early record may still carry a narrower text; ``match`` after
the run gives the final one) and the sanitized values that template's wildcards took in
the body. Key-sequence files are read as ``logminer evaluate`` reads them (`session_keys`),
a kind per file name and row selection; their events are template texts without values.
Inputs of one kind (``a/app.log``, ``b/app.log.gz``) make one kind together.

Every session is then scored whole (`first_divergences`, the bundle semantics): the first
event outside the top-g predictions, or its end, and the templates the model ranked
highest there. A session without such a step is *normal*.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidecar.redact import Redactor
from sidecar.scenarios.wildcards import ValueReader, spaced
from sidecar.scoring.bundle import Bundle
from sidecar.scoring.datasets import (
    UNKNOWN_KEY,
    DataError,
    SessionSource,
    Vocabulary,
    read_sessions,
    read_templates,
    session_texts,
)
from sidecar.scoring.evaluation import (
    BundleStepModel,
    first_divergences,
    run_live,
    session_keys,
    session_runs,
)
from sidecar.templates import MinerSettings, TemplateMiner

#: What the model expects when it expects a session to end.
END_OF_SESSION = "(end of session)"

#: How many expected templates a divergence names.
EXPECTED = 3


@dataclass(frozen=True)
class Event:
    """One step of a session: its sanitized template and the values of its wildcards
    (None when there are none to read: key sequences, or a body that does not fit)."""

    template: str
    values: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Divergence:
    """Where the model first rejected a session: the index of the event (the number of
    events when it was the end), the templates it expected there (best first, possibly
    `END_OF_SESSION`), and whether the rejected event's template is unknown to the bundle."""

    position: int
    expected: tuple[str, ...]
    unknown: bool


@dataclass(frozen=True)
class ScoredSession:
    """A session of one kind, its events, and its divergence (None: a normal session)."""

    kind: str
    events: tuple[Event, ...]
    divergence: Divergence | None


@dataclass(frozen=True)
class ScoredInput:
    """The judged sessions of every kind, and per kind what it was read from."""

    sessions: tuple[ScoredSession, ...]
    sources: Mapping[str, str]


def kind_of(name: str) -> str:
    """The kind of an input file: its name without ``.gz`` and its last extension."""
    return Path(name.removesuffix(".gz")).stem or name


def log_sessions(logs: Sequence[Path], model: Path, bundle: Bundle, *, g: int,
                 session_key: str | None, redactor: Redactor,
                 miner: MinerSettings) -> ScoredInput:
    """Sessions of raw or JSON-lines logs, redacted, mined and keyed as live traffic."""
    template_miner = TemplateMiner(miner)
    live = run_live(logs, model, bundle, g=g, session_key=session_key, redactor=redactor,
                    miner=template_miner)
    reader = ValueReader()
    kinds, events, keys = [], [], []
    for runs in session_runs(live.records, bundle.card.scoring.end_marker).values():
        for run in runs:
            records = [live.records[i] for i in run]
            kinds.append(kind_of(records[0].tag))
            run_events = []
            for record in records:
                final = template_miner.match(record.body)
                template = final.template if final is not None else record.template or ""
                run_events.append(Event(template, reader.read(template, record.body)))
            events.append(tuple(run_events))
            keys.append(np.array([live.keys[i] for i in run], np.int32))
    key = session_key or bundle.card.scoring.session_key
    sources = {kind: f"raw logs {names}, redacted and mined as live traffic, sessions by {key}"
               for kind, names in _names((kind_of(p.name), p.name) for p in logs).items()}
    return ScoredInput(_judge(bundle, g, kinds, events, keys), sources)


def key_sessions(sources: Sequence[SessionSource], bundle: Bundle, *, g: int,
                 templates: Path | None, key_map: Mapping[str, str]) -> ScoredInput:
    """Sessions of key-sequence files: through the template texts of ``templates`` when
    given, else read as the bundle's own keys. A kind is a file name and row selection."""
    vocab = Vocabulary.from_templates(bundle.vocab.templates)
    table = read_templates(templates) if templates is not None else None
    kinds, events, keys = [], [], []
    named: list[tuple[str, str]] = []
    for source in sources:
        kind = kind_of(source.path.name) + (f" ({source.selection})" if source.where else "")
        named.append((kind, str(SessionSource(Path(source.path.name), source.where))))
        sessions = read_sessions(source)
        sequences = session_keys(sessions, vocab, table, key_map)
        texts = (session_texts(sessions, table, key_map, strict=False) if table is not None
                 else [[vocab.templates[k - 1] if k != UNKNOWN_KEY else None for k in seq]
                       for seq in sequences])
        for session, sequence, session_text in zip(sessions, sequences, texts, strict=True):
            kinds.append(kind)
            events.append(tuple(Event(spaced(text) if text is not None
                                      else f"unknown event {token}")
                                for token, text in zip(session.events, session_text,
                                                       strict=True)))
            keys.append(sequence)
    table_name = f" with templates {templates.name}" if templates is not None else ""
    described = {kind: f"key sequences {names}{table_name}, one session per line or row"
                 for kind, names in _names(named).items()}
    return ScoredInput(_judge(bundle, g, kinds, events, keys), described)


def _names(kinds: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Per kind, the names of its inputs (``kind, name`` pairs) in order, comma-separated."""
    names: dict[str, list[str]] = {}
    for kind, name in kinds:
        if name not in names.setdefault(kind, []):
            names[kind].append(name)
    return {kind: ", ".join(values) for kind, values in names.items()}


def _judge(bundle: Bundle, g: int, kinds: list[str], events: list[tuple[Event, ...]],
           keys: list[np.ndarray]) -> tuple[ScoredSession, ...]:
    """Score every session whole and attach its divergence."""
    if not keys:
        raise DataError("no sessions in the input")
    vocab = bundle.vocab
    found = first_divergences(BundleStepModel(bundle), keys, start_key=vocab.start_key,
                              end_key=vocab.end_key, g=g, top=EXPECTED)

    def text(key: int) -> str:
        return END_OF_SESSION if key == vocab.end_key else spaced(vocab.templates[key])

    sessions = []
    for index, (kind, session_events, sequence) in enumerate(zip(kinds, events, keys,
                                                                  strict=True)):
        position = int(found.position[index])
        divergence = None
        if position >= 0:
            unknown = position < len(sequence) and sequence[position] == UNKNOWN_KEY
            divergence = Divergence(position, tuple(text(int(k)) for k in found.expected[index]
                                                    if k >= 0), bool(unknown))
        sessions.append(ScoredSession(kind, session_events, divergence))
    return tuple(sessions)

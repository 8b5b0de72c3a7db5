"""Fixtures for the scoring tests: the tiny bundle, bundle copies, HDFS sessions, a scorer harness.

The stand-in miner treats a record body ``E<k> ... blk_<id>`` as an instance of the
tiny bundle's template for DeepLog key k (any other first word is a template the
bundle does not know), and ``ExactKeys`` maps templates to bundle keys by exact text:
together they let the scorer be tested independently of the real miner.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.record import Batch, Record
from sidecar.scoring.bundle import HASHED_FILES, Bundle, load_bundle
from sidecar.scoring.scorer import Scorer, ScoringSettings

BUNDLES = Path(__file__).resolve().parents[1] / "testdata" / "bundles"
TINY = BUNDLES / "tiny"
SAMPLE = BUNDLES / "hdfs_sample"


def read_sessions(name: str) -> list[list[int]]:
    lines = (SAMPLE / name).read_text().splitlines()
    return [[int(k) for k in line.split()] for line in lines]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny() -> Bundle:
    return load_bundle(TINY)


@pytest.fixture(scope="session")
def normal_sessions() -> list[list[int]]:
    """Held-out normal HDFS sessions (never used to train the tiny bundle)."""
    return read_sessions("normal.txt")


@pytest.fixture(scope="session")
def abnormal_sessions() -> list[list[int]]:
    return read_sessions("abnormal.txt")


def _merge(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Copy the tiny bundle to ``tmp_path/<name>``, change card fields and files, re-hash.

    ``card`` is merged into card.json; ``files`` replaces file contents (bytes);
    ``rehash=False`` keeps the card's sha256 entries as they were.
    """

    def make(name: str = "bundle", *, card: Mapping[str, Any] | None = None,
             files: Mapping[str, bytes] | None = None, rehash: bool = True,
             into: Path | None = None) -> Path:
        path = (into or tmp_path) / name
        shutil.copytree(TINY, path)
        for file_name, content in (files or {}).items():
            (path / file_name).write_bytes(content)
        data = json.loads((path / "card.json").read_text())
        _merge(data, card or {})
        if rehash:
            data["sha256"] = {f: hashlib.sha256((path / f).read_bytes()).hexdigest()
                              for f in HASHED_FILES}
        (path / "card.json").write_text(json.dumps(data))
        return path

    return make


@dataclass(frozen=True)
class Mined:
    template_id: int
    template: str
    is_new: bool


class StandInMiner:
    """Body ``E<k> ...`` -> the tiny bundle's template k (or ``unknown event <k>``)."""

    def __init__(self, templates: Mapping[int, str]):
        self._templates = templates
        self._ids: dict[str, int] = {}

    def add(self, body: str) -> Mined:
        word = body.split(maxsplit=1)[0]
        template = self._templates.get(int(word[1:]), f"unknown event {word} <*>")
        is_new = template not in self._ids
        template_id = self._ids.setdefault(template, len(self._ids) + 1)
        return Mined(template_id, template, is_new)


class ExactKeys:
    """Bundle key by exact template text."""

    def __init__(self, templates: Mapping[int, str]):
        self._keys = {text: key for key, text in templates.items()}

    def key_for(self, miner_template: str) -> int | None:
        return self._keys.get(miner_template)


def interleave(sessions: list[list[int]], seed: int = 0) -> list[tuple[int, int]]:
    """(session index, position) of every record, sessions overlapping in time as on a node."""
    rng = np.random.default_rng(seed)
    events = []
    for index, keys in enumerate(sessions):
        start = rng.uniform(0, len(sessions) / 4)
        events += [(start + t + rng.uniform(0, 0.5), index, t) for t in range(len(keys))]
    return [(index, t) for _, index, t in sorted(events)]


@pytest.fixture(scope="session")
def interleaved() -> Callable[..., list[tuple[int, int]]]:
    return interleave


@pytest.fixture(scope="session")
def stand_in_records() -> Callable[..., list[Record]]:
    """Records ``E<k> event for blk_<i>`` of interleaved sessions."""

    def make(sessions: list[list[int]], seed: int = 0) -> list[Record]:
        return [Record(body=f"E{sessions[i][t]} event for blk_{i}", tag="hdfs")
                for i, t in interleave(sessions, seed)]

    return make


class FakeClock:
    """Monotonic seconds under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Harness:
    """A Scorer with the stand-in miner, a fresh registry, a fake clock and collected alerts."""

    def __init__(self, templates: Mapping[int, str], clock: FakeClock, **settings: Any):
        self.registry = CollectorRegistry()
        self.alerts: list[Any] = []
        settings.setdefault("model_dir", str(TINY))
        self.scorer = Scorer(ScoringSettings(**settings), StandInMiner(templates), ExactKeys,
                             self.registry, on_alert=self.alerts.append, clock=clock)

    def run(self, records: list[Record], batch: int = 128) -> list[Record]:
        for first in range(0, len(records), batch):
            self.scorer.process(Batch(records[first:first + batch]))
        return records

    def metric(self, sample: str, /, **labels: str) -> float:
        value = self.registry.get_sample_value(sample, labels)
        return 0.0 if value is None else value


@pytest.fixture
def harness(tiny: Bundle, clock: FakeClock) -> Callable[..., Harness]:
    """``harness(**ScoringSettings fields)`` -> a Harness over the tiny bundle by default."""
    return lambda **settings: Harness(tiny.vocab.templates, clock, **settings)

"""Fixtures for the scenario tests: data paths and ``generate`` with a fixed secret and date."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import TEST_HASH_SECRET, TESTDATA

from sidecar.scenarios.generate import ScenariosConfig, ScenariosReport, generate

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "hdfs"
DATA = TESTDATA / "scenarios"
DATE = datetime.date(2026, 11, 24)


@pytest.fixture
def scenarios(tmp_path: Path) -> Callable[..., ScenariosReport]:
    """``scenarios(name, **config)``: generate into ``tmp_path/name`` (model: the shipped
    bundle, hash secret: the test secret, date: 2026-11-24, unless given)."""

    def run(name: str = "out", **fields: Any) -> ScenariosReport:
        fields = {"model": SHIPPED, "date": DATE,
                  "hash_secret": TEST_HASH_SECRET.encode(), **fields}
        return generate(ScenariosConfig(out=tmp_path / name, **fields))

    return run

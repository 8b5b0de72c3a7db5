"""Tests for template-table persistence: round trip, identical resumption, crash safety,
corrupt files, and that no raw line is ever written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.templates import (
    MaskPattern,
    MinerSettings,
    TemplateMiner,
    TemplateStoreError,
    load_miner,
    save_miner,
)

LINES = [
    "Receiving block blk_-1608 src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
    "Receiving block blk_4032 src: /10.250.10.6:40524 dest: /10.250.10.6:50010",
    "PacketResponder 1 for block blk_-1608 terminating",
    "Failed password for root from 1.2.3.4 port 22 ssh2",
    "Failed password for admin from 1.2.3.5 port 22 ssh2",
    "Failed password for guest from 1.2.3.6 port 22 ssh2",
    "Failed password for oracle from 1.2.3.7 port 22 ssh2",
    "Location icon should now be in state Active",
    "Location icon should now be in state Inactive",
    "session opened for user <USER:0a1b:0123456789abcdef> by (uid=0)",
    "worker-a joined",
    "worker-b joined",
    "",
]
LATER = [
    "Failed password for nobody from 9.9.9.9 port 2222 ssh2",
    "Location icon should now be in state Unknown",
    "Receiving block blk_77 src: /10.0.0.1:1 dest: /10.0.0.2:2",
    "a brand new kind of line",
]


def _mined(settings: MinerSettings | None = None) -> TemplateMiner:
    miner = TemplateMiner(settings or MinerSettings())
    miner.add_batch(LINES)
    return miner


def test_round_trip_keeps_templates_counts_and_next_id(tmp_path: Path) -> None:
    miner = _mined()
    path = tmp_path / "templates.json"
    save_miner(miner, path)
    restored = load_miner(path)
    assert restored.templates() == miner.templates()
    assert restored.state() == miner.state()


def test_reloaded_miner_maps_every_line_to_the_same_id_and_resumes_identically(
    tmp_path: Path,
) -> None:
    miner = _mined()
    path = tmp_path / "templates.json"
    save_miner(miner, path)
    restored = load_miner(path, expected=MinerSettings())
    for line in LINES:
        assert restored.match(line) == miner.match(line)
    assert restored.add_batch(LATER) == miner.add_batch(LATER)
    assert restored.templates() == miner.templates()


def test_extra_masks_survive_the_round_trip(tmp_path: Path) -> None:
    settings = MinerSettings(extra_masks=(MaskPattern("order", r"ORD-[A-Z]+"),))
    path = tmp_path / "t.json"
    save_miner(_mined(settings), path)
    assert load_miner(path).settings == settings


def test_file_holds_templates_only_never_raw_values(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    save_miner(_mined(), path)
    text = path.read_text(encoding="utf-8")
    for raw in ("10.250.19.102", "blk_-1608", "0123456789abcdef", "54106", "1.2.3.4"):
        assert raw not in text
    assert "<USER>" in text


def test_save_replaces_atomically_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.json"
    save_miner(_mined(), path)
    before = path.read_bytes()
    bigger = _mined()
    bigger.add_batch(LATER)

    def crash(*_args: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_miner(bigger, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
    monkeypatch.undo()
    save_miner(bigger, path)
    assert load_miner(path).templates() == bigger.templates()
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def _document(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "good.json"
    save_miner(_mined(), path)
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _corrupt(doc: dict[str, Any], change: str) -> None:
    templates = doc["templates"]
    if change == "format":
        doc["format"] = "something-else"
    elif change == "version":
        doc["version"] = 99
    elif change == "unknown key":
        doc["extra"] = 1
    elif change == "settings type":
        doc["settings"]["depth"] = "4"
    elif change == "settings bound":
        doc["settings"]["similarity_threshold"] = 7
    elif change == "bad mask":
        doc["settings"]["extra_masks"] = [{"name": "x", "pattern": "("}]
    elif change == "duplicate id":
        templates[1]["id"] = templates[0]["id"]
    elif change == "negative count":
        templates[0]["count"] = -1
    elif change == "route mismatch":
        templates[0]["route"] = ["nonsense", "route"]
    elif change == "route length":
        templates[0]["route"] = []
    elif change == "double space":
        templates[0]["template"] = "two  spaces"
    elif change == "next id":
        doc["next_id"] = 1
    elif change == "templates type":
        doc["templates"] = {"1": "x"}


@pytest.mark.parametrize(
    "change",
    ["format", "version", "unknown key", "settings type", "settings bound", "bad mask",
     "duplicate id", "negative count", "route mismatch", "route length", "double space",
     "next id", "templates type"],
)
def test_corrupt_documents_raise_a_clear_error(tmp_path: Path, change: str) -> None:
    doc = _document(tmp_path)
    _corrupt(doc, change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(TemplateStoreError, match=str(path)):
        load_miner(path)


@pytest.mark.parametrize("content", [b"", b"{\"format\": ", b"\xff\xfe", b"[]", b"null"])
def test_unparseable_files_raise_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TemplateStoreError):
        load_miner(path)


def test_truncated_file_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    save_miner(_mined(), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(TemplateStoreError, match="not a JSON document"):
        load_miner(path)


def test_other_settings_are_refused_when_expected_settings_are_given(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    save_miner(_mined(), path)
    with pytest.raises(TemplateStoreError, match="different settings"):
        load_miner(path, expected=MinerSettings(similarity_threshold=0.7))


def test_missing_file_is_not_reported_as_corrupt(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_miner(tmp_path / "absent.json")

"""Crash-safe persistence of the template table, so template ids survive restarts.

Strategy: the file is JSON holding the miner's ``MinerState``: a format marker and
version, the settings it was mined with, the next id, and per template its id, text,
line count and prefix-tree route (the route is what lets a reloaded miner resume
identically: the same line reaches the same leaf and the same id). Only templates are
written, never a raw line. Saving writes a temporary file in the target directory,
fsyncs it, renames it over the old file (``os.replace``, atomic on POSIX) and fsyncs the
directory, so a crash leaves the old table or the new one, never a torn file. Loading
checks every field and raises ``TemplateStoreError`` naming the first problem (field
paths only, no file content); whether to refuse to start or to start fresh is the
caller's decision. A missing file raises ``FileNotFoundError``.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from sidecar.durable import write_json_atomic
from sidecar.templates.miner import (
    MaskPattern,
    MinerSettings,
    MinerState,
    TemplateMiner,
    TemplateRecord,
)

FORMAT = "logminer-templates"
VERSION = 1


class TemplateStoreError(Exception):
    """The template file is unreadable, corrupt or was mined under other settings."""


def save_miner(miner: TemplateMiner, path: str | os.PathLike[str]) -> None:
    """Atomically replace ``path`` with the miner's template table (see module doc)."""
    write_json_atomic(Path(path), _to_document(miner.state()))


def load_miner(
    path: str | os.PathLike[str], expected: MinerSettings | None = None
) -> TemplateMiner:
    """A miner restored from ``path``, with the settings stored there.

    With ``expected``, settings that differ raise ``TemplateStoreError`` (ids mined
    under other settings would not be reproduced).
    """
    raw = Path(path).read_bytes()
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TemplateStoreError(f"{path}: not a JSON document ({type(exc).__name__})") from None
    try:
        state = _from_document(document)
        miner = TemplateMiner.from_state(state)
    except (ValueError, TypeError) as exc:
        raise TemplateStoreError(f"{path}: {exc}") from None
    if expected is not None and expected != miner.settings:
        raise TemplateStoreError(f"{path}: mined under different settings")
    return miner


def _to_document(state: MinerState) -> dict[str, Any]:
    settings = {f.name: getattr(state.settings, f.name) for f in fields(state.settings)}
    settings["extra_masks"] = [
        {"name": mask.name, "pattern": mask.pattern} for mask in state.settings.extra_masks
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings,
        "next_id": state.next_id,
        "templates": [
            {"id": t.template_id, "template": t.template, "count": t.count, "route": list(t.route)}
            for t in state.templates
        ],
    }


def _from_document(document: object) -> MinerState:
    doc = _mapping(document, "document", {"format", "version", "settings", "next_id",
                                          "templates"})
    if doc["format"] != FORMAT:
        raise ValueError(f"format: not a {FORMAT} file")
    if doc["version"] != VERSION:
        raise ValueError(f"version: unsupported (this build reads version {VERSION})")
    templates = doc["templates"]
    if not isinstance(templates, list):
        raise ValueError("templates: expected a list")
    return MinerState(
        settings=_settings(doc["settings"]),
        next_id=_integer(doc["next_id"], "next_id"),
        templates=tuple(_record(item, f"templates[{i}]") for i, item in enumerate(templates)),
    )


def _settings(value: object) -> MinerSettings:
    names = {f.name for f in fields(MinerSettings)}
    raw = _mapping(value, "settings", names)
    masks = raw["extra_masks"]
    if not isinstance(masks, list):
        raise ValueError("settings.extra_masks: expected a list")
    extra = tuple(
        MaskPattern(**_mapping(mask, f"settings.extra_masks[{i}]", {"name", "pattern"}))
        for i, mask in enumerate(masks)
    )
    for name in names - {"extra_masks", "similarity_threshold"}:
        _integer(raw[name], f"settings.{name}")
    threshold = raw["similarity_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError("settings.similarity_threshold: expected a number")
    return MinerSettings(**{**raw, "extra_masks": extra})


def _record(value: object, where: str) -> TemplateRecord:
    raw = _mapping(value, where, {"id", "template", "count", "route"})
    route = raw["route"]
    if not isinstance(raw["template"], str):
        raise ValueError(f"{where}.template: expected a string")
    if not isinstance(route, list) or not all(isinstance(key, str) for key in route):
        raise ValueError(f"{where}.route: expected a list of strings")
    return TemplateRecord(
        template_id=_integer(raw["id"], f"{where}.id"),
        template=raw["template"],
        count=_integer(raw["count"], f"{where}.count"),
        route=tuple(route),
    )


def _mapping(value: object, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"{where}: expected an object with keys {sorted(keys)}")
    return value


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer")
    return value

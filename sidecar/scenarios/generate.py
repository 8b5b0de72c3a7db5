"""``logminer scenarios``: sanitized sessions -> flows -> Gherkin features, JSON, a skeleton.

Strategy: read and judge the sessions (`sessions`), mine the flows of each kind
(`flows`), render one ``<kind>.feature`` per kind (`gherkin`), check that each parses with
the official Gherkin parser and holds one test case per scenario and example row, and
only then write it; with ``json`` the same flows go to ``<kind>.json``. A pytest-bdd
``conftest.py`` with pending step definitions and one ``test_<kind>.py`` per feature
(`skeleton`) complete the output directory. Raw logs need the hash secret: the tokens in
the examples are the ones live traffic carries under the same secret, so they stay
joinable and the output is the same on every run.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sidecar import defaults
from sidecar.redact import RedactionSettings, Redactor
from sidecar.scenarios import gherkin, skeleton
from sidecar.scenarios.flows import FeatureFlows, FlowSettings, mine
from sidecar.scenarios.sessions import key_sessions, log_sessions
from sidecar.scoring.bundle import load_bundle
from sidecar.scoring.datasets import DataError, SessionSource
from sidecar.templates import MinerSettings


@dataclass(frozen=True)
class ScenariosConfig:
    """Everything ``logminer scenarios`` takes; each field is one CLI option.

    Either raw or JSON-lines ``logs`` (redacted with ``hash_secret`` and mined as live
    traffic; the session key defaults to the card's) or key-sequence ``sessions`` (with
    ``templates`` and ``key_map`` when their ids are not the bundle's keys). ``g``
    defaults to the card's; ``date`` is the generation date the features state (None: today,
    UTC).
    """

    model: Path
    out: Path
    logs: tuple[Path, ...] = ()
    sessions: tuple[SessionSource, ...] = ()
    templates: Path | None = None
    key_map: Mapping[str, str] = field(default_factory=dict)
    session_key: str | None = None
    g: int | None = None
    json: bool = False
    flows: FlowSettings = field(default_factory=FlowSettings)
    date: datetime.date | None = None
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    miner: MinerSettings = field(default_factory=MinerSettings)
    hash_secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ScenariosReport:
    """What `generate` wrote: the model, the flows of each feature and the files."""

    model: str
    version: int
    g: int
    out: Path
    features: tuple[FeatureFlows, ...]
    files: tuple[Path, ...]

    def table(self) -> str:
        """A printable summary: one row per feature."""
        header = (f"{'feature':<32} {'sessions':>8} {'normal':>7} {'flagged':>7} "
                  f"{'common':>6} {'coverage':>8} {'anomalous':>9}")
        lines = [f"{self.model} v{self.version}, g = {self.g}: {len(self.files)} files in "
                 f"{self.out}", header, "-" * len(header)]
        for f in self.features:
            share = f"{100 * f.covered // f.normal}%" if f.normal else "-"
            lines.append(f"{gherkin.file_stem(f.kind) + '.feature':<32} {f.sessions:>8} "
                         f"{f.normal:>7} {f.flagged:>7} {len(f.common):>6} {share:>8} "
                         f"{len(f.anomalous):>9}")
        return "\n".join(lines)


def generate(config: ScenariosConfig) -> ScenariosReport:
    """Mine the flows and write the features, their JSON if asked, and the skeleton.

    DataError for unusable input (nothing to read, both kinds of input, raw logs without
    the hash secret, two kinds that map to one file name), BundleError for a bundle the runtime
    refuses; ValueError if a rendered feature does not parse (a bug: nothing is written).
    """
    if bool(config.logs) == bool(config.sessions):
        raise DataError("give either raw logs (--logs) or key-sequence files (--sessions)")
    if config.templates is not None and not config.sessions:
        raise DataError("--templates names the keys of --sessions files")
    bundle = load_bundle(config.model)
    g = config.g or bundle.card.scoring.g
    if config.logs:
        if not config.hash_secret:
            raise DataError(f"{defaults.HASH_SECRET_ENV} is not set: raw logs are redacted "
                            "with the secret live traffic uses, so their tokens match")
        scored = log_sessions(config.logs, config.model, bundle, g=g,
                              session_key=config.session_key,
                              redactor=Redactor(config.redaction, config.hash_secret),
                              miner=config.miner)
    else:
        scored = key_sessions(config.sessions, bundle, g=g, templates=config.templates,
                              key_map=config.key_map)
    features = mine(scored.sessions, config.flows)
    date = config.date or datetime.datetime.now(datetime.UTC).date()
    stems = [gherkin.file_stem(feature.kind) for feature in features]
    if len(set(stems)) < len(stems):
        raise DataError(f"two kinds of session map to one feature file ({', '.join(stems)}): "
                        "rename an input")
    outputs: dict[str, str] = {}
    tags: set[str] = set()
    for feature, stem in zip(features, stems, strict=True):
        info = gherkin.FeatureInfo(scored.sources[feature.kind], bundle.card.name,
                                   bundle.card.version, g, date)
        text = gherkin.render(feature, info)
        pickles = gherkin.check(text)
        if len(pickles) != sum(max(len(flow.examples), 1)
                               for flow in feature.common + feature.anomalous):
            raise ValueError(f"{stem}.feature holds an unexpected number of test cases")
        tags.update(tag["name"].removeprefix("@") for pickle in pickles for tag in pickle["tags"])
        outputs[f"{stem}.feature"] = text
        outputs[f"test_{stem}.py"] = skeleton.feature_module(f"{stem}.feature")
        if config.json:
            document = {"format": 1, "source": info.source,
                        "model": {"name": info.model, "version": info.version, "g": g},
                        "generated": date.isoformat(), **feature.to_json()}
            outputs[f"{stem}.json"] = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    outputs["conftest.py"] = skeleton.conftest(tags)
    config.out.mkdir(parents=True, exist_ok=True)
    for name, text in outputs.items():
        (config.out / name).write_text(text, encoding="utf-8")
    return ScenariosReport(bundle.card.name, bundle.card.version, g, config.out, features,
                           tuple(config.out / name for name in outputs))

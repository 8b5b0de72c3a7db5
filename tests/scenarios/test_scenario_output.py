"""``logminer scenarios`` end to end on the shipped bundle: the golden feature, determinism, the
no-raw invariant, JSON, key sequences and the options.

Raw HDFS lines are Loghub's or rendered from Loghub HDFS line shapes (https://github.com/logpai/
loghub; research or academic use only, see ``tests/testdata/scenarios/LICENSE-LOGHUB.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from gherkin import Parser
from support import TEST_HASH_SECRET, TESTDATA

from sidecar.redact import RedactionSettings, corpus
from sidecar.scenarios import commands
from sidecar.scenarios.gherkin import check
from sidecar.scoring.datasets import DataError, SessionSource
from sidecar.templates import MinerSettings

DATA = TESTDATA / "scenarios"
SMALL = DATA / "hdfs_small.log"
GOLDEN = DATA / "hdfs_small.feature"
SAMPLE = TESTDATA / "bundles" / "hdfs_sample"


def files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir())}


def test_golden_feature_for_a_small_fixed_input(scenarios):
    """Regenerate with LOGMINER_UPDATE_GOLDEN=1 after an intended change, and review the diff."""
    report = scenarios(logs=(SMALL,))
    text = (report.out / "hdfs_small.feature").read_text(encoding="utf-8")
    if os.environ.get("LOGMINER_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")
    (feature,) = report.features
    assert (feature.sessions, feature.normal, len(feature.common), len(feature.anomalous)) == \
        (9, 5, 1, 3)
    assert len(check(text)) == 4 + 2 + 1 + 1  # outline rows + anomalous outline rows + 2


def test_the_same_input_gives_the_same_files(scenarios):
    first = scenarios("one", logs=(SMALL, DATA / "hdfs_slice.log.gz"), json=True)
    second = scenarios("two", logs=(SMALL, DATA / "hdfs_slice.log.gz"), json=True)
    assert set(files(first.out)) == {"conftest.py", "hdfs_slice.feature", "hdfs_slice.json",
                                     "hdfs_small.feature", "hdfs_small.json",
                                     "test_hdfs_slice.py", "test_hdfs_small.py"}
    assert files(first.out) == files(second.out)
    other = scenarios("other", logs=(SMALL,), hash_secret=b"another secret, 16+ bytes")
    assert files(other.out)["hdfs_small.feature"] != files(first.out)["hdfs_small.feature"]


HDFS = {
    5: "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block {b} src: /{ip}:54106 "
       "dest: /{ip}:50010",
    22: "081109 203518 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: "
        "/user/{email}/job.jar. {b}",
    11: "081109 203519 145 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block {b} "
        "terminating",
    9: "081109 203519 145 INFO dfs.DataNode$PacketResponder: Received block {b} of size 91178 "
       "from /{ip}",
    26: "081109 203519 29 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap "
        "updated: {ip}:50010 is added to {b} size 91178",
}
FLOW = [5, 5, 22, 5, 11, 9, 11, 9, 11, 9, 26, 26, 26]


def test_planted_values_never_reach_the_output(scenarios, tmp_path):
    """Normal sessions carry planted addresses and e-mails in their values; each anomalous
    session carries a corpus line with planted values of every type (each line shape twice,
    so examples tables of tokens are built from them too)."""
    lines = corpus.generate(2 * len(corpus.TEMPLATES), seed=11)
    emails = [p.value for line in lines for p in line.planted if p.type == "EMAIL"]
    addresses = [p.value for line in lines for p in line.planted if p.type == "IPV4"]
    rows = []
    for i in range(12):
        values = {"b": f"blk_{i}", "ip": addresses[i], "email": emails[i]}
        rows += [HDFS[key].format(**values) for key in FLOW]
    for i, line in enumerate(lines):
        values = {"b": f"blk_{100 + i}", "ip": addresses[i % len(addresses)],
                  "email": emails[i % len(emails)]}
        rows += [HDFS[key].format(**values) for key in FLOW[:3]]
        rows.append(f"{line.text} blk_{100 + i}")
    log = tmp_path / "bank.log"
    log.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = scenarios(logs=(log,), json=True)
    (feature,) = report.features
    assert feature.normal == 12 and feature.flagged == len(lines)
    assert any(flow.parameters for flow in feature.anomalous)
    output = "\n".join(files(report.out).values())
    planted = {p.value for line in lines for p in line.planted}
    assert not [value for value in planted if value in output]
    assert "<EMAIL:" in output and "<IPV4:" in output and "<CARD:" in output


def test_json_holds_the_same_flows_as_the_feature(scenarios):
    report = scenarios(logs=(SMALL,), json=True)
    document = json.loads((report.out / "hdfs_small.json").read_text(encoding="utf-8"))
    feature = Parser().parse((report.out / "hdfs_small.feature").read_text(encoding="utf-8"))
    assert document["model"] == {"name": "hdfs", "version": 1, "g": 5}
    assert document["sessions"] == {"total": 9, "normal": 5, "flagged": 4, "events": 105}
    scenarios_ = [child["scenario"] for child in feature["feature"]["children"]
                  if "scenario" in child]
    flows = document["common"]["flows"] + document["anomalous"]
    assert len(scenarios_) == len(flows) == 4
    for scenario, flow in zip(scenarios_, flows, strict=True):
        steps = [step["text"] for step in scenario["steps"]]
        assert [f'the system logs "{step["text"]}"' for step in flow["steps"]] == [
            text for text in steps if text.startswith("the system logs")]
        table = [[cell["value"] for cell in row["cells"]]
                 for examples in scenario["examples"]
                 for row in [examples["tableHeader"], *examples["tableBody"]]]
        assert table == ([flow["parameters"], *flow["examples"]] if flow["parameters"] else [])
    assert [f["coverage"] for f in document["common"]["flows"]] == [0.8]
    assert {"name": "@coverage-80pct"} in [{"name": t["name"]} for t in scenarios_[0]["tags"]]
    ends = [f for f in document["anomalous"] if f["seen"] is None]
    assert len(ends) == 1 and ends[0]["sessions"] == 2 and ends[0]["diverged_at_step"] == 3
    assert [f["unknown_template"] for f in document["anomalous"]] == [False, True, False]


def test_key_sequences_become_features_per_file(scenarios):
    report = scenarios(model=TESTDATA / "bundles" / "tiny",
                       sessions=(SessionSource(SAMPLE / "normal.txt"),
                                 SessionSource(SAMPLE / "abnormal.txt")))
    normal, abnormal = sorted(report.features, key=lambda f: f.kind, reverse=True)
    assert normal.flagged < 5 and normal.covered >= 0.6 * normal.normal
    assert abnormal.normal < 5 and len(abnormal.anomalous) == 20
    text = (report.out / "normal.feature").read_text(encoding="utf-8")
    assert 'When the system logs "<*> Receiving block <*> src: <*> dest: <*>"' in text
    assert "And the last 2 steps repeat one or more times" in text
    assert "Scenario Outline" not in text  # key sequences carry no values


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_options(parser)
    return parser.parse_args(["--model", str(TESTDATA / "bundles" / "tiny"), *argv])


def test_options_map_to_the_config(tmp_path):
    args = parse("--sessions", str(SAMPLE / "normal.txt"), "--out", str(tmp_path / "o"),
                 "--format", "json", "--min-support", "3", "--max-scenarios", "2",
                 "--max-examples", "1", "--coverage", "0.5", "--date", "2026-01-02")
    report = commands.run_scenarios(args, RedactionSettings(), MinerSettings(), None)
    (feature,) = report.features
    assert len(feature.common) == 2 and all(f.sessions >= 3 for f in feature.common)
    assert len(feature.anomalous) <= 2
    assert "generated 2026-01-02" in (tmp_path / "o" / "normal.feature").read_text()
    assert (tmp_path / "o" / "normal.json").exists()
    assert "normal.feature" in report.table()
    with pytest.raises(SystemExit):
        parse("--sessions", "a", "--logs", "b", "--out", str(tmp_path))


def test_unusable_input_is_refused_with_a_clear_error(tmp_path):
    def run(*argv: str, secret: bytes | None = None) -> str:
        with pytest.raises(DataError) as caught:
            commands.run_scenarios(parse(*argv, "--out", str(tmp_path / "o")),
                                   RedactionSettings(), MinerSettings(), secret)
        return str(caught.value)

    assert "LOGMINER_HASH_SECRET" in run("--logs", str(SMALL))
    assert "--templates" in run("--logs", str(SMALL), "--templates", str(SMALL),
                                secret=TEST_HASH_SECRET.encode())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "no sessions" in run("--sessions", str(empty))
    assert not (tmp_path / "o").exists()

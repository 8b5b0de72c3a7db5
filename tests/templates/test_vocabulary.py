"""Tests for mapping live miner templates onto a model bundle's template keys."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from sidecar.templates import TemplateMiner, VocabularyMap

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HDFS_TEMPLATES = DATA / "hdfs_deeplog_split" / "HDFS_templates.csv"
HDFS_LOG = DATA / "hdfs_raw_labelled" / "HDFS_20000.log"
HDFS_LABELS = DATA / "hdfs_raw_labelled" / "HDFS_20000.line_labels.csv"
HDFS_HEADER = re.compile(r"\d+ \d+ \d+ \w+ \S+: ")  # <Date> <Time> <Pid> <Level> <Component>:

BUNDLE = {
    3: "Receiving block <*> src: <*> dest: <*>",
    5: "<*>PacketResponder <*> for block <*> terminating<*>",
    7: "<*> terminating",
    9: "Failed password for <*> from <*> port <*> ssh2",
    11: "state changed to  Active",
}


@pytest.mark.parametrize(
    ("miner_template", "key"),
    [
        ("Receiving block blk_<*> src: <*> dest: <*>", 3),  # bundle <*> takes a partial token
        ("Receiving block <*> src: <*> dest: <*>", 3),
        ("PacketResponder <*> for block blk_<*> terminating", 5),  # most specific of 5 and 7
        ("worker <*> terminating", 7),
        ("Failed password for root from <*> port <*> ssh2", 9),  # not generalised yet
        ("Failed password for <EMAIL> from <*> port <*> ssh2", 9),  # typed variable
        ("state changed to Active", 11),  # whitespace runs are normalised
        ("Receiving block <*> src: <*> via: <*>", None),  # a bundle literal is missing
        ("Failed <*> for root from <*> port <*> ssh2", None),  # miner variable vs literal
        ("state changed to Inactive", None),
    ],
)
def test_key_for_is_wildcard_aware(miner_template: str, key: int | None) -> None:
    assert VocabularyMap(BUNDLE).key_for(miner_template) == key


def test_identical_texts_map_to_the_lowest_key_and_answers_are_cached() -> None:
    vocabulary = VocabularyMap({4: "a <*> b", 2: "a <*> b"}, cache_size=1)
    assert vocabulary.key_for("a <*> b") == 2
    assert vocabulary.key_for("a x b") == 2
    assert vocabulary.key_for("a x b") == 2


def test_empty_bundle_knows_nothing() -> None:
    assert VocabularyMap({}).key_for("anything <*>") is None


def test_regex_metacharacters_in_bundle_templates_are_literal() -> None:
    vocabulary = VocabularyMap({1: "size (<*>) [ok] a.b*"})
    assert vocabulary.key_for("size (<*>) [ok] a.b*") == 1
    assert vocabulary.key_for("size (<*>) [ok] aXb*") is None


@pytest.mark.skipif(
    not (HDFS_TEMPLATES.is_file() and HDFS_LOG.is_file()), reason="shared HDFS data absent"
)
def test_hdfs_miner_templates_map_to_the_loghub_event_of_every_line() -> None:
    with open(HDFS_TEMPLATES, newline="", encoding="utf-8") as handle:
        bundle = {int(row["EventId"][1:]): row["EventTemplate"] for row in csv.DictReader(handle)}
    with open(HDFS_LABELS, newline="", encoding="utf-8") as handle:
        expected = [int(row["event_id"][1:]) for row in csv.DictReader(handle)]
    with open(HDFS_LOG, encoding="utf-8") as handle:
        contents = [HDFS_HEADER.sub("", line.rstrip("\n"), count=1) for line in handle]
    vocabulary = VocabularyMap(bundle)
    miner = TemplateMiner()
    online = [vocabulary.key_for(result.template) for result in miner.add_batch(contents)]
    final = [vocabulary.key_for(miner.match(c).template) for c in contents]  # type: ignore[union-attr]
    assert len(contents) == len(expected) == 20_000
    agreement = sum(k == e for k, e in zip(online, expected, strict=True)) / len(expected)
    final_agreement = sum(k == e for k, e in zip(final, expected, strict=True)) / len(expected)
    assert (agreement, final_agreement) == (1.0, 1.0)

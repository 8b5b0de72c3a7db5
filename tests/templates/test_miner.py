"""Tests for the template miner: masking, grouping, stable ids, fast path, bounds."""

from __future__ import annotations

import csv
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.templates import (
    OVERFLOW,
    MaskPattern,
    MatchResult,
    MinerSettings,
    TemplateMiner,
)

LOGHUB_2K = Path(__file__).resolve().parents[3] / "shared" / "data" / "loghub_2k"


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        ("Receiving block blk_-160899 src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
         "Receiving block blk_<*> src: /<*> dest: /<*>"),
        ("took 12.5 sec to complete, size 4 KB", "took <*> to complete, size <*>"),
        ("flags=0x1f mask 0XAB", "flags=<*> mask <*>"),
        ("id de9231d at 2017-05-16 00:00:00.008", "id <*> at <*> <*>"),
        ("connection at Thu Jul  7 10:23:11 2005 from x", "connection at <*> from x"),
        ("ret:true force=false ws=null", "ret:<*> force=<*> ws=<*>"),
        ("index:-3 offset -7 range 1-9", "index:<*> offset <*> range <*>"),
        ("job_20081109_0001 attempt_2017_m_4", "job_<*>_<*> attempt_<*>_m_<*>"),
    ],
)
def test_mask_replaces_variables(body: str, shape: str) -> None:
    assert TemplateMiner().mask(body) == shape


@pytest.mark.parametrize(
    "body", ["SOCKS5 over HTTP", "u0 ssh2 x86 e820x", "Mondays truely nullable falsehood"]
)
def test_mask_keeps_words_that_merely_contain_digits_or_keywords(body: str) -> None:
    assert TemplateMiner().mask(body) == body


def test_redaction_tokens_render_as_their_type_and_never_leak() -> None:
    miner = TemplateMiner()
    first = miner.add("login <EMAIL:3fa2:9c1d4e8b7a6f5e21> from <IP:00ab:0123456789abcdef>")
    second = miner.add("login <EMAIL:3fa2:aaaaaaaaaaaaaaaa> from <IP:00ab:bbbbbbbbbbbbbbbb>")
    assert first.template == "login <EMAIL> from <IP>"
    assert second.template_id == first.template_id
    assert not any("3fa2" in text for text in miner.templates().values())


def test_different_redaction_types_at_one_position_generalise() -> None:
    miner = TemplateMiner()
    miner.add("sent receipt to <EMAIL:3fa2:9c1d4e8b7a6f5e21> today")
    result = miner.add("sent receipt to <PHONE:3fa2:9c1d4e8b7a6f5e21> today")
    assert result.template == "sent receipt to <*> today"


def test_ids_start_at_one_and_new_templates_are_flagged() -> None:
    miner = TemplateMiner()
    assert miner.add("disk full on volume sda") == MatchResult(1, "disk full on volume sda", True)
    assert miner.add("disk full on volume sda") == MatchResult(1, "disk full on volume sda", False)
    assert miner.add("service started").template_id == 2
    assert len(miner) == 2


def test_template_keeps_its_id_when_it_generalises() -> None:
    miner = TemplateMiner()
    first = miner.add("Accepted key for alice from host-a port 22")
    widened = miner.add("Accepted key for alice from host-b port 22")
    assert widened.template_id == first.template_id
    assert widened.template == "Accepted key for alice from <*> port <*>"
    assert miner.templates() == {first.template_id: widened.template}


def test_cached_shape_follows_its_template_after_generalisation() -> None:
    miner = TemplateMiner()
    original = miner.add("cache flushed by worker-a in zone one")
    assert miner.add("cache flushed by worker-a in zone one").template_id == original.template_id
    miner.add("cache flushed by worker-b in zone one")
    again = miner.add("cache flushed by worker-a in zone one")  # served by the fast path
    assert again == MatchResult(original.template_id, "cache flushed by <*> in zone one", False)


def test_word_against_word_keeps_events_apart_until_enough_values() -> None:
    miner = TemplateMiner(MinerSettings(word_values=4))
    active = miner.add("Location icon now in state Active")
    inactive = miner.add("Location icon now in state Inactive")
    assert active.template_id != inactive.template_id
    users = [miner.add(f"Failed password for {user} from <*> port <*> ssh2").template_id
             for user in ("root", "admin", "guest")]
    assert len(set(users)) == 3
    fourth = miner.add("Failed password for oracle from <*> port <*> ssh2")
    assert fourth.template_id == users[0]
    assert fourth.template == "Failed password for <*> from <*> port <*> ssh2"
    assert miner.add("Failed password for admin from <*> port <*> ssh2").template_id == users[0]
    assert users[1] not in miner.templates() and users[2] not in miner.templates()
    assert miner.stats.retired == 2


def test_older_template_that_comes_to_cover_a_younger_one_retires_it() -> None:
    miner = TemplateMiner()
    first = miner.add("p q a.x b.x c.x d.x e.x")
    younger = miner.add("p q a.y b.y c.y d.x e.x")  # 4 of 7 equal: below the threshold
    assert miner.add("p q a.y b.y c.y d.x e.x") == MatchResult(younger.template_id,
                                                                younger.template, False)
    miner.add("p q a.z b.z c.x d.x e.x")
    widened = miner.add("p q a.w b.w c.w d.x e.x")
    assert widened == MatchResult(first.template_id, "p q <*> <*> <*> d.x e.x", False)
    assert miner.add("p q a.y b.y c.y d.x e.x").template_id == first.template_id
    assert younger.template_id not in miner.templates()
    assert miner.state().templates[0].count == 6 and miner.stats.retired == 1


def test_retired_template_counts_move_to_the_survivor() -> None:
    miner = TemplateMiner(MinerSettings(word_values=2))
    miner.add_batch(["job state Running"] * 3 + ["job state Pending"] * 2)
    (survivor,) = miner.state().templates
    assert (survivor.template, survivor.count) == ("job state <*>", 5)


def test_non_word_differences_generalise_at_once() -> None:
    miner = TemplateMiner()
    a = miner.add("open stream s-a.b for reading")
    b = miner.add("open stream s-c.d for reading")
    assert a.template_id == b.template_id


def test_dissimilar_lines_of_equal_length_stay_apart() -> None:
    miner = TemplateMiner()
    a = miner.add("node joined the cluster quickly")
    b = miner.add("node left without any notice")
    assert a.template_id != b.template_id


def test_match_does_not_learn() -> None:
    miner = TemplateMiner()
    learned = miner.add("worker 1 finished task 7")
    assert miner.match("worker 2 finished task 9") == MatchResult(1, learned.template, False)
    assert miner.match("completely different line here") is None
    assert miner.match("worker 3 finished job 9 0") is None
    assert len(miner) == 1 and miner.stats.created == 1


def test_match_reports_the_template_add_would_widen_without_widening_it() -> None:
    miner = TemplateMiner()
    learned = miner.add("request served by host.a in time")
    assert miner.match("request served by host.b in time") == MatchResult(1, learned.template,
                                                                          False)
    assert miner.templates() == {1: "request served by host.a in time"}


def test_overflow_maps_to_the_closest_template_or_the_overflow_id() -> None:
    miner = TemplateMiner(MinerSettings(max_templates=2))
    miner.add("alpha beta gamma")
    miner.add("one two three four five six")
    closest = miner.add("one two alpha beta gamma delta")  # template 2's leaf, not similar
    assert closest == MatchResult(2, "one two three four five six", False)
    assert miner.add("a line of a length never seen") == OVERFLOW
    assert miner.add("alpha beta gamma").template_id == 1
    assert len(miner) == 2 and miner.stats.overflowed == 2


def test_extra_masks_run_before_the_builtin_ones() -> None:
    mask = MaskPattern(name="order", pattern=r"ORD-[A-Z]{3}-\d+")
    miner = TemplateMiner(MinerSettings(extra_masks=(mask,)))
    assert miner.mask("shipped ORD-ABC-12 and ORD-XYZ-9") == "shipped <*> and <*>"


@pytest.mark.parametrize(
    "changes",
    [
        {"depth": 2},
        {"similarity_threshold": 1.5},
        {"word_values": 1},
        {"max_templates": 0},
        {"extra_masks": [MaskPattern(pattern="x")]},
    ],
)
def test_settings_reject_out_of_range_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MinerSettings(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["(?<=a)b", "x*", "("])
def test_mask_pattern_rejects_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        MaskPattern(name="bad", pattern=pattern)


def test_every_setting_is_documented() -> None:
    for cls in (MinerSettings, MaskPattern):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize(
    "body",
    [
        "1." * 40_000 + "x",
        "a" * 80_000 + "1g",
        "0x" * 40_000,
        "-1" * 40_000 + "q",
        "Mon " + " " * 80_000 + "Jul",
        "<A:" * 30_000,
        "1:" * 40_000 + " KB" * 10_000,
    ],
)
def test_masking_adversarial_input_completes(body: str) -> None:
    miner = TemplateMiner()
    result = miner.add(body)
    assert miner.match(body) == MatchResult(result.template_id, result.template, False)


# Few prefixes and lengths and a small alphabet of words and non-words, so that templates
# share tree leaves, generalise, overlap, retire each other and get cached in every order.
TOKENS = st.sampled_from(["alpha", "beta", "gamma", "a.x", "b.y", "7"])
LINES = st.builds(
    "{} {}".format, st.sampled_from(["svc op", "svc 9", "job"]),
    st.lists(TOKENS, min_size=1, max_size=3).map(" ".join),
)
RETIRE_THEN_REPEAT = ["svc op alpha a.x", "svc op beta a.x", "svc op gamma a.x", "svc op beta a.x"]


@settings(max_examples=150, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=80))
@example(RETIRE_THEN_REPEAT)
def test_fast_path_gives_the_same_answers_as_no_cache(lines: list[str]) -> None:
    eager = MinerSettings(word_values=3, similarity_threshold=0.5)  # merges often
    cached = TemplateMiner(eager)
    uncached = TemplateMiner(dataclasses.replace(eager, cache_size=1))
    assert cached.add_batch(lines) == uncached.add_batch(lines)
    assert cached.templates() == uncached.templates()


@settings(max_examples=60, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=60))
def test_after_learning_every_line_matches_a_live_template_covering_it(lines: list[str]) -> None:
    miner = TemplateMiner()
    miner.add_batch(lines)
    for line in lines:
        result = miner.match(line)
        assert result is not None and result.template_id in miner.templates()
        assert result == miner.add(line)


def _grouping_accuracy(predicted: list[int], truth: list[str]) -> float:
    predicted_groups: dict[int, set[int]] = defaultdict(set)
    truth_groups: dict[str, set[int]] = defaultdict(set)
    for line, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        predicted_groups[p].add(line)
        truth_groups[t].add(line)
    correct = sum(predicted_groups[p] == truth_groups[t] for p, t in zip(predicted, truth,
                                                                          strict=True))
    return correct / len(truth)


@pytest.mark.skipif(not LOGHUB_2K.is_dir(), reason="shared Loghub 2k data not present")
def test_default_settings_group_loghub_systems_accurately() -> None:
    accuracies = []
    for system_dir in sorted(LOGHUB_2K.iterdir()):
        name = system_dir.name
        with open(system_dir / f"{name}_2k.log_structured_corrected.csv", newline="",
                  encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        miner = TemplateMiner()
        miner.add_batch([row["Content"] for row in rows])
        predicted = [miner.match(row["Content"]).template_id for row in rows]  # type: ignore[union-attr]
        accuracies.append(_grouping_accuracy(predicted, [row["EventId"] for row in rows]))
    assert len(accuracies) == 16
    assert sum(accuracies) / len(accuracies) >= 0.9


def test_only_the_first_max_line_chars_are_mined():
    miner = TemplateMiner(MinerSettings(max_line_chars=64))
    first = miner.add("job started " + "x" * 5000)
    second = miner.add("job started " + "y" * 5000)
    assert len(first.template) == len(second.template) == 64
    assert miner.match("job started " + "x" * 9000) == miner.match("job started " + "x" * 52)

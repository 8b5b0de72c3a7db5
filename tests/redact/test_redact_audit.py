"""The seeded corpus and the audit over it: full recall, few false positives, counts only."""

from __future__ import annotations

import pytest

from sidecar.redact import DetectorSwitches, RedactionSettings, corpus
from sidecar.redact.audit import AuditReport, run_audit, score


def test_corpus_is_deterministic_per_seed():
    assert corpus.generate(100, seed=4) == corpus.generate(100, seed=4)
    assert corpus.generate(100, seed=4) != corpus.generate(100, seed=5)


def test_corpus_plants_every_type_and_decoy_kind():
    lines = corpus.generate(len(corpus.TEMPLATES), seed=0)
    planted = {item.type for line in lines for item in line.planted}
    decoys = {item.kind for line in lines for item in line.decoys}
    assert planted == {type_ for type_, _ in corpus.PLANTED.values()}
    assert decoys == set(corpus.DECOYS)
    for line in lines:
        for item in (*line.planted, *line.decoys):
            assert item.value in line.text


@pytest.mark.parametrize("seed", [0, 1])
def test_audit_finds_every_planted_value_and_spares_decoys(seed):
    report = run_audit(lines=3000, seed=seed)
    assert report.passed, report.render()
    for type_ in report.planted:
        assert report.recall(type_) == 1.0
    assert report.false_positive_rate() < 0.01
    assert report.lines_per_second > 0


def test_audit_fails_when_a_detector_is_off():
    settings = RedactionSettings(detectors=DetectorSwitches(iban=False))
    report = run_audit(settings, lines=len(corpus.TEMPLATES) * 3, seed=3)
    assert not report.passed
    assert report.recall("IBAN") == 0.0
    assert "FAIL" in report.render()


def test_report_renders_counts_only():
    lines = corpus.generate(len(corpus.TEMPLATES), seed=9)
    report = run_audit(lines=len(lines), seed=9)
    text = report.render()
    for type_ in report.planted:
        assert type_ in text
    for kind in report.decoys:
        assert kind in text
    assert "PASS" in text
    for line in lines:
        for item in line.planted:
            assert item.value not in text


def test_report_arithmetic():
    from collections import Counter

    report = AuditReport(
        lines=10,
        seconds=2.0,
        planted=Counter({"EMAIL": 4}),
        survived=Counter({"EMAIL": 1}),
        decoys=Counter({"uuid": 50, "order": 50}),
        decoys_hit=Counter({"uuid": 1}),
    )
    assert report.lines_per_second == 5.0
    assert report.recall("EMAIL") == 0.75 and report.recall("CARD") == 1.0
    assert report.false_positive_rate("uuid") == 0.02
    assert report.false_positive_rate() == 0.01
    assert not report.passed


def test_score_judges_any_callable_on_the_audit_terms():
    sample = corpus.generate(len(corpus.TEMPLATES), seed=2)
    untouched = score(lambda text: text, sample)
    assert untouched.lines == len(sample)
    assert all(untouched.recall(type_) == 0.0 for type_ in untouched.planted)
    assert untouched.false_positive_rate() == 0.0
    wiped = score(lambda text: "", sample, clock=lambda: 0.0)
    assert wiped.passed and wiped.false_positive_rate() == 1.0
    assert wiped.seconds == 0.0 and wiped.planted == untouched.planted

"""Hourly aggregates (sidecar/aggregates.py): what is counted, clipping, bounds, queries,
crash-safe persistence, and that loader errors never quote a count."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.aggregates import (
    AGGREGATES_FILE,
    HOUR_SECONDS,
    OTHER_TEMPLATE,
    AggregateCounts,
    AggregatesError,
    AggregateSettings,
    Breakdown,
    Cell,
    Measure,
    clip_redactions,
    measures_for,
)
from sidecar.record import Batch, Flag, Record
from sidecar.stages import ALERT_TAG

T0 = 1_700_000_000 // HOUR_SECONDS * HOUR_SECONDS  # the start of a UTC hour


class Clock:
    """A settable clock in Unix seconds."""

    def __init__(self, now: float = T0 + 10):
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(template_id: int | None = 1, *, anomaly: bool = False, template: str = "t <*>",
           **redactions: int) -> Record:
    r = Record(body="sanitized", template_id=template_id,
               template=template if template_id is not None else None,
               redactions=Counter(redactions))
    if anomaly:
        r.flags.add(Flag.ANOMALY)
    return r


def cells(counts: AggregateCounts, *group_by: Breakdown) -> set[Cell]:
    return set(counts.query(None, None, group_by).cells)


def test_aggregates_count_records_anomalies_redactions_and_templates() -> None:
    counts = AggregateCounts(AggregateSettings(), clock=Clock())
    counts.observe(Batch([record(1, EMAIL=2), record(1, anomaly=True, IBAN=1),
                          record(2, template="other <*>", EMAIL=1)]))
    assert cells(counts, Breakdown.DETECTOR, Breakdown.TEMPLATE) == {
        Cell(Measure.RECORDS, None, None, 3), Cell(Measure.ANOMALIES, None, None, 1),
        Cell(Measure.REDACTIONS, None, "EMAIL", 3), Cell(Measure.REDACTIONS, None, "IBAN", 1),
        Cell(Measure.TEMPLATE_RECORDS, None, "1", 2),
        Cell(Measure.TEMPLATE_RECORDS, None, "2", 1)}
    assert counts.query(None, None, [Breakdown.TEMPLATE]).template_texts == {
        "1": "t <*>", "2": "other <*>"}


def test_aggregates_skip_session_alert_records_but_not_senders_using_the_tag() -> None:
    counts = AggregateCounts(AggregateSettings(), clock=Clock())
    alert = Record(body="session ended early after: x", tag=ALERT_TAG, flags={Flag.ANOMALY})
    spoofed = record(5)
    spoofed.tag = ALERT_TAG  # a sender's record: it was mined, so it has a template id
    counts.observe(Batch([alert, spoofed]))
    assert cells(counts) == {Cell(Measure.RECORDS, None, None, 1),
                             Cell(Measure.ANOMALIES, None, None, 0)}


def test_aggregates_clip_each_records_redactions_in_total() -> None:
    counts = AggregateCounts(AggregateSettings(redaction_clip=3), clock=Clock())
    counts.observe(Batch([record(EMAIL=10, IBAN=5, PHONE=1), record(EMAIL=2)]))
    redactions = {c.key: c.count for c in cells(counts, Breakdown.DETECTOR)
                  if c.measure is Measure.REDACTIONS}
    # 10:5:1 of 3 -> shares 1, 0, 0 plus the two largest remainders (EMAIL 30%16, IBAN 15%16).
    assert redactions == {"EMAIL": 2 + 2, "IBAN": 1}


def test_clip_redactions_examples() -> None:
    assert clip_redactions({"A": 2, "B": 1, "C": 0}, 10) == {"A": 2, "B": 1}
    assert clip_redactions({"A": 5, "B": 5}, 3) == {"A": 2, "B": 1}  # tie: by name
    assert clip_redactions({"A": 100}, 10) == {"A": 10}


@given(st.dictionaries(st.text("ABCDEFGH", min_size=1, max_size=3),
                       st.integers(min_value=0, max_value=10_000), max_size=12),
       st.integers(min_value=1, max_value=50))
def test_clip_redactions_bounds_the_total_and_never_adds(counts: dict[str, int],
                                                         clip: int) -> None:
    clipped = clip_redactions(counts, clip)
    total = sum(counts.values())
    assert sum(clipped.values()) == min(total, clip)
    assert all(0 < n <= counts[name] for name, n in clipped.items())
    if total > clip:  # proportional: no type is more than one unit off its exact share
        assert all(abs(clipped.get(name, 0) - n * clip / total) < 1
                   for name, n in counts.items())


def test_aggregates_bucket_by_the_sidecars_utc_hour_and_fill_every_hour() -> None:
    clock = Clock()
    counts = AggregateCounts(AggregateSettings(), clock=clock)
    counts.observe(Batch([record(), record()]))
    clock.now += 2 * HOUR_SECONDS
    counts.observe(Batch([record(anomaly=True)]))
    result = counts.query(T0 - HOUR_SECONDS, None, [Breakdown.HOUR])
    assert (result.since, result.until) == (T0 - HOUR_SECONDS, T0 + 3 * HOUR_SECONDS)
    by_hour = {(c.measure, c.hour): c.count for c in result.cells}
    assert by_hour == {
        (Measure.RECORDS, T0 - HOUR_SECONDS): 0, (Measure.ANOMALIES, T0 - HOUR_SECONDS): 0,
        (Measure.RECORDS, T0): 2, (Measure.ANOMALIES, T0): 0,
        (Measure.RECORDS, T0 + HOUR_SECONDS): 0, (Measure.ANOMALIES, T0 + HOUR_SECONDS): 0,
        (Measure.RECORDS, T0 + 2 * HOUR_SECONDS): 1,
        (Measure.ANOMALIES, T0 + 2 * HOUR_SECONDS): 1}


def test_aggregates_window_widens_to_whole_hours_and_refuses_empty_ranges() -> None:
    clock = Clock(T0 + 5 * HOUR_SECONDS + 1)
    counts = AggregateCounts(AggregateSettings(retention_hours=24), clock=clock)
    assert counts.window(T0 + 1, T0 + HOUR_SECONDS + 1) == range(
        T0 // HOUR_SECONDS, T0 // HOUR_SECONDS + 2)
    assert counts.window(None, None) == range(T0 // HOUR_SECONDS - 18, T0 // HOUR_SECONDS + 6)
    for since, until in ((T0 + 9 * HOUR_SECONDS, None), (None, T0 - 30 * HOUR_SECONDS),
                         (T0 + HOUR_SECONDS, T0 + HOUR_SECONDS)):
        with pytest.raises(ValueError, match="none of the retained hours"):
            counts.query(since, until, [])


def test_aggregates_drop_hours_past_retention_and_forget_their_templates() -> None:
    clock = Clock()
    counts = AggregateCounts(AggregateSettings(retention_hours=2), clock=clock)
    counts.observe(Batch([record(1)]))
    clock.now += HOUR_SECONDS
    counts.observe(Batch([record(2, template="two")]))
    clock.now += HOUR_SECONDS
    result = counts.query(None, None, [Breakdown.TEMPLATE])
    assert {c.key for c in result.cells if c.key} == {"2"}
    assert result.template_texts == {"2": "two"}


def test_aggregates_track_at_most_max_templates_and_count_the_rest_as_other() -> None:
    clock = Clock()
    counts = AggregateCounts(AggregateSettings(max_templates=2, retention_hours=1),
                             clock=clock)
    counts.observe(Batch([record(1), record(2), record(3), record(1), record(None)]))
    templates = {c.key: c.count for c in cells(counts, Breakdown.TEMPLATE) if c.key}
    assert templates == {"1": 2, "2": 1, OTHER_TEMPLATE: 2}
    clock.now += HOUR_SECONDS  # the old hour expires: room for new ids again
    counts.observe(Batch([record(3, template="three")]))
    assert {c.key: c.count for c in cells(counts, Breakdown.TEMPLATE) if c.key} == {"3": 1}


def test_measures_for_adds_keyed_measures_only_when_asked() -> None:
    assert measures_for([]) == (Measure.RECORDS, Measure.ANOMALIES)
    assert measures_for([Breakdown.HOUR, Breakdown.TEMPLATE, Breakdown.DETECTOR]) == (
        Measure.RECORDS, Measure.ANOMALIES, Measure.REDACTIONS, Measure.TEMPLATE_RECORDS)


# --------------------------------------------------------------------------- persistence


def test_aggregates_survive_a_restart(tmp_path: Path) -> None:
    path, clock = tmp_path / AGGREGATES_FILE, Clock()
    first = AggregateCounts(AggregateSettings(), path, clock=clock)
    first.observe(Batch([record(7, template="kept", EMAIL=2), record(anomaly=True)]))
    first.close()
    again = AggregateCounts(AggregateSettings(), path, clock=clock)
    group_by = (Breakdown.HOUR, Breakdown.TEMPLATE, Breakdown.DETECTOR)
    assert again.query(None, None, group_by) == first.query(None, None, group_by)


def test_aggregates_save_on_the_interval_from_the_pipeline_stage(tmp_path: Path) -> None:
    path = tmp_path / "data" / AGGREGATES_FILE
    counts = AggregateCounts(AggregateSettings(save_interval_seconds=3600), path, clock=Clock())
    counts.process(Batch([record()]))
    assert not path.exists()
    eager = AggregateCounts(AggregateSettings(save_interval_seconds=0), path, clock=Clock())
    eager.process(Batch([record(), record()]))
    assert json.loads(path.read_text())["hours"][str(T0 // HOUR_SECONDS)]["records"] == 2


def test_aggregates_failed_save_leaves_the_previous_file_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, clock = tmp_path / AGGREGATES_FILE, Clock()
    counts = AggregateCounts(AggregateSettings(), path, clock=clock)
    counts.observe(Batch([record()]))
    counts.save()
    before = path.read_bytes()
    counts.observe(Batch([record()]))

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        counts.save()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [AGGREGATES_FILE]  # no temp file left


def test_aggregates_read_gives_a_snapshot_that_never_writes(tmp_path: Path) -> None:
    path, clock = tmp_path / AGGREGATES_FILE, Clock()
    with pytest.raises(AggregatesError, match="no aggregates yet"):
        AggregateCounts.read(path, AggregateSettings(), clock=clock)
    writer = AggregateCounts(AggregateSettings(), path, clock=clock)
    writer.observe(Batch([record()]))
    writer.close()
    before = path.read_bytes()
    snapshot = AggregateCounts.read(path, AggregateSettings(), clock=clock)
    snapshot.observe(Batch([record()]))
    snapshot.close()
    assert path.read_bytes() == before
    assert Cell(Measure.RECORDS, None, None, 2) in cells(snapshot)


@pytest.mark.parametrize("mangle", [
    lambda doc: doc["hours"]["HOUR"].update(records=-7919),
    lambda doc: doc["hours"]["HOUR"].update(records="7919"),
    lambda doc: doc["hours"]["HOUR"]["redactions"].update(EMAIL=[7919]),
    lambda doc: doc["hours"].update({"x7919": doc["hours"]["HOUR"]}),
    lambda doc: doc.update(version=7919),
    lambda doc: doc.pop("templates"),
])
def test_aggregates_corrupt_file_is_refused_without_quoting_a_count(
        tmp_path: Path, mangle) -> None:
    path, clock = tmp_path / AGGREGATES_FILE, Clock()
    counts = AggregateCounts(AggregateSettings(), path, clock=clock)
    counts.observe(Batch([record()]))
    counts.close()
    document = json.loads(path.read_text())
    hour = str(T0 // HOUR_SECONDS)
    document["hours"]["HOUR"] = document["hours"].pop(hour)
    mangle(document)
    document["hours"][hour] = document["hours"].pop("HOUR")
    path.write_text(json.dumps(document))
    with pytest.raises(AggregatesError) as caught:
        AggregateCounts(AggregateSettings(), path, clock=clock)
    assert "7919" not in str(caught.value)


def test_aggregates_refuse_a_file_kept_under_another_clip(tmp_path: Path) -> None:
    path = tmp_path / AGGREGATES_FILE
    counts = AggregateCounts(AggregateSettings(redaction_clip=10), path, clock=Clock())
    counts.observe(Batch([record()]))
    counts.close()
    with pytest.raises(AggregatesError, match="redaction_clip"):
        AggregateCounts(AggregateSettings(redaction_clip=5), path, clock=Clock())
    (tmp_path / "bad.json").write_bytes(b"\xff{")
    with pytest.raises(AggregatesError, match="cannot read"):
        AggregateCounts(AggregateSettings(), tmp_path / "bad.json", clock=Clock())

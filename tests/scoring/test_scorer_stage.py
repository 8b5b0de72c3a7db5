"""The scoring stage: records in, template/session/score/flags out, session-end alerts, shadow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.record import Batch, Flag, Record
from sidecar.scoring.runner import SessionModel
from sidecar.scoring.scorer import Scorer, ScoringSettings


def test_records_carry_template_session_score_and_flags(harness, tiny):
    h = harness()
    records = h.run([Record(body="E5 Receiving blk_7"), Record(body="E22 allocate blk_7"),
                     Record(body="E5 Receiving blk_8")])
    first, second, third = records
    assert first.template == tiny.vocab.templates[5] and first.template_id == 1
    assert second.template == tiny.vocab.templates[22] and second.template_id == 2
    assert [r.session for r in records] == ["blk_7", "blk_7", "blk_8"]
    assert first.flags == {Flag.UNSEEN_TEMPLATE} and Flag.UNSEEN_TEMPLATE not in third.flags
    assert all(isinstance(r.score, float) and r.score > 0 for r in records)
    assert first.score == third.score  # both the first record of a session
    assert h.metric("logminer_scoring_records_total") == 3
    assert h.metric("logminer_scoring_unseen_templates_total") == 2
    assert h.metric("logminer_scoring_sessions_live") == 2


def test_the_stage_flags_what_the_session_model_flags(harness, tiny, stand_in_records,
                                                      normal_sessions, abnormal_sessions):
    sessions = normal_sessions[:60] + abnormal_sessions[:60]
    records = harness().run(stand_in_records(sessions))
    model = SessionModel(tiny, tiny.card.scoring.g, max_sessions=len(records))
    keys = [int(r.body.split()[0][1:]) for r in records]
    assigned = model.table.assign([r.session for r in records], now=0.0)
    expected = model.step(assigned.slots, np.array(keys))
    assert [Flag.ANOMALY in r.flags for r in records] == expected.anomalous.tolist()
    assert [r.score for r in records] == pytest.approx(expected.scores.tolist())
    assert 0 < sum(Flag.ANOMALY in r.flags for r in records) < len(records)


def test_a_template_the_bundle_does_not_know_is_an_anomaly(harness):
    h = harness()
    record = h.run([Record(body="E99 something new blk_1")])[0]
    assert record.flags == {Flag.ANOMALY, Flag.UNSEEN_TEMPLATE}
    assert h.metric("logminer_scoring_unknown_keys_total") == 1
    assert h.metric("logminer_scoring_anomalies_total", kind="record") == 1


def test_close_all_alerts_on_sessions_that_stopped_early(harness, tiny, stand_in_records,
                                                        normal_sessions):
    h = harness()
    complete = normal_sessions[0]
    records = stand_in_records([complete, [5, 22]])
    h.run(records)
    assert h.alerts == []
    h.scorer.close_all()
    assert len(h.alerts) == 1
    alert = h.alerts[0]
    assert (alert.session, alert.reason, alert.model, alert.model_version) == (
        "blk_1", "close", "tiny", 1)
    assert alert.template == tiny.vocab.templates[22] and alert.score > 0
    assert h.metric("logminer_scoring_sessions_ended_total", reason="close") == 2
    assert h.metric("logminer_scoring_anomalies_total", kind="session_end") == 1
    assert h.metric("logminer_scoring_sessions_live") == 0


def test_idle_sessions_end_after_the_timeout(harness, clock):
    h = harness(idle_timeout_seconds=10.0)
    h.run([Record(body="E5 a blk_1"), Record(body="E22 b blk_1")])
    clock.now += 5
    h.run([Record(body="E5 c blk_2")])
    clock.now += 6  # blk_1 idle for 11 s, blk_2 for 6 s
    h.scorer.process(Batch([]))
    assert [a.session for a in h.alerts] == ["blk_1"] and h.alerts[0].reason == "idle"
    assert h.metric("logminer_scoring_sessions_ended_total", reason="idle") == 1
    assert h.metric("logminer_scoring_sessions_evicted_total", reason="idle") == 1
    assert h.metric("logminer_scoring_sessions_live") == 1


def test_the_card_idle_timeout_applies_by_default(harness, clock, tiny):
    h = harness()
    h.run([Record(body="E5 a blk_1")])
    clock.now += tiny.card.scoring.idle_timeout_seconds + 1
    h.scorer.expire_idle()
    assert [a.reason for a in h.alerts] == ["idle"]


def test_an_end_marker_ends_the_session_at_its_record(harness, normal_sessions):
    h = harness(end_marker=r"\bEND\b")
    complete = normal_sessions[0]
    records = [Record(body=f"E{k} x blk_1") for k in complete]
    records[-1].body += " END"
    records += [Record(body="E5 again blk_1"), Record(body="E22 again blk_1 END")]
    h.run(records, batch=7)
    assert h.metric("logminer_scoring_sessions_ended_total", reason="end_marker") == 2
    assert [a.session for a in h.alerts] == ["blk_1"]  # only the two-record session is short
    assert records[-2].score == records[0].score  # blk_1 started over after its end
    assert h.metric("logminer_scoring_sessions_live") == 0


def test_the_lru_bound_holds_and_counts_evictions(harness, stand_in_records, normal_sessions):
    h = harness(max_sessions=8)
    records = h.run(stand_in_records(normal_sessions[:40]), batch=100)  # chunks of 8 records
    assert all(r.score is not None and r.template is not None for r in records)
    assert h.metric("logminer_scoring_sessions_live") == 8
    evicted = h.metric("logminer_scoring_sessions_evicted_total", reason="lru")
    assert evicted >= 32


def test_session_key_and_g_settings_override_the_card(harness):
    by_stream = harness(session_key="stream", g=30)
    records = by_stream.run([Record(body="E5 a blk_1", tag="t", attributes={"host": "h"}),
                             Record(body="E26 b blk_2", tag="t", attributes={"host": "h"})])
    assert [r.session for r in records] == ["t@h", "t@h"]
    assert not any(Flag.ANOMALY in r.flags for r in records)  # g=30: all but unknown pass


def test_settings_follow_the_config_conventions():
    for field in dataclasses.fields(ScoringSettings):
        assert field.metadata.get("doc"), field.name
        assert field.default is not dataclasses.MISSING, field.name
    with pytest.raises(ValueError, match="scoring: session key"):
        ScoringSettings(session_key="trace")
    with pytest.raises(ValueError, match="scoring: pattern"):
        ScoringSettings(end_marker="(")


def test_an_identical_shadow_agrees_on_everything(harness, tiny_dir, stand_in_records,
                                                  normal_sessions, abnormal_sessions):
    h = harness(shadow_dir=str(tiny_dir))
    h.run(stand_in_records(normal_sessions[:30] + abnormal_sessions[:30]))
    h.scorer.close_all()
    records = sum(len(s) for s in normal_sessions[:30] + abnormal_sessions[:30])
    assert h.metric("logminer_scoring_shadow_agreements_total", kind="record") == records
    assert h.metric("logminer_scoring_shadow_agreements_total", kind="session_end") == 60
    assert h.metric("logminer_scoring_shadow_disagreements_total", kind="record") == 0
    assert h.scorer.shadow_bundle is not None


def test_a_different_shadow_is_measured_but_never_flags(harness, make_bundle, stand_in_records,
                                                        normal_sessions, abnormal_sessions):
    sessions = normal_sessions[:30] + abnormal_sessions[:30]
    strict = make_bundle("strict", card={"scoring": {"g": 1}, "version": 2})
    plain = harness().run(stand_in_records(sessions))
    h = harness(shadow_dir=str(strict))
    shadowed = h.run(stand_in_records(sessions))
    assert [r.flags for r in shadowed] == [r.flags for r in plain]
    assert h.metric("logminer_scoring_shadow_disagreements_total", kind="record") > 0
    assert h.metric("logminer_scoring_model_info", role="shadow", name="tiny", version="2",
                    sha256=h.scorer.shadow_bundle.card.sha256["model.tflite"]) == 1


def test_a_missing_shadow_is_counted_and_scoring_goes_on(harness, tmp_path):
    h = harness(shadow_dir=str(tmp_path / "nowhere"))
    assert h.scorer.shadow_bundle is None
    assert h.metric("logminer_scoring_model_loads_total", role="shadow", result="refused") == 1
    assert h.run([Record(body="E5 a blk_1")])[0].score is not None


def test_with_the_real_miner_and_vocabulary(tiny, tiny_dir, clock, interleaved, normal_sessions,
                                           abnormal_sessions):
    from sidecar.templates import TemplateMiner, VocabularyMap

    sessions = normal_sessions[:50] + abnormal_sessions[:50]
    blocks = [f"blk_{-(7 ** 19) + i * 7919}" for i in range(len(sessions))]
    records = [Record(body=HDFS_LINES[sessions[i][t]].format(blk=blocks[i], n=n % 97), tag="hdfs")
               for n, (i, t) in enumerate(interleaved(sessions))]
    registry = CollectorRegistry()
    alerts = []
    scorer = Scorer(ScoringSettings(model_dir=str(tiny_dir)), TemplateMiner(), VocabularyMap,
                    registry, on_alert=alerts.append, clock=clock)
    for first in range(0, len(records), 256):
        scorer.process(Batch(records[first:first + 256]))
    scorer.close_all()
    assert all(r.template_id and r.template and r.score is not None for r in records)
    assert {r.session for r in records} == set(blocks)
    assert registry.get_sample_value("logminer_scoring_unknown_keys_total") <= len(records) / 100
    flagged = {r.session for r in records if Flag.ANOMALY in r.flags} | {a.session for a in alerts}
    assert sum(b in flagged for b in blocks[50:]) >= 45  # abnormal sessions caught
    assert sum(b in flagged for b in blocks[:50]) <= 3  # normal sessions pass


# One HDFS DataNode/NameNode message per DeepLog key (key 17 = E29), in Loghub's formats.
HDFS_LINES = {
    1: "10.250.1.{n}:50010:Adding an already existing block {blk}",
    2: "Verification succeeded for {blk}",
    3: "10.250.1.{n}:50010 Served block {blk} to /10.250.2.{n}",
    4: "10.250.1.{n}:50010:Got exception while serving {blk} to /10.250.2.{n}:",
    5: "Receiving block {blk} src: /10.250.1.{n}:54106 dest: /10.250.2.{n}:50010",
    6: "Received block {blk} src: /10.250.1.{n}:54106 dest: /10.250.2.{n}:50010 of size 6710{n}",
    7: "writeBlock {blk} received exception java.io.IOException: Connection reset by peer",
    8: "PacketResponder {n} for block {blk} Interrupted.",
    9: "Received block {blk} of size 6710{n} from /10.250.1.{n}",
    10: "PacketResponder {blk} {n} Exception java.io.EOFException",
    11: "PacketResponder {n} for block {blk} terminating",
    12: "10.250.1.{n}:50010:Exception writing block {blk} to mirror 10.250.2.{n}:50010",
    13: "Receiving empty packet for block {blk}",
    14: "Exception in receiveBlock for block {blk} java.io.IOException: Connection reset by peer",
    15: "Changing block file offset of block {blk} from {n} to 10{n} meta file offset to 8{n}",
    16: "10.250.1.{n}:50010:Transmitted block {blk} to /10.250.2.{n}:50010",
    17: "PendingReplicationMonitor timed out block {blk}",
    18: "10.250.1.{n}:50010 Starting thread to transfer block {blk} to 10.250.2.{n}:50010",
    19: "Reopen Block {blk}",
    20: "Unexpected error trying to delete block {blk}. BlockInfo not found in volumeMap.",
    21: "Deleting block {blk} file /mnt/hadoop/dfs/data/current/subdir{n}/{blk}",
    22: "BLOCK* NameSystem.allocateBlock: /user/root/rand/_temporary/part-00{n}. {blk}",
    23: "BLOCK* NameSystem.delete: {blk} is added to invalidSet of 10.250.1.{n}:50010",
    24: "BLOCK* Removing block {blk} from neededReplications as it does not belong to any file.",
    25: "BLOCK* ask 10.250.1.{n}:50010 to replicate {blk} to datanode(s) 10.250.2.{n}:50010",
    26: "BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.250.1.{n}:50010 is added to "
        "{blk} size 6710{n}",
    27: "BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for {blk} "
        "on 10.250.1.{n}:50010 size 6710{n}",
    28: "BLOCK* NameSystem.addStoredBlock: addStoredBlock request received for {blk} on "
        "10.250.1.{n}:50010 size 6710{n} But it does not belong to any file.",
}

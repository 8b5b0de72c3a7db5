"""Reading training/evaluation data: formats, template tables, vocabulary, splits, checks.

The HDFS lines below are Loghub HDFS log lines (https://github.com/logpai/loghub, via
salesforce/logai ``HDFS_5k.log`` / ``HDFS_20000.log``); Loghub data is for research or
academic use only, see ``tests/testdata/bundles/hdfs_sample/LICENSE-LOGHUB.txt``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.redact import RedactionSettings, Redactor
from sidecar.scoring.bundle import load_bundle
from sidecar.scoring.datasets import (
    DataError,
    DataSpec,
    SessionSource,
    Vocabulary,
    check_training_data,
    direct_keys,
    key_distribution,
    load_training_data,
    parse_key_map,
    read_labels,
    read_log_records,
    read_sessions,
    read_templates,
    session_ref,
    session_texts,
    split_part,
)
from sidecar.templates import TemplateMiner, VocabularyMap

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "hdfs"

TEMPLATES_CSV = """EventId,EventTemplate
E1,<*>Opened session for <*>
E2,<*>Closed session for <*>
E3,<*>Read block <*> of <*>
E4,<*>Checksum failed for <*>
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- formats


def test_deeplog_lines_get_line_ids_and_trailing_spaces_are_ignored(tmp_path):
    path = write(tmp_path / "train", "5 5 22 \n22 5\n\n9 ")
    sessions = read_sessions(SessionSource(path))
    assert [(s.id, s.events) for s in sessions] == [
        ("#1", ("5", "5", "22")), ("#2", ("22", "5")), ("#4", ("9",))]


def test_ait_lines_carry_their_session_id(tmp_path):
    path = write(tmp_path / "abnormal", "blk_-1,5 22 11\nblk_7,22\n")
    sessions = read_sessions(SessionSource(path))
    assert [(s.id, s.events) for s in sessions] == [("blk_-1", ("5", "22", "11")),
                                                    ("blk_7", ("22",))]


def test_csv_rows_are_selected_by_column_values(tmp_path):
    path = write(tmp_path / "sessions.csv",
                 "BlockId,Label,split,EventSequence\r\n"
                 "blk_1,Normal,train,E5 E22\r\nblk_2,Anomaly,train,E5\r\n"
                 "blk_3,Normal,test,E22 E5 E5\r\n")
    source = SessionSource.parse(f"{path}?split=train&Label=Normal")
    assert source.where == (("split", "train"), ("Label", "Normal"))
    assert [(s.id, s.events) for s in read_sessions(source)] == [("blk_1", ("E5", "E22"))]
    assert len(read_sessions(SessionSource(path))) == 3


def test_gzipped_session_files_are_read(tmp_path):
    path = tmp_path / "train.gz"
    path.write_bytes(gzip.compress(b"1 2 3\n"))
    assert read_sessions(SessionSource(path))[0].events == ("1", "2", "3")


@pytest.mark.parametrize("text, message", [
    ("{csv}?Nope=1", "Nope"),
    ("{plain}?Label=Normal", "needs a CSV"),
    ("{plain}?Label", "column=value"),
])
def test_bad_selections_are_refused_with_the_reason(tmp_path, text, message):
    csv_path = write(tmp_path / "s.csv", "BlockId,Label,EventSequence\nblk_1,Normal,E5\n")
    plain = write(tmp_path / "plain", "1 2\n")
    with pytest.raises(DataError, match=message):
        read_sessions(SessionSource.parse(text.format(csv=csv_path, plain=plain)))


def test_csv_without_a_sequence_column_is_refused(tmp_path):
    path = write(tmp_path / "s.csv", "BlockId,Label\nblk_1,Normal\n")
    with pytest.raises(DataError, match="no sequence column"):
        read_sessions(SessionSource(path))


def test_labels_accept_words_and_digits_and_refuse_contradictions(tmp_path):
    path = write(tmp_path / "labels.csv", "BlockId,Label\nblk_1,Normal\nblk_2,Anomaly\n"
                                          "blk_3,0\nblk_4,1\nblk_1,Normal\n")
    assert read_labels(path) == {"blk_1": False, "blk_2": True, "blk_3": False, "blk_4": True}
    write(path, "BlockId,Label\nblk_1,Normal\nblk_1,Anomaly\n")
    with pytest.raises(DataError, match="two labels"):
        read_labels(path)
    write(path, "BlockId,Label\nblk_1,maybe\n")
    with pytest.raises(DataError, match=":2:"):
        read_labels(path)


def test_json_lines_records_put_the_message_in_the_body(tmp_path):
    path = write(tmp_path / "app.jsonl",
                 '{"message": "user logged in", "user": "u1"}\n\n{"log": "x", "n": 1}\n')
    records = list(read_log_records(path))
    assert [(r.body, r.attributes, r.tag) for r in records] == [
        ("user logged in", {"user": "u1"}, "app.jsonl"), ("x", {"n": 1}, "app.jsonl")]
    write(path, '["not", "an", "object"]\n')
    with pytest.raises(DataError, match=":1: not a JSON object"):
        list(read_log_records(path))


# --------------------------------------------------------------------------- templates, keys


def test_template_ids_match_by_number_and_through_the_key_map(tmp_path):
    table = read_templates(write(tmp_path / "t.csv", TEMPLATES_CSV))
    assert table.text_of("E3", {}) == "<*>Read block <*> of <*>"
    assert table.text_of("3", {}) == "<*>Read block <*> of <*>"
    assert table.text_of("7", {"7": "E4"}) == "<*>Checksum failed for <*>"
    assert table.text_of("9", {}) is None


def test_plain_template_files_are_keyed_by_line_number(tmp_path):
    table = read_templates(write(tmp_path / "t.txt", "first <*>\n\nthird\n"))
    assert table.ids == ("1", "3") and table.text_of("3", {}) == "third"


def test_duplicated_template_ids_are_refused(tmp_path):
    with pytest.raises(DataError, match="duplicated"):
        read_templates(write(tmp_path / "t.csv", TEMPLATES_CSV + "E2,again\n"))


def test_vocabulary_layout_follows_the_bundle_contract():
    vocab = Vocabulary(("a <*>", "b", "c"))
    assert (vocab.start_key, vocab.end_key, vocab.size) == (4, 5, 6)
    assert vocab.to_json() == {"format": 1, "templates": {"1": "a <*>", "2": "b", "3": "c"},
                               "unknown_key": 0, "start_key": 4, "end_key": 5,
                               "vocab_size": 6}
    assert vocab.encode(["b", None, "zzz", "a <*>"]).tolist() == [2, 0, 0, 1]
    assert Vocabulary.from_templates({1: "a <*>", 2: "b", 3: "c"}) == vocab


def test_sessions_map_to_texts_strictly_for_training(tmp_path):
    table = read_templates(write(tmp_path / "t.csv", TEMPLATES_CSV))
    sessions = read_sessions(SessionSource(write(tmp_path / "s", "1 2\n1 9\n")))
    texts = session_texts(sessions, table, {}, strict=False)
    assert texts[1] == ("<*>Opened session for <*>", None)
    with pytest.raises(DataError, match=r"session #2: event '9' has no template"):
        session_texts(sessions, table, {}, strict=True)


def test_direct_keys_read_events_as_bundle_keys(tmp_path):
    sessions = read_sessions(SessionSource(write(tmp_path / "s", "1 E2 3 x 7\n")))
    assert direct_keys(sessions, Vocabulary(("a", "b", "c"))).pop().tolist() == [1, 2, 3, 0, 0]


def test_key_map_items_are_parsed_and_checked():
    assert parse_key_map(["17=E29", " 5 = E5 "]) == {"17": "E29", "5": "E5"}
    with pytest.raises(DataError, match="TOKEN=EVENT_ID"):
        parse_key_map(["17"])


# --------------------------------------------------------------------------- splits, checks


def test_split_is_a_deterministic_function_of_seed_and_id():
    ids = [f"blk_{i}" for i in range(20_000)]
    parts = [split_part(i, 3, 0.1, 0.2) for i in ids]
    assert parts == [split_part(i, 3, 0.1, 0.2) for i in ids]
    shares = {p: parts.count(p) / len(ids) for p in ("validation", "test", "train")}
    assert abs(shares["validation"] - 0.1) < 0.01 and abs(shares["test"] - 0.2) < 0.01
    assert parts != [split_part(i, 4, 0.1, 0.2) for i in ids]


def test_line_ids_are_qualified_by_their_file():
    assert session_ref("abc", "#3") == "abc:#3"
    assert session_ref("abc", "blk_1") == "blk_1"


def test_too_little_data_is_refused_with_a_clear_message():
    with pytest.raises(DataError, match="too little training data: 2 sessions with 4 events"):
        check_training_data([np.array([1, 2]), np.array([2, 1])], min_sessions=10,
                            min_events=1, where="x")
    with pytest.raises(DataError, match="1 distinct template"):
        check_training_data([np.array([3, 3])] * 20, min_sessions=10, min_events=10, where="x")


def test_distribution_lists_every_template_key():
    vocab = Vocabulary(("a", "b", "c"))
    assert key_distribution([np.array([1, 1, 3]), np.array([1])], vocab) == {
        "1": 0.75, "2": 0.0, "3": 0.25}


# --------------------------------------------------------------------------- training data


def synthetic_files(tmp_path: Path, sessions: int = 200) -> DataSpec:
    rng = np.random.default_rng(0)
    normal = [" ".join(["1", *(["3"] * int(rng.integers(1, 5))), "2"]) for _ in range(sessions)]
    write(tmp_path / "normal", "".join(f"s{i},{line}\n" for i, line in enumerate(normal)))
    write(tmp_path / "abnormal", "".join(f"a{i},1 4\n" for i in range(100)))
    return DataSpec(sessions=(SessionSource(tmp_path / "normal"),),
                    templates=write(tmp_path / "t.csv", TEMPLATES_CSV),
                    validation_abnormal=(SessionSource(tmp_path / "abnormal"),),
                    validation_fraction=0.2, test_fraction=0.1)


def test_training_data_is_split_three_ways_and_remembers_what_it_used(tmp_path):
    data = load_training_data(synthetic_files(tmp_path))
    assert len(data.train) + len(data.validation_normal) < 200  # the test part is held out
    assert 20 <= len(data.validation_normal) <= 60
    assert 10 <= len(data.validation_abnormal) <= 35
    assert len(data.seen) == len(data.train) + len(data.validation_normal) + len(
        data.validation_abnormal)
    assert all(s[0] == 1 and s[-1] == 2 for s in data.train)
    roles = [(d["role"], d["sessions"]) for d in data.data]
    assert roles == [("train", 200), ("validation_abnormal", 100), ("templates", 0)]
    sequences, labels = data.validation(data.vocab)
    assert labels.sum() == len(data.validation_abnormal) and len(sequences) == len(labels)


def test_data_spec_round_trips_through_the_card_and_notices_changed_files(tmp_path):
    spec = synthetic_files(tmp_path)
    data = load_training_data(spec)
    training = {"data": data.data, "seed": 0, "validation_fraction": 0.2,
                "test_fraction": 0.1, "key_map": {}}
    rebuilt = load_training_data(DataSpec.from_card(training, "stream"))
    assert rebuilt.seen == data.seen
    assert [s.tolist() for s in rebuilt.train] == [s.tolist() for s in data.train]
    write(tmp_path / "normal", "s0,1 2\n")
    with pytest.raises(DataError, match="changed since training"):
        DataSpec.from_card(training, "stream")


def test_session_files_need_a_template_table(tmp_path):
    spec = synthetic_files(tmp_path)
    with pytest.raises(DataError, match="template table"):
        load_training_data(DataSpec(sessions=spec.sessions))


def test_small_training_files_are_refused_before_any_training(tmp_path):
    spec = synthetic_files(tmp_path, sessions=6)
    with pytest.raises(DataError, match="too little training data"):
        load_training_data(spec)


# --------------------------------------------------------------------------- raw logs

#: One raw line per HDFS event type found in the Loghub samples, with its Loghub event id.
HDFS_LINES = [
    ("E2", "081109 203552 13 INFO dfs.DataBlockScanner: Verification succeeded for "
           "blk_-9073992586687739851"),
    ("E3", "081109 203523 148 INFO dfs.DataNode$DataXceiver: 10.250.11.100:50010 Served block "
           "blk_-3544583377289625738 to /10.250.19.102"),
    ("E4", "081109 213850 2511 WARN dfs.DataNode$DataXceiver: 10.250.15.240:50010:Got "
           "exception while serving blk_-1477913034248457629 to /10.250.19.16:"),
    ("E5", "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block "
           "blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010"),
    ("E6", "081109 203521 143 INFO dfs.DataNode$DataXceiver: Received block "
           "blk_-1608999687919862906 src: /10.251.215.16:52002 dest: /10.251.215.16:50010 of "
           "size 91178"),
    ("E7", "081109 203633 147 INFO dfs.DataNode$DataXceiver: writeBlock "
           "blk_-3102267849859399193 received exception java.net.SocketTimeoutException"),
    ("E9", "081109 203519 145 INFO dfs.DataNode$PacketResponder: Received block "
           "blk_-1608999687919862906 of size 91178 from /10.250.10.6"),
    ("E10", "081109 203634 190 INFO dfs.DataNode$PacketResponder: PacketResponder "
            "blk_-3102267849859399193 2 Exception java.io.EOFException"),
    ("E11", "081109 203519 145 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
            "blk_-1608999687919862906 terminating"),
    ("E14", "081109 204731 148 INFO dfs.DataNode$BlockReceiver: Exception in receiveBlock for "
            "block blk_-3102267849859399193 java.io.IOException: Connection reset by peer"),
    ("E16", "081109 203521 147 INFO dfs.DataNode$DataTransfer: 10.250.14.224:50010:Transmitted "
            "block blk_-1608999687919862906 to /10.251.215.16:50010"),
    ("E18", "081109 203521 19 INFO dfs.DataNode: 10.250.14.224:50010 Starting thread to "
            "transfer block blk_-1608999687919862906 to 10.251.215.16:50010, "
            "10.251.71.193:50010"),
    ("E20", "081109 213838 19 WARN dfs.FSDataset: Unexpected error trying to delete block "
            "blk_-3544583377289625738. BlockInfo not found in volumeMap."),
    ("E21", "081109 213810 19 INFO dfs.FSDataset: Deleting block blk_-1608999687919862906 file "
            "/mnt/hadoop/dfs/data/current/blk_-1608999687919862906"),
    ("E22", "081109 203518 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: "
            "/mnt/hadoop/mapred/system/job_200811092030_0001/job.jar. blk_-1608999687919862906"),
    ("E23", "081109 213809 32 INFO dfs.FSNamesystem: BLOCK* NameSystem.delete: "
            "blk_-1608999687919862906 is added to invalidSet of 10.250.10.6:50010"),
    ("E25", "081109 203521 19 INFO dfs.FSNamesystem: BLOCK* ask 10.250.14.224:50010 to "
            "replicate blk_-1608999687919862906 to datanode(s) 10.251.215.16:50010 "
            "10.251.71.193:50010"),
    ("E26", "081109 203519 29 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: "
            "blockMap updated: 10.250.10.6:50010 is added to blk_-1608999687919862906 size "
            "91178"),
    ("E28", "081110 104628 27 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: "
            "addStoredBlock request received for blk_-8531310335568756456 on "
            "10.251.106.10:50010 size 67108864 But it does not belong to any file."),
]


def test_shipped_vocabulary_matches_redacted_mined_hdfs_lines_to_their_events():
    """A bundle trained on key sequences scores raw lines: each raw HDFS line, redacted and
    mined as the sidecar does, maps to the bundle key of its own Loghub event."""
    templates = load_bundle(SHIPPED).vocab.templates
    keys = VocabularyMap(templates)
    redactor, miner = Redactor(RedactionSettings(), b"k" * 32), TemplateMiner()
    for event, line in HDFS_LINES:
        sanitized, _ = redactor.redact_text(line)
        assert "10.250" not in sanitized
        assert keys.key_for(miner.add(sanitized).template) == int(event[1:]), line


def test_logs_become_sessions_of_final_templates(tmp_path):
    lines = [f"081109 2035{i % 60:02d} {i} INFO app: user {i} opened session blk_{i % 50}"
             for i in range(200)]
    lines += [f"081109 2036{i % 60:02d} {i} INFO app: read 4 KB for blk_{i % 50}"
              for i in range(200)]
    log = write(tmp_path / "app.log", "\n".join(lines) + "\n")
    labels = write(tmp_path / "labels.csv", "id,label\nblk_3,Anomaly\n")
    data = load_training_data(DataSpec(logs=(log,), labels=labels,
                                       session_key=r"regex:blk_\d+", validation_fraction=0.2))
    assert len(data.vocab.templates) == 2
    assert all("<*>" in t for t in data.vocab.templates)
    assert sorted(len(s) for s in data.train)[0] == 8
    assert len(data.train) + len(data.validation_normal) == 49  # blk_3 is labelled anomalous
    assert [(d["role"], d["sessions"]) for d in data.data] == [("logs", 50), ("labels", 1)]


def test_log_rows_of_jsonl_files_use_attributes_for_sessions(tmp_path):
    steps = ("opened file {}", "read {} bytes", "closed file {}")
    rows = [{"message": steps[i % 3].format(i), "trace": f"t{i // 3}"} for i in range(300)]
    log = write(tmp_path / "app.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = load_training_data(DataSpec(logs=(log,), session_key="attr:trace",
                                       validation_fraction=0.2))
    assert len(data.train) + len(data.validation_normal) == 100
    assert len(data.vocab.templates) == 3 and {len(s) for s in data.train} == {3}

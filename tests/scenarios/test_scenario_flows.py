"""Flow mining without a model: loop collapsing, the choice of common flows, anomalous flows,
parameters and examples, and reading wildcard values from sanitized bodies."""

from __future__ import annotations

import pytest

from sidecar.scenarios.flows import FlowSettings, Segment, collapse, mine
from sidecar.scenarios.sessions import Divergence, Event, ScoredSession
from sidecar.scenarios.wildcards import ValueReader, count, fill, spaced


def normal(*templates: str, kind: str = "app") -> ScoredSession:
    return ScoredSession(kind, tuple(Event(t) for t in templates), None)


def flagged(templates: str, position: int, expected: tuple[str, ...] = ("E",),
            unknown: bool = False) -> ScoredSession:
    return ScoredSession("app", tuple(Event(t) for t in templates.split()),
                         Divergence(position, expected, unknown))


def texts(flow) -> list[tuple[str, int]]:
    return [(step.text, step.repeat) for step in flow.steps]


# --------------------------------------------------------------------------- loops


@pytest.mark.parametrize(("keys", "expected"), [
    ("3 3 3 3", [Segment(0, 1, 4)]),
    ("5 5 22 5 11 9 11 9 11 9 26 26 26",
     [Segment(0, 1, 2), Segment(2, 1, 1), Segment(3, 1, 1), Segment(4, 2, 3), Segment(10, 1, 3)]),
    ("1 2 3 1 2 3 4", [Segment(0, 3, 2), Segment(6, 1, 1)]),
    ("1 2 1 3", [Segment(i, 1, 1) for i in range(4)]),
    ("1 2 3 4 5 1 2 3 4 5", [Segment(i, 1, 1) for i in range(10)]),  # longer than MAX_LOOP
    ("", []),
])
def test_loops_collapse_into_the_shortest_repeating_block(keys, expected):
    assert collapse(keys.split()) == expected


def test_sessions_that_differ_only_in_repetitions_share_a_flow():
    sessions = [normal("a", "b", "b", "c", "d", "c", "d", "e"),
                normal("a", "b", "b", "b", "c", "d", "c", "d", "c", "d", "e"),
                normal("a", "b", "c", "d", "e")]
    (feature,) = mine(sessions, FlowSettings(min_support=1))
    first = feature.common[0]
    assert first.sessions == 2
    assert texts(first) == [("a", 0), ("b", 1), ("c", 0), ("d", 2), ("e", 0)]
    assert texts(feature.common[1]) == [(t, 0) for t in "abcde"]  # no loop: its own flow


# --------------------------------------------------------------------------- common flows


def test_common_flows_are_taken_by_support_until_the_coverage_target():
    sessions = ([normal("x", "y")] * 5 + [normal("a", "b")] * 3 + [normal("b", "a")] * 3
                + [normal("z")] * 2 + [normal("q")])
    flows = lambda **kw: mine(sessions, FlowSettings(**kw))[0]  # noqa: E731
    feature = flows(coverage=0.7)
    assert [texts(f)[0][0] for f in feature.common] == ["x", "a", "b"]  # ties: by text
    assert (feature.covered, feature.normal, feature.distinct_paths) == (11, 14, 5)
    assert [f.sessions for f in flows(coverage=0.3).common] == [5]
    assert [f.sessions for f in flows(coverage=1.0).common] == [5, 3, 3, 2]  # min support 2
    assert [f.sessions for f in flows(coverage=1.0, min_support=1).common] == [5, 3, 3, 2, 1]
    assert [f.sessions for f in flows(coverage=1.0, max_scenarios=2).common] == [5, 3]
    assert flows(min_support=6).common == ()


def test_each_kind_is_its_own_feature():
    features = mine([normal("a", kind="web"), normal("a", kind="batch"), normal("b", kind="web")],
                    FlowSettings(min_support=1))
    assert [(f.kind, f.sessions) for f in features] == [("batch", 1), ("web", 2)]


@pytest.mark.parametrize("field", ["coverage", "min_support", "max_scenarios", "max_examples"])
def test_settings_are_checked(field):
    with pytest.raises(ValueError):
        FlowSettings(**{field: 0})


# --------------------------------------------------------------------------- anomalous flows


def test_anomalous_flows_group_by_exact_prefix_and_rejected_step():
    sessions = [flagged("a b x c", 2, ("b", "c", "E")), flagged("a b x", 2, ("b", "c", "E")),
                flagged("a b x", 2, ("c", "b", "E")), flagged("a b b x", 3),
                flagged("a b", 2, ("c",)), normal("a", "b", "c")]
    feature = mine(sessions, FlowSettings())[0]
    assert (feature.normal, feature.flagged) == (1, 5)
    first, *others = feature.anomalous
    assert first.sessions == 3 and texts(first) == [("a", 0), ("b", 0)]
    assert first.anomaly.position == 3 and first.anomaly.seen.text == "x"
    assert first.anomaly.expected == ("b", "c", "E")  # the expectation most sessions got
    assert [(f.sessions, len(f.steps)) for f in others] == [(1, 2), (1, 3)]
    ended = others[0]  # "a b" then the end, before the longer prefix "a b b"
    assert ended.anomaly.seen is None and ended.anomaly.position == 3


def test_anomalous_flows_are_capped_and_unknown_templates_marked():
    sessions = [flagged(f"a t{i}", 1, unknown=i == 0) for i in range(5)]
    feature = mine(sessions, FlowSettings(max_scenarios=3))[0]
    assert len(feature.anomalous) == 3 and feature.flagged == 5
    assert [f.anomaly.unknown for f in feature.anomalous] == [True, False, False]


# --------------------------------------------------------------------------- parameters


def test_parameters_share_columns_inline_constants_and_cap_examples():
    def session(block: str, ip: str, size: str) -> ScoredSession:
        return ScoredSession("app", (
            Event("recv <*> from <IPV4> size <*>", (block, ip, size)),
            Event("done <*> size <*>", (block, size))), None)

    sessions = ([session("b1", "<IPV4:aaaa:0000000000000001>", "64")] * 3
                + [session(f"b{i}", f"<IPV4:aaaa:000000000000000{i}>", "64") for i in range(2, 9)])
    flow = mine(sessions, FlowSettings(max_examples=4))[0].common[0]
    assert flow.parameters == ("param1", "param2")
    assert texts(flow) == [("recv <param1> from <param2> size 64", 0),
                           ("done <param1> size 64", 0)]
    assert flow.examples[0] == ("b1", "<IPV4:aaaa:0000000000000001>")  # most frequent first
    assert flow.examples[1:] == tuple((f"b{i}", f"<IPV4:aaaa:000000000000000{i}>")
                                      for i in range(2, 5))


def test_a_flow_without_readable_values_keeps_its_wildcards():
    sessions = [ScoredSession("app", (Event("open <*>", None),), None)] * 2
    flow = mine(sessions, FlowSettings())[0].common[0]
    assert texts(flow) == [("open <*>", 0)] and flow.parameters == () and flow.examples == ()


# --------------------------------------------------------------------------- wildcards


def test_values_are_read_from_the_sanitized_body():
    reader = ValueReader()
    template = "<*> INFO Receiving block blk_<*> src: /<IPV4>:<*> dest: <*>"
    body = ("081109 203518 143 INFO Receiving block blk_-16 src: /<IPV4:d341:3850091121dbc43f>"
            ":54106 dest: a b")
    assert reader.read(template, body) == ("081109 203518 143", "-16",
                                           "<IPV4:d341:3850091121dbc43f>", "54106", "a b")
    assert reader.read(template, body.replace("<IPV4:d341:3850091121dbc43f>", "10.0.0.1")) is None
    assert reader.read("<overflow>", "anything") is None
    assert count(template) == 5
    assert fill("a <*> b <EMAIL>", ["<param1>", None]) == "a <param1> b <EMAIL>"
    with pytest.raises(ValueError):
        fill("a <*>", [])
    assert spaced("<*>Receiving block<*>src:<*>") == "<*> Receiving block <*> src: <*>"

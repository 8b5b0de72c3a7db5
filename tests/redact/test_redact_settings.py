"""Redaction settings: loader conventions and validation at construction."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from sidecar.redact import (
    AllowList,
    AttributeRule,
    CustomDetector,
    DetectorSwitches,
    RedactionSettings,
)
from sidecar.redact.detectors import BUILTIN
from sidecar.redact.keyed import RULES

ALL_SETTINGS = (RedactionSettings, DetectorSwitches, CustomDetector, AllowList, AttributeRule)


@pytest.mark.parametrize("cls", ALL_SETTINGS)
def test_loader_conventions(cls):
    assert cls.__dataclass_params__.frozen
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        assert spec.default is not dataclasses.MISSING or (
            spec.default_factory is not dataclasses.MISSING
        ), spec.name
        assert spec.metadata.get("doc"), spec.name
        if hints[spec.name] is int:
            assert {"min", "max"} <= set(spec.metadata), spec.name
    cls()  # every default is valid


def test_every_switch_names_a_detector_and_back():
    switches = {spec.name for spec in dataclasses.fields(DetectorSwitches)}
    named = {detector.name for detector in BUILTIN} | {rule.name for rule in RULES}
    assert named - {"ip"} == switches  # IP addresses follow ip_mode instead


def test_bad_custom_pattern_names_the_detector():
    with pytest.raises(ValueError, match="custom detector 'ORDER_REF'"):
        CustomDetector(type="ORDER_REF", pattern="(unclosed")
    with pytest.raises(ValueError, match="custom detector 'LOOKAHEAD'"):
        CustomDetector(type="LOOKAHEAD", pattern="a(?=b)")  # not RE2 syntax


def test_custom_pattern_matching_empty_is_refused():
    with pytest.raises(ValueError, match="empty string"):
        CustomDetector(type="EMPTY", pattern="x*")


@pytest.mark.parametrize("type_", ["order", "1ST", "BAD-NAME", ""])
def test_type_names_must_be_upper_case(type_):
    with pytest.raises(ValueError, match="must match"):
        CustomDetector(type=type_, pattern="x")
    with pytest.raises(ValueError, match="must match"):
        AttributeRule(key="a", action="hash", type=type_)


def test_allow_list_patterns_are_checked():
    with pytest.raises(ValueError, match="allow-list pattern #1"):
        AllowList(patterns=("ok", "(bad"))


def test_bounds_and_empty_keys():
    with pytest.raises(ValueError, match="max_field_bytes"):
        RedactionSettings(max_field_bytes=10)
    with pytest.raises(ValueError, match="token_cache_size"):
        RedactionSettings(token_cache_size=-1)
    with pytest.raises(ValueError, match="extra_secret_keys"):
        RedactionSettings(extra_secret_keys=("ok", " "))
    with pytest.raises(ValueError, match="key glob"):
        AttributeRule(key="")


def test_enabled_lists_switched_on_detectors():
    assert "email" not in DetectorSwitches(email=False).enabled()
    assert DetectorSwitches().enabled() == {
        spec.name for spec in dataclasses.fields(DetectorSwitches)
    }

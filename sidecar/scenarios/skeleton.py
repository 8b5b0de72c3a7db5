"""A pytest-bdd skeleton for the generated features: pending step definitions, test modules.

Strategy: the features use only the phrases in `gherkin.PHRASES`, so one ``conftest.py``
with a definition per phrase (its ``parse`` pattern) binds every step of every feature.
Each definition is *pending*: it records its phrase, and after the scenario a hook skips
the test naming the pending steps, so the suite collects and runs (skipped, not failed)
until a QA engineer replaces the bodies with actions and checks on the system under test;
a step without a definition would still fail, as pytest-bdd reports it. One test module
per feature calls ``scenarios()`` on it; the features' tags are registered as marks.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from sidecar.scenarios.gherkin import PHRASES, Phrase

_IMPORTS = '''"""Step definitions for the scenarios of `logminer scenarios` (a skeleton).

Every step is pending: it records itself, and a scenario that ran pending steps ends as
skipped, naming them. Bind a step by replacing its body with an action or a check on the
system under test (the quoted sanitized line arrives as ``line``; the expected templates as
``datatable``, one per row), then drop its ``pending_steps.append``.
"""

from __future__ import annotations

import pytest
from pytest_bdd import given, parsers, then, when

'''

_HOOKS = '''

@pytest.fixture
def pending_steps() -> list[str]:
    """The steps of the running scenario that are not bound yet."""
    return []


def pytest_configure(config):
    for tag in TAGS:
        config.addinivalue_line("markers", f"{tag}: a tag of the generated scenarios")


def pytest_bdd_after_scenario(request, feature, scenario):
    pending = request.getfixturevalue("pending_steps")
    if pending:
        pytest.skip(f"pending steps: {', '.join(dict.fromkeys(pending))}")
'''


def conftest(tags: Iterable[str], phrases: Iterable[Phrase] = PHRASES) -> str:
    """The ``conftest.py`` text: the features' ``tags`` registered as pytest marks (so
    ``-m anomaly`` selects, and pytest does not warn), one pending definition per phrase."""
    definitions = []
    for phrase in phrases:
        arguments = ["pending_steps: list[str]", *(f"{name}: {kind}" for name, kind in
                                                  _fields(phrase.pattern))]
        if phrase.table:
            arguments.append("datatable: list[list[str]]")
        definitions.append(
            f"\n\n@{phrase.type}(parsers.parse({phrase.pattern!r}))\n"
            f"def {phrase.function}({', '.join(arguments)}) -> None:\n"
            f"    pending_steps.append({phrase.function!r})\n")
    marks = "".join(f"    {tag!r},\n" for tag in sorted(tags))
    return (f"{_IMPORTS}#: The tags of the features beside this file, as pytest marks.\n"
            f"TAGS = (\n{marks})\n{_HOOKS}{''.join(definitions)}")


def feature_module(feature_file: str) -> str:
    """A test module that collects the scenarios of ``feature_file`` (beside it)."""
    return (f'"""The scenarios of {feature_file}, written by `logminer scenarios`."""\n\n'
            f"from pytest_bdd import scenarios\n\nscenarios({feature_file!r})\n")


def _fields(pattern: str) -> list[tuple[str, str]]:
    """The named fields of a ``parse`` pattern and their Python types."""
    return [(name, "int" if spec == "d" else "str")
            for _, name, spec, _ in string.Formatter().parse(pattern) if name]

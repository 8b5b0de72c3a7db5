"""A small, strict parser for Fluentd's configuration format (v1 syntax), for tests.

Covers what the shipped snippets use: ``<directive arg>`` ... ``</directive>``
sections nested to any depth, ``key value`` lines, ``#`` comment lines, and
values that are bare, single-quoted or double-quoted (where Fluentd evaluates
embedded Ruby such as ``#{ENV['NAME']}``; ``env_names`` lists those names).
Stricter than Fluentd on purpose, so a sloppy snippet fails loudly: a section
must close with its own name, a key may appear once per section, parameters
are not allowed at the top level, and a ``#`` inside a bare value (Fluentd's
ambiguous inline comment) is an error.

Reference: https://docs.fluentd.org/configuration/config-file
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_OPEN = re.compile(r"<([a-z_]+)(?:\s+([^>]*?))?\s*>$")
_CLOSE = re.compile(r"</([a-z_]+)\s*>$")
_PARAM = re.compile(r"(@?[A-Za-z_][A-Za-z0-9_.]*)(?:\s+(.*))?$")
_ENV = re.compile(r"#\{ENV\['([A-Za-z_][A-Za-z0-9_]*)'\]\}")


class FluentdConfError(ValueError):
    """A line the parser refuses; the message starts with its line number."""

    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")
        self.line = line


@dataclass
class Section:
    """One ``<name arg>`` block: its parameters and nested sections, in order."""

    name: str
    arg: str = ""
    params: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    line: int = 0

    def all(self, name: str) -> list[Section]:
        """Every direct child section called ``name``."""
        return [s for s in self.sections if s.name == name]

    def one(self, name: str) -> Section:
        """The only direct child section called ``name``; AssertionError otherwise."""
        found = self.all(name)
        assert len(found) == 1, f"expected one <{name}> in <{self.name}>, found {len(found)}"
        return found[0]


def env_names(value: str) -> list[str]:
    """Environment variables a double-quoted value reads through ``#{ENV['NAME']}``."""
    return _ENV.findall(value)


def parse(text: str) -> Section:
    """Parse a whole file; the returned ROOT section holds the top-level directives."""
    root = Section("ROOT")
    stack = [root]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("</"):
            match = _CLOSE.match(line)
            if not match:
                raise FluentdConfError(number, f"malformed closing tag {line!r}")
            if len(stack) == 1 or stack[-1].name != match.group(1):
                raise FluentdConfError(number, f"</{match.group(1)}> closes <{stack[-1].name}>")
            stack.pop()
            continue
        if line.startswith("<"):
            match = _OPEN.match(line)
            if not match:
                raise FluentdConfError(number, f"malformed opening tag {line!r}")
            section = Section(match.group(1), (match.group(2) or "").strip(), line=number)
            stack[-1].sections.append(section)
            stack.append(section)
            continue
        match = _PARAM.match(line)
        if not match:
            raise FluentdConfError(number, f"not a 'key value' line: {line!r}")
        if len(stack) == 1:
            raise FluentdConfError(number, "parameters are not allowed outside a section")
        key, value = match.group(1), _value(match.group(2) or "", number)
        if key in stack[-1].params:
            raise FluentdConfError(number, f"{key} set twice in <{stack[-1].name}>")
        stack[-1].params[key] = value
    if len(stack) > 1:
        raise FluentdConfError(stack[-1].line, f"<{stack[-1].name}> is never closed")
    return root


def _value(text: str, number: int) -> str:
    """A parameter value: quotes removed (escapes kept as written), bare text as is."""
    if text[:1] in ('"', "'"):
        quote = text[0]
        if len(text) < 2 or not text.endswith(quote):
            raise FluentdConfError(number, f"unterminated {quote}-quoted value")
        return text[1:-1]
    if "#" in text:
        raise FluentdConfError(number, "'#' in a bare value (inline comments are ambiguous)")
    return text

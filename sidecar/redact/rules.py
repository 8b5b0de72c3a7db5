"""Attribute rules: which action applies to an attribute or resource key path.

Strategy: each rule's glob (``*`` any run, ``?`` one character, matched
case-insensitively against the dotted path such as ``http.request.header.cookie``) is
translated to an RE2 pattern, so hostile keys cannot cause backtracking. The first
matching rule wins, else the default action. Key paths repeat across records, so
decisions for paths up to 256 characters are cached (cleared when the cache is full).
"""

from __future__ import annotations

from collections.abc import Sequence

import re2

from sidecar.redact.settings import Action, AttributeRule

_CACHE_LIMIT = 4096
_CACHED_PATH_CHARS = 256


def glob_to_re2(glob: str) -> str:
    """RE2 pattern (case-insensitive, to be fully matched) equivalent to ``glob``."""
    parts = []
    for ch in glob:
        if ch == "*":
            parts.append("(?s:.*)")
        elif ch == "?":
            parts.append("(?s:.)")
        else:
            parts.append(re2.escape(ch))
    return "(?i)" + "".join(parts)


class AttributeRules:
    """Decides the action (and hash TYPE) for a dotted key path."""

    def __init__(self, rules: Sequence[AttributeRule], default: Action) -> None:
        self._rules = [(re2.compile(glob_to_re2(rule.key)), rule) for rule in rules]
        self._default = AttributeRule(key="*", action=default)
        self._cache: dict[str, AttributeRule] = {}

    def rule_for(self, path: str) -> AttributeRule:
        """The first rule whose glob matches ``path``, else one carrying the default action."""
        rule = self._cache.get(path)
        if rule is None:
            rule = next(
                (rule for pattern, rule in self._rules if pattern.fullmatch(path)), self._default
            )
            if len(path) <= _CACHED_PATH_CHARS:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[path] = rule
        return rule

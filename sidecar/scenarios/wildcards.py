"""Template wildcards: find them, read the values they took in a sanitized body, fill them.

Strategy: a template holds two kinds of wildcard, the miner's ``<*>`` (any text) and a
redaction type ``<TYPE>`` (a keyed token ``<TYPE:kid:tok>`` of that type). To read the
values of a body, its template becomes one anchored RE2 pattern (linear time on any
input): literal pieces escaped, whitespace runs as ``\\s+``, ``<*>`` as a lazy group that
may span words (the miner merges runs of variables into one), ``<TYPE>`` as a group that
matches only a token of that type. The values are therefore substrings of the sanitized
body: tokens, numbers, ids, never anything the redactor removed. Compiled patterns are
cached per template text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import re2

#: A wildcard in a template: the miner's ``<*>`` or a redaction type ``<TYPE>``.
WILDCARD = re.compile(r"<\*>|<[A-Z][A-Z0-9_]*>")

_ANY = "<*>"
_SPACES = re.compile(r"\s+")
_LOGHUB_WILDCARD = re.compile(r"\s*<\*>\s*")


def count(template: str) -> int:
    """The number of wildcards in ``template``."""
    return len(WILDCARD.findall(template))


def fill(template: str, fillers: Sequence[str | None]) -> str:
    """``template`` with its i-th wildcard replaced by ``fillers[i]`` (None keeps it);
    ValueError unless there is one filler per wildcard."""
    if len(fillers) != count(template):
        raise ValueError(f"{len(fillers)} fillers for {count(template)} wildcards")
    parts = iter(fillers)

    def replace(match: re.Match[str]) -> str:
        filler = next(parts)
        return match.group(0) if filler is None else filler

    return WILDCARD.sub(replace, template)


def spaced(template: str) -> str:
    """A Loghub-style template (``<*>Receiving block<*>src:<*>``) with a space either side
    of each ``<*>`` and whitespace runs as one space, as the miner writes its templates."""
    return _SPACES.sub(" ", _LOGHUB_WILDCARD.sub(f" {_ANY} ", template)).strip()


class ValueReader:
    """Reads the values a template's wildcards took in sanitized bodies."""

    def __init__(self) -> None:
        self._patterns: dict[str, re2._Regexp | None] = {}

    def read(self, template: str, body: str) -> tuple[str, ...] | None:
        """The values of ``template``'s wildcards in ``body``, in order; None if the body
        does not fit the template (e.g. the overflow template)."""
        if template not in self._patterns:
            self._patterns[template] = _compile(template)
        pattern = self._patterns[template]
        if pattern is None:
            return None
        match = pattern.fullmatch(body.strip())
        return None if match is None else tuple(match.groups())


def _compile(template: str) -> re2._Regexp | None:
    words = []
    for word in template.split():
        pieces, last = [], 0
        for match in WILDCARD.finditer(word):
            pieces.append(re2.escape(word[last:match.start()]))
            wildcard = match.group(0)
            if wildcard == _ANY:
                pieces.append("(.+?)")
            else:
                pieces.append(f"({re2.escape(wildcard[:-1])}(?::[0-9a-f]{{4}}:[0-9a-f]{{16}})?>)")
            last = match.end()
        pieces.append(re2.escape(word[last:]))
        words.append("".join(pieces))
    try:
        return re2.compile(r"\s+".join(words))
    except re2.error:
        return None

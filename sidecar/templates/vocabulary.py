"""Maps live miner templates onto the template keys of a model bundle's vocabulary.

Strategy: a bundle vocabulary holds template texts in Loghub style, where ``<*>`` stands
for any text, possibly empty and possibly several tokens (``<*>Receiving block<*>src:<*>``
is as valid as ``Receiving block <*> src: <*>``). Each bundle template becomes one
anchored RE2 pattern (literal parts escaped, whitespace runs written as one space, ``<*>``
as ``.*``) and all of them go into one RE2 set, so a single linear-time scan of a miner
template finds every bundle template it fits. Consequences: a miner variable (``<*>`` or
``<TYPE>``) is only absorbed by a bundle ``<*>``; a bundle literal must appear literally
in the miner template; a bundle ``<*>`` may also absorb literals that the miner has not
generalised yet. When several bundle templates fit, the most specific wins (most literal
characters, then the lowest key). A text identical to a bundle template maps straight to
its key. Answers are cached per miner template text (the cache is cleared when full).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import re2

_BUNDLE_WILDCARD = "<*>"
_WHITESPACE = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


class VocabularyMap:
    """Resolves miner template texts to bundle template keys (or None: unknown)."""

    def __init__(self, bundle_templates: Mapping[int, str], cache_size: int = 100_000) -> None:
        """``bundle_templates`` maps a bundle key to its template text."""
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._cache_size = cache_size
        self._cache: dict[str, int | None] = {}
        self._exact: dict[str, int] = {}
        self._keys: list[int] = []
        self._specificity: list[int] = []
        self._set: re2.Set | None = None
        options = re2.Options()
        options.max_mem = 256 << 20
        pattern_set = re2.Set.FullMatchSet(options)
        for key in sorted(bundle_templates):
            text = _normalise(bundle_templates[key])
            self._exact.setdefault(text, key)
            pieces = text.split(_BUNDLE_WILDCARD)
            pattern_set.Add(".*".join(re2.escape(piece) for piece in pieces))
            self._keys.append(key)
            self._specificity.append(sum(len(piece) for piece in pieces))
        if self._keys:
            pattern_set.Compile()
            self._set = pattern_set

    def key_for(self, miner_template: str) -> int | None:
        """The bundle key whose template fits ``miner_template``, or None if none does."""
        if miner_template in self._cache:
            return self._cache[miner_template]
        key = self._resolve(miner_template)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[miner_template] = key
        return key

    def _resolve(self, miner_template: str) -> int | None:
        text = _normalise(miner_template)
        exact = self._exact.get(text)
        if exact is not None or self._set is None:
            return exact
        hits: list[int] | None = self._set.Match(text)
        if not hits:
            return None
        best = max(hits, key=lambda i: (self._specificity[i], -self._keys[i]))
        return self._keys[best]

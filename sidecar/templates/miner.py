"""Drain-style online template miner over sanitized log bodies, with stable ids.

Strategy (He et al., "Drain", ICWS 2017, plus changes that let one configuration serve
all 16 Loghub systems):

1. **Mask.** One regex pass replaces variables by ``<*>``: numbers, hex and hex-ish ids,
   runs of them joined by ``. : , / -`` (IPs with ports, times, versions, dates), a
   size or duration unit after a number (``12 KB``, ``5 sec``), ``Mon Jul 4 10:00:00``
   dates and ``true``/``false``/``null``. The pattern uses possessive quantifiers and
   one-character look-arounds only, so it cannot backtrack (linear time; needs Python
   3.11). Redaction tokens ``<TYPE:kid:tok>`` become ``<TYPE>``, so templates keep the
   type and never a token. Site patterns (``MinerSettings.extra_masks``) run first, on
   google-re2, which is linear by construction.
2. **Fast path.** The masked text is the key of a bounded cache that maps a line shape
   straight to its template: a known shape costs the regex pass and one dict lookup.
3. **Slow path.** Tokens (whitespace split; a token of variables and punctuation only
   becomes ``<*>``; runs of ``<*>`` collapse into one) walk a fixed-depth prefix tree:
   token count, then the first ``depth - 2`` tokens (tokens with digits or variables,
   and tokens arriving at a node that already has ``max_children`` children, take the
   ``<*>`` branch; a token's branch never changes once chosen). The leaf's templates
   are tried in id order:

   a. *covered*: the lowest-id template whose every position is the same literal or a
      wildcard wins, unchanged;
   b. *similar*: similarity = equal literals / literal positions of the template (its
      wildcards do not count against a line). The most similar template at or above
      ``similarity_threshold`` absorbs the line: differing positions become ``<*>``;
   c. unless the only candidates differ from the line *word against word* (``Active``
      / ``Inactive``, ``root`` / ``admin``): such a pair is kept apart as sibling
      templates until ``word_values`` siblings differ only there; then the position is
      a variable and the oldest sibling absorbs the others;
   d. otherwise the line starts a new template.

**Stable ids.** Ids start at 1 (0 is the model's unknown/padding id, used here only for
overflow). A template keeps its id while its text generalises. A generalised template
can come to cover younger templates of its leaf; those can then never match again
(the oldest covering template wins), so they are *retired*: their count moves to the
survivor and their id is never reused. The answer for a line is a pure function of
the template table (the cache only memoises it and is invalidated where a change could
alter it), so a table saved and reloaded maps every line to the same id.

**Bounds.** ``max_templates`` caps the table: once full, a line that would start a
template maps to the template of its leaf sharing most tokens with it, or to ``OVERFLOW``
(id 0) when there is none; it is counted in ``MinerStats.overflowed`` and not cached.
``cache_size`` caps the shape cache (it is cleared when full). The miner is not
thread-safe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType

import re2

WILDCARD = "<*>"
UNKNOWN_ID = 0

# --- masking ------------------------------------------------------------------------
# Each branch starts with a character class followed by a one-character look-behind
# ("the character before the first one is not a letter or digit"); this keeps Python's
# fast first-character scan and anchors a variable at the start of a word.
_AFTER = r"(?![^\W_])"  # the variable ends where a word would end
_HEX_ATOM = rf"(?:0[xX][0-9a-fA-F]++|[a-fA-F]*+\d[0-9a-fA-F]*+){_AFTER}"
_FIRST_ATOM = (
    r"[-0-9a-fA-F](?<![^\W_].)"
    r"(?:(?<=-)\d[0-9a-fA-F]*+|(?<=0)[xX][0-9a-fA-F]++"
    r"|(?<=[a-fA-F])[a-fA-F]*+\d[0-9a-fA-F]*+|(?<=\d)[0-9a-fA-F]*+)" + _AFTER
)
_UNIT = rf"(?: ?+(?:(?:[KMGT]i?)?B|bytes|[mun]?s|secs?|seconds){_AFTER})?+"
_NUMBER = rf"{_FIRST_ATOM}(?:[.:,/-]{_HEX_ATOM})*+{_UNIT}"
_DATE = (
    r"[MTWFS](?<![^\W_].)(?:(?<=M)on|(?<=T)(?:ue|hu)|(?<=W)ed|(?<=F)ri|(?<=S)(?:at|un))"
    r" ++(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ++\d{1,2} ++\d{1,2}:\d\d:\d\d"
    r"(?: ++\d{4})?+" + _AFTER
)
_LITERAL = r"[tfn](?<![^\W_].)(?:(?<=t)rue|(?<=f)alse|(?<=n)ull)" + _AFTER
_BUILTIN_MASK = re.compile(f"{_DATE}|{_NUMBER}|{_LITERAL}")
# The redaction token shape, matched here independently of sidecar.redact.
_REDACTION_TOKEN = re.compile(r"<([A-Z][A-Z0-9_]*+):[0-9a-f]{4}:[0-9a-f]{16}>")

_NOT_WORD_CHARS = re.compile(r"\W*")
_VARIABLE_IN_TOKEN = re.compile(r"\d|<\*>|<[A-Z][A-Z0-9_]*>")
_WORD = re.compile(r"[^\w<>]*[^\W\d_]+[^\w<>]*")


def _doc(text: str, **bounds: float) -> dict[str, object]:
    return {"doc": text, **bounds}


def _check_bounds(settings: object) -> None:
    for f in fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{f.name}: {value!r} is outside [{low}, {high}]")


@dataclass(frozen=True)
class MaskPattern:
    """A site-specific variable pattern (google-re2 syntax); its matches become ``<*>``."""

    name: str = field(default="custom", metadata=_doc("label for the pattern, e.g. order_id"))
    pattern: str = field(default="", metadata=_doc("RE2 pattern matching one variable"))

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("extra_masks: a mask needs a name")
        if not self.pattern:
            raise ValueError(f"extra_masks.{self.name}: a pattern is required")
        try:
            compiled = re2.compile(self.pattern)
        except re2.error as exc:
            raise ValueError(f"extra_masks.{self.name}: not valid RE2 syntax ({exc})") from None
        if compiled.fullmatch("") is not None:
            raise ValueError(f"extra_masks.{self.name}: pattern matches the empty string")


@dataclass(frozen=True)
class MinerSettings:
    """How the miner groups lines. The defaults serve all 16 Loghub systems."""

    depth: int = field(
        default=4, metadata=_doc("prefix-tree depth: token count + (depth-2) tokens", min=3, max=10)
    )
    similarity_threshold: float = field(
        default=0.6,
        metadata=_doc("share of literal tokens a line must match to join a template", min=0.0,
                      max=1.0),
    )
    max_children: int = field(
        default=100, metadata=_doc("children per tree node before the <*> branch", min=2,
                                   max=100_000)
    )
    word_values: int = field(
        default=4,
        metadata=_doc("distinct words at one position before it becomes a variable", min=2,
                      max=1_000),
    )
    max_templates: int = field(
        default=20_000, metadata=_doc("template table bound (then overflow)", min=1,
                                      max=10_000_000)
    )
    cache_size: int = field(
        default=200_000, metadata=_doc("line shapes remembered by the fast path", min=1,
                                       max=100_000_000)
    )
    extra_masks: tuple[MaskPattern, ...] = field(
        default=(), metadata=_doc("site variable patterns, applied before the built-in ones")
    )
    max_line_chars: int = field(
        default=4096,
        metadata=_doc("only a line's first chars are mined: bounds each template's memory",
                      min=64, max=1_048_576),
    )

    def __post_init__(self) -> None:
        _check_bounds(self)
        if not isinstance(self.extra_masks, tuple):
            raise ValueError("extra_masks: must be a tuple")


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The template a line belongs to; ``is_new`` when this line created it."""

    template_id: int
    template: str
    is_new: bool


OVERFLOW = MatchResult(UNKNOWN_ID, "<overflow>", False)


@dataclass(frozen=True, slots=True)
class MinerStats:
    """Counters since the miner was built (restored miners start at zero)."""

    lines: int
    slow_path: int
    created: int
    generalised: int
    retired: int
    overflowed: int


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """One template as persisted: its text, line count and prefix-tree route."""

    template_id: int
    template: str
    count: int
    route: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MinerState:
    """Everything needed to resume mining identically (no raw lines, templates only)."""

    settings: MinerSettings
    next_id: int
    templates: tuple[TemplateRecord, ...]


class _Route(Enum):
    CREATE = "create"
    LOOKUP = "lookup"
    NEAREST = "nearest"


class _Template:
    __slots__ = ("count", "id", "result", "route", "tokens")

    def __init__(self, template_id: int, tokens: list[str], route: tuple[str, ...]) -> None:
        self.id = template_id
        self.tokens = tokens
        self.route = route
        self.count = 0
        self.result = MatchResult(template_id, " ".join(tokens), False)


class _Leaf:
    """Templates of one tree leaf in id order; ``version`` changes whenever a change here
    could alter the answer for a line cached before it."""

    __slots__ = ("templates", "version")

    def __init__(self) -> None:
        self.templates: list[_Template] = []
        self.version = 0


class _Node:
    __slots__ = ("children", "leaf")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.leaf: _Leaf | None = None  # only on the last level


def _tokens_of(shape: str) -> list[str]:
    tokens: list[str] = []
    for token in shape.split():
        if WILDCARD in token and _NOT_WORD_CHARS.fullmatch(token.replace(WILDCARD, "")):
            if tokens and tokens[-1] == WILDCARD:
                continue
            token = WILDCARD
        tokens.append(token)
    return tokens


def _covers(template: list[str], tokens: list[str]) -> bool:
    for mine, theirs in zip(template, tokens, strict=True):
        if mine != theirs and mine != WILDCARD:
            return False
    return True


def _generalise(template: list[str], tokens: list[str]) -> list[str]:
    pairs = zip(template, tokens, strict=True)
    return [mine if mine == theirs else WILDCARD for mine, theirs in pairs]


class TemplateMiner:
    """Online template miner; see the module docstring for the algorithm.

    ``add`` learns, ``match`` only looks up. Both take the *sanitized* body text.
    """

    def __init__(self, settings: MinerSettings = MinerSettings()) -> None:
        self.settings = settings
        self._extra = (
            re2.compile("|".join(f"(?:{m.pattern})" for m in settings.extra_masks).encode())
            if settings.extra_masks
            else None
        )
        self._prefix_len = settings.depth - 2
        self._roots: dict[int, _Node] = {}
        self._cache: dict[str, tuple[_Template, _Leaf, int]] = {}
        self._by_id: dict[int, _Template] = {}
        self._texts: dict[int, str] = {}
        self._next_id = 1
        self._lines = self._slow = self._created = 0
        self._generalised = self._retired = self._overflowed = 0

    # --- public API ---------------------------------------------------------------------

    def add(self, body: str) -> MatchResult:
        """Assign ``body`` to a template, learning from it; never raises for any text.

        Only the first ``max_line_chars`` characters count, so a stream of huge distinct
        lines cannot make the table grow by megabytes per template.
        """
        body = body[: self.settings.max_line_chars]
        self._lines += 1
        shape = self.mask(body)
        hit = self._cache.get(shape)
        if hit is not None:
            template, leaf, version = hit
            if leaf.version == version:
                template.count += 1
                return template.result
        return self._add_slow(shape)

    def add_batch(self, bodies: Sequence[str]) -> list[MatchResult]:
        """``add`` for each body, in order."""
        add = self.add
        return [add(body) for body in bodies]

    def match(self, body: str) -> MatchResult | None:
        """The template ``add`` would assign, without learning; None where ``add`` would
        start a template (or overflow). ``template`` is the text as it stands now."""
        body = body[: self.settings.max_line_chars]
        shape = self.mask(body)
        hit = self._cache.get(shape)
        if hit is not None and hit[1].version == hit[2]:
            return hit[0].result
        tokens = _tokens_of(shape)
        routed = self._route(tokens, _Route.LOOKUP)
        if routed is None:
            return None
        leaf = routed[0]
        template, merged = self._decide(leaf, tokens)
        if template is None:
            return None
        if merged is None:
            self._remember(shape, template, leaf)
        return template.result

    def templates(self) -> Mapping[int, str]:
        """Live templates, id -> text (a read-only view that follows the miner)."""
        return MappingProxyType(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def stats(self) -> MinerStats:
        """Counters for metrics: lines, slow-path lines, templates created, generalised,
        retired (absorbed by an older one) and overflowed lines."""
        return MinerStats(self._lines, self._slow, self._created, self._generalised,
                          self._retired, self._overflowed)

    def mask(self, body: str) -> str:
        """The line shape: ``body`` with variables masked (see the module docstring)."""
        if "<" in body:
            parts = _REDACTION_TOKEN.split(body)
            if len(parts) > 1:
                parts[0::2] = [self._mask_plain(text) for text in parts[0::2]]
                parts[1::2] = [f"<{type_}>" for type_ in parts[1::2]]
                return "".join(parts)
        return self._mask_plain(body)

    def state(self) -> MinerState:
        """A snapshot for persistence: settings, next id and live templates in id order."""
        records = tuple(
            TemplateRecord(t.id, t.result.template, t.count, t.route)
            for t in sorted(self._by_id.values(), key=lambda t: t.id)
        )
        return MinerState(self.settings, self._next_id, records)

    @classmethod
    def from_state(cls, state: MinerState) -> TemplateMiner:
        """Rebuild a miner from ``state()``; ValueError names the first inconsistency."""
        miner = cls(state.settings)
        for record in sorted(state.templates, key=lambda r: r.template_id):
            miner._restore(record)
        if miner._by_id and state.next_id <= max(miner._by_id):
            raise ValueError(f"next_id {state.next_id} is not above every template id")
        miner._next_id = max(state.next_id, 1)
        return miner

    # --- internals ----------------------------------------------------------------------

    def _mask_plain(self, text: str) -> str:
        if self._extra is not None:
            encoded = text.encode("utf-8", "surrogatepass")
            text = self._extra.sub(WILDCARD.encode(), encoded).decode("utf-8", "surrogatepass")
        return _BUILTIN_MASK.sub(WILDCARD, text)

    def _route(self, tokens: list[str], mode: _Route) -> tuple[_Leaf, tuple[str, ...]] | None:
        """The leaf for ``tokens`` and the branch key taken at each prefix level.

        A token without a branch of its own takes the ``<*>`` branch if it holds a
        variable or the node is full; otherwise ``CREATE`` adds its branch, ``LOOKUP``
        answers None (``add`` would start a template there) and ``NEAREST`` falls back
        to the ``<*>`` branch. None also means the branch to take does not exist.
        """
        node = self._roots.get(len(tokens))
        if node is None:
            if mode is not _Route.CREATE:
                return None
            node = self._roots[len(tokens)] = _Node()
        keys: list[str] = []
        for token in tokens[: self._prefix_len]:
            child = node.children.get(token)
            if child is None:
                if (
                    mode is _Route.NEAREST
                    or _VARIABLE_IN_TOKEN.search(token)
                    or len(node.children) >= self.settings.max_children
                ):
                    token = WILDCARD
                    child = node.children.get(token)
                if child is None:
                    if mode is not _Route.CREATE:
                        return None
                    child = node.children[token] = _Node()
            keys.append(token)
            node = child
        leaf = node.leaf
        if leaf is None:
            if mode is not _Route.CREATE:
                return None
            leaf = node.leaf = _Leaf()
        return leaf, tuple(keys)

    def _decide(self, leaf: _Leaf, tokens: list[str]) -> tuple[_Template | None, list[str] | None]:
        """(template, new tokens for it): covered -> (t, None); absorbed -> (t, tokens);
        a new template is needed -> (None, None)."""
        best: _Template | None = None
        best_rank: tuple[float, int] = (-1.0, 0)
        sibling: _Template | None = None
        sibling_rank: tuple[float, int] = (-1.0, 0)
        for template in leaf.templates:
            literal = equal = wild = 0
            word_clash = False
            for mine, theirs in zip(template.tokens, tokens, strict=True):
                if mine == WILDCARD:
                    wild += 1
                    continue
                literal += 1
                if mine == theirs:
                    equal += 1
                elif not word_clash and _WORD.fullmatch(mine) and _WORD.fullmatch(theirs):
                    word_clash = True
            if equal == literal:
                return template, None
            rank = (equal / literal, wild)
            if word_clash:
                if rank > sibling_rank:
                    sibling, sibling_rank = template, rank
            elif rank > best_rank:
                best, best_rank = template, rank
        threshold = self.settings.similarity_threshold
        if best is not None and best_rank[0] >= threshold:
            return best, _generalise(best.tokens, tokens)
        if sibling is not None and sibling_rank[0] >= threshold:
            merged = _generalise(sibling.tokens, tokens)
            family = [t for t in leaf.templates if _covers(merged, t.tokens)]
            if len(family) + 1 >= self.settings.word_values:
                return family[0], merged
        return None, None

    def _add_slow(self, shape: str) -> MatchResult:
        self._slow += 1
        tokens = _tokens_of(shape)
        full = len(self._texts) >= self.settings.max_templates
        routed = self._route(tokens, _Route.NEAREST if full else _Route.CREATE)
        if routed is None:
            self._overflowed += 1
            return OVERFLOW
        leaf, route = routed
        template, merged = self._decide(leaf, tokens)
        if template is not None:
            if merged is not None:
                self._rewrite(leaf, template, merged)
            template.count += 1
            self._remember(shape, template, leaf)
            return template.result
        if full:
            return self._overflow(leaf, tokens)
        template = self._create(leaf, tokens, route)
        template.count = 1
        self._remember(shape, template, leaf)
        return MatchResult(template.id, template.result.template, True)

    def _remember(self, shape: str, template: _Template, leaf: _Leaf) -> None:
        if len(self._cache) >= self.settings.cache_size:
            self._cache.clear()
        self._cache[shape] = (template, leaf, leaf.version)

    def _create(self, leaf: _Leaf, tokens: list[str], route: tuple[str, ...]) -> _Template:
        template = _Template(self._next_id, tokens, route)
        self._next_id += 1
        self._created += 1
        self._insert(leaf, template)
        return template

    def _insert(self, leaf: _Leaf, template: _Template) -> None:
        leaf.templates.append(template)
        self._by_id[template.id] = template
        self._texts[template.id] = template.result.template

    def _rewrite(self, leaf: _Leaf, template: _Template, tokens: list[str]) -> None:
        """Generalise ``template`` to ``tokens``; retire the younger templates it now covers."""
        self._generalised += 1
        template.tokens = tokens
        template.result = MatchResult(template.id, " ".join(tokens), False)
        self._texts[template.id] = template.result.template
        if leaf.templates[-1] is template:
            return  # no younger template whose lines could move here
        leaf.version += 1
        kept: list[_Template] = []
        for other in leaf.templates:
            if other.id > template.id and _covers(tokens, other.tokens):
                template.count += other.count
                del self._by_id[other.id]
                del self._texts[other.id]
                self._retired += 1
            else:
                kept.append(other)
        leaf.templates = kept

    def _overflow(self, leaf: _Leaf, tokens: list[str]) -> MatchResult:
        self._overflowed += 1
        best: _Template | None = None
        best_equal = -1
        for template in leaf.templates:
            pairs = zip(template.tokens, tokens, strict=True)
            equal = sum(mine == theirs for mine, theirs in pairs)
            if equal > best_equal:
                best, best_equal = template, equal
        return OVERFLOW if best is None else best.result

    def _restore(self, record: TemplateRecord) -> None:
        where = f"template {record.template_id}"
        if record.template_id < 1 or record.template_id in self._by_id:
            raise ValueError(f"{where}: id must be unique and >= 1")
        if record.count < 0:
            raise ValueError(f"{where}: negative count")
        tokens = record.template.split()
        if " ".join(tokens) != record.template:
            raise ValueError(f"{where}: tokens must be separated by single spaces")
        prefix = tokens[: self._prefix_len]
        if len(record.route) != len(prefix) or any(
            key != WILDCARD and (key != token or _VARIABLE_IN_TOKEN.search(key))
            for key, token in zip(record.route, prefix, strict=True)
        ):
            raise ValueError(f"{where}: route does not fit the template and depth")
        node = self._roots.get(len(tokens))
        if node is None:
            node = self._roots[len(tokens)] = _Node()
        for key in record.route:
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node()
            node = child
        template = _Template(record.template_id, tokens, record.route)
        template.count = record.count
        if node.leaf is None:
            node.leaf = _Leaf()
        self._insert(node.leaf, template)

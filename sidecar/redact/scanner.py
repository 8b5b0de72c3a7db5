"""One detection pass over a text: RE2 Set prefilter, fired detectors, overlap resolution.

Strategy: all regex work is RE2 (linear time) on UTF-8 bytes (~2.7x faster than on
str). An RE2 Set pass over the whole text says which detectors can fire; on a typical
line it costs about one detector pass, and most lines fire none or few. Each fired
detector then walks its own matches with RE2's low-level ``Match`` (cheaper per call
than the generator API), and Python validates the candidates. Because every detector
scans on its own, a candidate one detector rejects never hides another's.

Then: findings overlapping an existing token (or ``<REDACTED>``) are dropped, which
makes re-redaction a no-op; allow-listed values are dropped; overlaps are resolved:
leftmost first, then longest, then the earlier detector (detector order is priority);
a partial overlap is merged into one finding so nothing is left half-masked.

Fail-safe: the Python binding of ``RE2::Set::Match`` returns no indices when the DFA
runs out of memory, indistinguishable from "no hit". Index 0 is a sentinel (``\\z``)
that always matches, so an answer without it means failure, and then every detector
runs (single RE2 regexes fall back to their NFA rather than fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import re2
from re2 import _re2

from sidecar.redact.detectors import Detector, Extract, Finding

_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_SET_MAX_MEM = 64 << 20


class Allowed:
    """Allow-list: exact raw values and RE2 patterns a whole raw value may match."""

    def __init__(self, values: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        self._values = frozenset(values)
        self._pattern = (
            re2.compile("|".join(f"(?:{pattern})" for pattern in patterns)) if patterns else None
        )
        self.empty = not values and not patterns

    def allows(self, raw: str) -> bool:
        """True if ``raw`` must not be redacted."""
        return raw in self._values or (
            self._pattern is not None and self._pattern.fullmatch(raw) is not None
        )


class Scanner:
    """Finds what to replace in a UTF-8 buffer, using ``detectors`` in priority order."""

    def __init__(self, detectors: Sequence[Detector], allowed: Allowed) -> None:
        options = re2.Options()
        options.log_errors = False
        set_options = re2.Options()
        set_options.log_errors = False
        set_options.max_mem = _SET_MAX_MEM
        self._set = _re2.Set(_UNANCHORED, set_options)
        self._set.Add(rb"\z")
        self._runs: list[tuple[Any, Extract]] = []
        for detector in detectors:
            regex = _re2.RE2(detector.pattern, options)
            if not regex.ok() or self._set.Add(detector.pattern) < 0:
                raise ValueError(f"detector {detector.name}: RE2 rejected its pattern")
            if regex.Match(_UNANCHORED, b"", 0, 0)[0][0] >= 0:
                raise ValueError(f"detector {detector.name}: pattern matches the empty string")
            self._runs.append((regex.Match, detector.extract))
        if not self._set.Compile():
            raise ValueError("the detectors do not fit in one RE2 set; disable some")
        self._allowed = allowed

    def scan(self, buf: bytes) -> list[Finding]:
        """Non-overlapping findings in ``buf``, sorted by position."""
        hits = self._set.Match(buf)
        if len(hits) == 1:
            return []
        fired = sorted(hits)[1:] if hits else range(1, len(self._runs) + 1)
        findings: list[Finding] = []
        end = len(buf)
        for index in fired:
            match, extract = self._runs[index - 1]
            pos = 0
            while True:
                spans = match(_UNANCHORED, buf, pos, end)
                if spans[0][0] < 0:
                    break
                found = extract(buf, spans)
                findings.extend(found)
                pos = _resume(buf, spans[0], found)
        if not self._allowed.empty:
            findings = self._allowed_only(buf, findings)
        if len(findings) < 2:
            return [finding for finding in findings if finding.type]
        # Stable sort: on equal spans the earlier detector (higher priority) stays first.
        findings.sort(key=_position)
        return _resolve(buf, _off_tokens(findings))

    def _allowed_only(self, buf: bytes, findings: list[Finding]) -> list[Finding]:
        return [
            finding
            for finding in findings
            if not self._allowed.allows(buf[finding.start : finding.end].decode())
            and not self._allowed.allows(finding.value)
        ]


RESCAN_SPAN = 96
"""A match this short whose check rejected it (or kept only its start) is searched again
from its next word: a greedy ``TX01 DE89...`` or ``token Bearer x`` must not hide the
value that follows. Longer matches resume at their end, which keeps scanning linear."""


def _resume(buf: bytes, span: tuple[int, int], found: list[Finding]) -> int:
    start, stop = span
    kept_to = max((f.end for f in found), default=start)
    if kept_to >= stop or stop - start > RESCAN_SPAN:
        return stop
    if found:
        return kept_to
    space = buf.find(b" ", start + 1, stop)
    return space + 1 if space >= 0 else stop


def _position(finding: Finding) -> tuple[int, int]:
    return finding.start, -finding.end


def _off_tokens(findings: list[Finding]) -> list[Finding]:
    """Findings (sorted) minus token markers and anything overlapping one."""
    tokens = [finding for finding in findings if not finding.type]
    if not tokens:
        return findings
    kept = []
    index = 0
    for finding in findings:
        if not finding.type:
            continue
        # Tokens never overlap each other; skip those that end before this finding.
        while index < len(tokens) and tokens[index].end <= finding.start:
            index += 1
        if index == len(tokens) or tokens[index].start >= finding.end:
            kept.append(finding)
    return kept


def _resolve(buf: bytes, findings: list[Finding]) -> list[Finding]:
    """Non-overlapping findings: a contained one is dropped, a partial overlap merged."""
    resolved: list[Finding] = []
    merged: set[int] = set()
    for finding in findings:
        if resolved and finding.start < resolved[-1].end:
            if finding.end > resolved[-1].end:
                resolved[-1] = resolved[-1]._replace(end=finding.end)
                merged.add(len(resolved) - 1)
            continue
        resolved.append(finding)
    for index in merged:
        union = resolved[index]
        resolved[index] = union._replace(value=buf[union.start : union.end].decode())
    return resolved

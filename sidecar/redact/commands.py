"""The redaction subcommands behind the CLI: ``redact``, ``audit``, ``reveal``, ``tokens``.

Each takes already-validated settings and secrets plus the streams to use, so
they are testable without a shell; ``sidecar.cli`` only parses arguments.
``redact`` streams: one sanitized line out per line in, in order, with
invalid UTF-8 replaced rather than fatal. ``reveal`` is the only code path
that prints originals; it opens the store read-only and logs how many tokens
were revealed (never which values) to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import BinaryIO, TextIO

from sidecar.redact.audit import run_audit
from sidecar.redact.redactor import Redactor
from sidecar.redact.settings import RedactionSettings
from sidecar.redact.store import TokenStore, generate_key, load_key, rotate

log = logging.getLogger(__name__)


def redact_stream(settings: RedactionSettings, secret: bytes, source: BinaryIO,
                  sink: TextIO, *, jsonl: bool, flush_each: bool) -> Counter[str]:
    """Redact ``source`` line by line into ``sink``; returns counts per detector.

    With ``jsonl`` each line must be a JSON value (it is scanned field by field);
    a line that is not valid JSON is scanned as text and counted as ``invalid_json``.
    """
    redactor = Redactor(settings, secret)
    totals: Counter[str] = Counter()
    for number, raw in enumerate(source, start=1):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if jsonl and not _is_json(line):
            totals["invalid_json"] += 1
            log.warning("line %d is not valid JSON; scanned as text", number)
        text, counts = redactor.redact_text(line)
        totals.update(counts)
        sink.write(text + "\n")
        if flush_each:
            sink.flush()
    sink.flush()
    return totals


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def format_stats(counts: Counter[str]) -> str:
    width = max((len(k) for k in counts), default=8)
    rows = [f"{name:<{width}}  {n}" for name, n in sorted(counts.items())]
    return "\n".join(["redactions per detector:", *rows] if rows else ["no redactions"])


def audit(settings: RedactionSettings, lines: int, seed: int, out: TextIO) -> bool:
    """Run the synthetic-corpus audit, print its report; True if nothing planted survived."""
    report = run_audit(settings, lines=lines, seed=seed)
    out.write(report.render() + "\n")
    return report.passed


def reveal(store_path: Path, key_text: bytes, tokens: list[str], out: TextIO) -> int:
    """Print ``token<TAB>original`` for each token; returns how many were not found."""
    missing = 0
    with TokenStore.open(store_path, load_key(key_text.decode()), read_only=True) as store:
        for token in tokens:
            original = store.reveal(token)
            if original is None:
                missing += 1
                out.write(f"{token}\t(not in the store)\n")
            else:
                out.write(f"{token}\t{original}\n")
    log.warning("revealed %d of %d tokens from %s", len(tokens) - missing, len(tokens),
                store_path)
    return missing


def rotate_store(store_path: Path, old_key: bytes, new_key_file: Path, out: TextIO) -> None:
    new_key = load_key(new_key_file.read_text().strip())
    count = rotate(store_path, load_key(old_key.decode()), new_key)
    out.write(f"{store_path}: {count} records re-encrypted under the new key\n")


def new_key(out: TextIO = sys.stdout) -> None:
    out.write(generate_key() + "\n")

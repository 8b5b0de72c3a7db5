"""Redaction benchmark: ours vs Microsoft Presidio vs a naive four-regex sanitizer, one run.

(a) Accuracy and speed on the seeded synthetic bank-log corpus (``sidecar.redact.corpus``),
    scored exactly as the audit scores (``sidecar.redact.audit.score``): recall per planted
    TYPE, false-positive rate per decoy kind, lines/s. Ours and the naive sanitizer get
    ``--lines`` lines; Presidio (~300-400 lines/s) gets the first ``--presidio-lines`` of
    the same corpus (the corpus is sequential per seed: a prefix is the smaller corpus).
    Presidio 2.2 runs model-free: ``AnalyzerEngine`` on a ``NoOpNlpEngine`` with its
    predefined pattern recognizers, all entities, default threshold, then
    ``AnonymizerEngine`` ``replace``; its tldextract warm-up (a failing download of the
    public suffix list, then the bundled copy) happens before timing. Benchmark-only
    dependency: ``pip install presidio-analyzer presidio-anonymizer``.
(b) "Typical log lines": ours (and the naive sanitizer) on the 16 Loghub systems'
    ``*_2k.log`` files, and ours on the synthetic corpus with every token already cached
    vs. every value new (token cache off: each finding computes its keyed token).
(c) Hostile input: ours and the naive sanitizer on pathological lines. Ours runs
    in-process with ``max_field_bytes`` raised to 4 MiB so the 1 MB line is scanned, not
    masked whole (the default 256 KiB bound would turn it into ``<REDACTED>``); the run
    exits 1 if ours takes more than ``--bound`` CPU seconds on any case (the time bound of
    "all regex work runs in linear time"). Each naive case runs in a subprocess killed
    after ``--naive-limit`` wall seconds, counted from when its input is built.

Speed is CPU time of this process (``time.process_time``), which is pinned to one CPU;
lines/s figures are medians of ``--repeats`` runs (ours built fresh per run, untimed;
Presidio built and warmed up once).

Run from the repository root:  python bench/bench_redact.py
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sidecar.redact import REDACTED, RedactionSettings, Redactor, corpus  # noqa: E402
from sidecar.redact.audit import AuditReport, score  # noqa: E402

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub_2k"
SECRET = b"bench-redact-secret-0123456789abcdef"
Redact = Callable[[str], str]

# -- the naive sanitizer: four regexes as commonly written, Python ``re`` ------------------

NAIVE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)(api_?key=)[^\s&]+"), r"\1***"),
    (re.compile(r"(?i)(password=)[^\s&]+"), r"\1***"),
    # Quadratic in ``re`` on a long run of [\w.+-] with no '@': each start rescans to the end.
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "***@***"),
    (re.compile(r"\b(?:\d{4}[ -]?){3}\d{4}\b"), "****"),
)


def naive(text: str) -> str:
    """The naive sanitizer: api_key=, password=, e-mail, 16-digit card, one ``re.sub`` each."""
    for pattern, replacement in NAIVE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# -- engines -----------------------------------------------------------------------------


def ours(settings: RedactionSettings | None = None) -> Redact:
    """A fresh redactor's ``redact_text`` as a text -> text function."""
    redactor = Redactor(settings or RedactionSettings(), SECRET)
    return lambda text: redactor.redact_text(text)[0]


def presidio() -> tuple[Redact, str]:
    """Model-free Presidio (analyzer + anonymizer ``replace``), warmed up; and a description."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig

    analyzer = AnalyzerEngine(
        nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
        supported_languages=["en"],
    )
    anonymizer = AnonymizerEngine()
    operators = {"DEFAULT": OperatorConfig("replace")}

    def run(text: str) -> str:
        return anonymizer.anonymize(text, analyzer.analyze(text, language="en"), operators).text

    logging.disable(logging.CRITICAL)  # tldextract logs its failed download with a traceback
    run("warm-up: mail a.b@example.com via https://www.example.co.uk/x from 203.0.113.7")
    logging.disable(logging.NOTSET)
    names = sorted(recognizer.name for recognizer in analyzer.registry.recognizers)
    about = (f"presidio-analyzer {version('presidio-analyzer')}, {len(names)} pattern "
             f"recognizers ({', '.join(name.removesuffix('Recognizer') for name in names)})")
    return run, about


# -- measuring ---------------------------------------------------------------------------


def audited(make: Callable[[], Redact], sample: Sequence[corpus.CorpusLine],
            repeats: int) -> tuple[AuditReport, list[float]]:
    """The audit report of ``make()`` on ``sample`` with the median CPU time of ``repeats``."""
    reports = [score(make(), sample, clock=time.process_time) for _ in range(repeats)]
    first = reports[0]
    assert all(r.survived == first.survived and r.decoys_hit == first.decoys_hit
               for r in reports), "engine is not deterministic"
    seconds = [r.seconds for r in reports]
    return replace(first, seconds=statistics.median(seconds)), seconds


def cpu_rate(make: Callable[[], Redact], lines: Sequence[str],
             repeats: int) -> tuple[float, float, float]:
    """(median, min, max) lines per CPU-second; each run redacts ``lines`` with a new ``make()``.

    Building the engine is not timed.
    """
    rates = []
    for _ in range(repeats):
        redact = make()
        started = time.process_time()
        for line in lines:
            redact(line)
        rates.append(len(lines) / max(time.process_time() - started, 1e-9))
    return statistics.median(rates), min(rates), max(rates)


def overall_recall(report: AuditReport) -> float:
    planted = sum(report.planted.values())
    return 1.0 - sum(report.survived.values()) / planted if planted else 1.0


def pct(value: float) -> str:
    return f"{value:.2%}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right_from: int = 1) -> str:
    """A Markdown table; columns from ``right_from`` on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- (a) the three engines on the corpus ---------------------------------------------------


def compare(args: argparse.Namespace) -> None:
    sample = corpus.generate(args.lines, args.seed)
    small = sample[: args.presidio_lines]
    assert small == corpus.generate(args.presidio_lines, args.seed)  # a prefix is a corpus
    run_presidio, about = presidio()
    engines: dict[str, tuple[Callable[[], Redact], Sequence[corpus.CorpusLine]]] = {
        "ours": (ours, sample),
        "naive 4-regex": (lambda: naive, sample),
        "Presidio": (lambda: run_presidio, small),
    }
    results = {name: audited(make, lines, args.repeats) for name, (make, lines) in engines.items()}
    reports = {name: report for name, (report, _) in results.items()}
    names = list(reports)

    print("## (a) Synthetic bank-log corpus: recall, false positives, speed\n")
    print(f"- corpus: `corpus.generate({args.lines}, seed={args.seed})`; Presidio scored on its "
          f"first {args.presidio_lines:,} lines (same templates and value mix, "
          f"{len(corpus.TEMPLATES)} templates cycling); {about}; all entities, default "
          "score threshold, `replace` with `<ENTITY_TYPE>`")
    print("- naive: `api_?key=`, `password=`, e-mail `[\\w.+-]+@[\\w-]+\\.[\\w.-]+`, card "
          "`\\b(?:\\d{4}[ -]?){3}\\d{4}\\b` (Python `re`, one `sub` each)")
    print("- scoring: `sidecar.redact.audit.score` - a planted value is found if its raw text "
          "is gone from the output; a decoy is a false positive if its raw text is gone\n")
    rows = [[type_, *(pct(reports[n].recall(type_)) for n in names)]
            for type_ in sorted(reports["ours"].planted)]
    rows.append(["**overall**", *(f"**{pct(overall_recall(reports[n]))}**" for n in names)])
    print(table(["planted TYPE", *(f"{n} recall" for n in names)], rows) + "\n")
    rows = [[kind, *(pct(reports[n].false_positive_rate(kind)) for n in names)]
            for kind in sorted(reports["ours"].decoys)]
    rows.append(["**overall**", *(f"**{pct(reports[n].false_positive_rate())}**" for n in names)])
    print(table(["decoy kind", *(f"{n} FP rate" for n in names)], rows) + "\n")
    rows = []
    for name, (report, seconds) in results.items():
        rates = [report.lines / s for s in seconds]
        rows.append([name, f"{report.lines:,}", f"{sum(report.planted.values()):,}",
                     f"{report.lines_per_second:,.0f}", f"{min(rates):,.0f} - {max(rates):,.0f}"])
    print(table(["engine", "lines", "planted values", "lines/s (median)", "min - max"], rows))
    same = {name: score(make(), small) for name, (make, _) in list(engines.items())[:2]}
    print("\nOn the same " + f"{len(small):,}-line prefix Presidio saw: " + "; ".join(
        f"{name} recall {pct(overall_recall(r))}, FP {pct(r.false_positive_rate())}"
        for name, r in same.items()) + ".\n")


# -- (b) typical log lines -----------------------------------------------------------------


def typical(args: argparse.Namespace) -> float:
    """Throughput tables; returns our lines/s on all Loghub lines."""
    systems = {path.parent.name: path.read_text(errors="replace").splitlines()
               for path in sorted(LOGHUB.glob("*/*_2k.log"))}
    everything = [line for lines in systems.values() for line in lines]
    print("## (b) Typical log lines: throughput\n")
    print(f"- Loghub: `{LOGHUB}/*/*_2k.log`, {len(systems)} systems, raw lines with headers; "
          "ours = default settings, a fresh redactor per run; \"altered\" = share of lines "
          "the engine changed\n")
    rows = []
    total_rate = 0.0
    for name, lines in [*systems.items(), ("**all 16 systems**", everything)]:
        redact = ours()
        altered = sum(redact(line) != line for line in lines) / len(lines)
        rate, low, high = cpu_rate(ours, lines, args.repeats)
        naive_rate = cpu_rate(lambda: naive, lines, args.repeats)[0]
        naive_altered = sum(naive(line) != line for line in lines) / len(lines)
        mean_bytes = sum(len(line.encode()) for line in lines) / len(lines)
        rows.append([name, f"{len(lines):,}", f"{mean_bytes:.0f}", f"{rate:,.0f}",
                     f"{low:,.0f} - {high:,.0f}", pct(altered), f"{naive_rate:,.0f}",
                     pct(naive_altered)])
        total_rate = rate
    print(table(["system", "lines", "mean bytes", "ours lines/s", "min - max", "ours altered",
                 "naive lines/s", "naive altered"], rows) + "\n")

    sample = [line.text for line in corpus.generate(args.lines, args.seed)]
    warm = ours()
    for text in sample:
        warm(text)
    cases = {
        "ours, every token cached (second pass, same redactor)":
            (lambda: warm, "all values seen before"),
        "ours, every value new (`token_cache_size=0`, fresh redactor)":
            (lambda: ours(RedactionSettings(token_cache_size=0)), "every token computed"),
        "ours, service default (fresh redactor, cache 65,536)":
            (ours, "first sight of each value"),
    }
    rows = []
    for name, (make, note) in cases.items():
        rate, low, high = cpu_rate(make, sample, args.repeats)
        rows.append([name, note, f"{rate:,.0f}", f"{low:,.0f} - {high:,.0f}"])
    planted = sum(len(line.planted) for line in corpus.generate(args.lines, args.seed))
    print(f"Synthetic corpus ({len(sample):,} lines, {planted:,} planted values, "
          f"{sum(map(len, sample)) / len(sample):.0f} chars/line):\n")
    print(table(["engine", "tokens", "lines/s (median)", "min - max"], rows, right_from=2))
    print()
    return total_rate


# -- (c) hostile input ---------------------------------------------------------------------

N = 100_000
MB = 1 << 20
_MIXED = "a=1:b@c.d-e/f{g[h \"i'j,k;l&m?n%o+p\\q|r<s>t(u)v*w#x~y\tz"
HOSTILE: dict[str, Callable[[], str]] = {
    "'a' x 100k": lambda: "a" * N,
    "'@' x 100k": lambda: "@" * N,
    "'1' x 100k (digits)": lambda: "1" * N,
    "'=' x 100k": lambda: "=" * N,
    "':' x 100k": lambda: ":" * N,
    "'{' x 100k": lambda: "{" * N,
    "'-' x 100k": lambda: "-" * N,
    "'.' x 100k": lambda: "." * N,
    "' ' x 100k": lambda: " " * N,
    "'a@' x 50k": lambda: "a@" * (N // 2),
    "'%40' x 33k": lambda: "%40" * (N // 3),
    "'x' x 100k + '@'": lambda: "x" * N + "@",
    "'password=' x 11k": lambda: "password=" * (N // 9),
    "'4111 ' x 20k": lambda: "4111 " * (N // 5),
    "'AKIA' x 25k": lambda: "AKIA" * (N // 4),
    "'eyJ' + 'a' x 100k + '.'": lambda: "eyJ" + "a" * N + ".",
    "PEM header, unterminated, + 'A' x 100k": lambda: "-----BEGIN RSA PRIVATE KEY-----"
    + "A" * N,
    "'://' + 'u' x 100k + ':' + 'p' x 100k": lambda: "://" + "u" * N + ":" + "p" * N,
    "'ab@cd.ef ' x 11k (11k e-mails)": lambda: "ab@cd.ef " * (N // 9),
    "1 MB line, mixed separators (periodic)": lambda: (_MIXED * (MB // len(_MIXED) + 1))[:MB],
    "1 MB line, mixed separators (seeded random)": lambda: "".join(
        random.Random(0).choices(_MIXED + "0123456789" * 2, k=MB)
    ),
    "10k nested JSON arrays `[[[...]]]`": lambda: "[" * 10_000 + "]" * 10_000,
    "10k nested JSON objects `{\"a\":{...}}`": lambda: '{"a":' * 10_000 + "1" + "}" * 10_000,
}


def naive_case(name: str) -> None:
    """Child process: build the case, say ``ready``, run the naive sanitizer, print CPU s."""
    text = HOSTILE[name]()
    print("ready", flush=True)
    started = time.process_time()
    naive(text)
    print(f"{time.process_time() - started:.6f}", flush=True)


def naive_timed(name: str, limit: float) -> str:
    """The naive sanitizer's CPU time on case ``name`` in a subprocess, or 'killed'."""
    child = subprocess.Popen([sys.executable, __file__, "--naive-case", name],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        child.wait()
        return "error"
    try:
        child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return f"> {limit:g} s (killed)"
    return f"{float(child.stdout.read().strip()) * 1000:,.2f} ms"


def hostile(args: argparse.Namespace) -> list[str]:
    """The pathological-input table; returns the cases where ours broke the bound."""
    redact = Redactor(RedactionSettings(max_field_bytes=4 << 20), SECRET)
    print("## (c) Hostile input: CPU time per line\n")
    print(f"- ours: `redact_text`, `max_field_bytes` = 4 MiB, worst of {args.repeats} runs; "
          f"bound {args.bound:g} s per case (exit 1 if exceeded)")
    print(f"- naive: the four regexes above in a subprocess, killed after {args.naive_limit:g} s "
          "(wall clock from when its input is built)\n")
    rows, broken = [], []
    for name, build in HOSTILE.items():
        text = build()
        worst, out, counts = 0.0, "", {}
        for _ in range(args.repeats):
            started = time.process_time()
            out, counts = redact.redact_text(text)
            worst = max(worst, time.process_time() - started)
        if out == REDACTED:
            result = "`<REDACTED>` (failed closed)"
        elif counts:
            result = ", ".join(f"{type_} x{n:,}" for type_, n in sorted(counts.items()))
        else:
            result = "unchanged" if out == text else "changed"
        verdict = "ok" if worst <= args.bound else "**OVER BOUND**"
        if worst > args.bound:
            broken.append(name)
        rows.append([name, f"{len(text):,}", f"{worst * 1000:,.2f} ms", verdict, result,
                     naive_timed(name, args.naive_limit)])
    print(table(["input", "chars", "ours", "within bound", "ours finds", "naive 4-regex"],
                rows))
    print()
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lines", type=int, default=20_000, help="corpus lines (ours, naive)")
    parser.add_argument("--presidio-lines", type=int, default=2_000, help="corpus prefix")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median)")
    parser.add_argument("--bound", type=float, default=2.0, help="ours: max CPU s per case")
    parser.add_argument("--naive-limit", type=float, default=5.0, help="naive: kill after s")
    parser.add_argument("--naive-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_case:
        naive_case(args.naive_case)
        return
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    print(f"# Redaction benchmark\n\n`python bench/bench_redact.py` - Python "
          f"{platform.python_version()}, pinned to CPU {cpu} of {os.cpu_count()}, CPU time "
          f"(`time.process_time`), medians of {args.repeats} runs\n")
    compare(args)
    loghub_rate = typical(args)
    broken = hostile(args)
    print(f"Target >= 100k lines/s on typical (Loghub) lines: {loghub_rate:,.0f} lines/s, "
          f"{'met' if loghub_rate >= 100_000 else 'NOT met'}.")
    if broken:
        print(f"FAIL: ours exceeded {args.bound:g} s on: {', '.join(broken)}")
        sys.exit(1)
    print(f"PASS: ours stayed under {args.bound:g} s on every hostile input.")


if __name__ == "__main__":
    main()

"""Hot reload: notice a changed bundle directory and load it without a restart.

Strategy: the pipeline thread calls ``BundleWatcher.poll`` between batches; at
most once per poll interval it stats the bundle's files (inode, mtime, size).
When that fingerprint changes it loads and verifies the bundle and builds what
the caller needs from it (a ``build`` callable, e.g. a session model); a bundle
with the same card as the current one (the card holds the other files' sha256) is
not rebuilt. A bundle that
fails is refused - logged with the reason (never record data), counted - and the
current one stays; it is retried only when the files change again, so a bundle
caught half-copied is picked up once the copy completes. Publishing a bundle by
renaming a complete directory into place (or switching a symlink) avoids
half-copied reads altogether. Swapping happens in the pipeline thread between
batches, so no record is scored half by one bundle and half by another, and none
is lost.

The same watcher serves the live bundle and the ``shadow`` one (``role``); the
metrics it exports say which bundle each role runs and how loads went.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Info

from sidecar.scoring.bundle import (
    CARD_FILE,
    HASHED_FILES,
    MODEL_FILE,
    Bundle,
    BundleError,
    load_bundle,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Fingerprint = tuple[tuple[int, int, int] | None, ...]


class ReloadMetrics:
    """Bundle loads per role (``live``, ``shadow``): results, duration, what is running."""

    def __init__(self, registry: CollectorRegistry):
        self.loads = Counter(
            "logminer_scoring_model_loads", "Bundle load attempts, by role and result "
            "(loaded, refused).", ["role", "result"], registry=registry)
        self.load_seconds = Gauge(
            "logminer_scoring_model_load_seconds", "Duration of the last successful bundle load.",
            ["role"], registry=registry)
        self.model = Info(
            "logminer_scoring_model", "The bundle each role runs: name, version, model sha256.",
            ["role"], registry=registry)


class BundleWatcher(Generic[T]):
    """Loads the bundle in ``directory`` and reloads it when its files change.

    ``build`` turns a verified bundle into the object the caller scores with; it
    may raise BundleError to refuse a bundle too. ``bundle`` is the bundle last
    built. ``clock`` gives seconds (monotonic).
    """

    def __init__(self, directory: str | Path, role: str, build: Callable[[Bundle], T],
                 metrics: ReloadMetrics, poll_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = Path(directory)
        self.role = role
        self.bundle: Bundle | None = None
        self._build = build
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._fingerprint: Fingerprint | None = None
        self._next_poll = clock()

    def load(self) -> T:
        """Load, verify and build the bundle now; raise BundleError (logged, counted) if refused."""
        built = self._load(self._stat(), skip_unchanged=False)
        assert built is not None  # only an unchanged bundle is skipped
        return built

    def poll(self) -> T | None:
        """If due and the files changed, try the bundle; return what was newly built, else None.

        A refused bundle leaves the current one in place.
        """
        now = self._clock()
        if now < self._next_poll:
            return None
        self._next_poll = now + self._poll_seconds
        fingerprint = self._stat()
        if fingerprint == self._fingerprint:
            return None
        try:
            return self._load(fingerprint, skip_unchanged=True)
        except BundleError:
            return None  # logged and counted

    def _stat(self) -> Fingerprint:
        stats = []
        for name in (CARD_FILE, *HASHED_FILES):
            try:
                st = os.stat(self.directory / name)
            except OSError:
                stats.append(None)
            else:
                stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stats)

    def _load(self, fingerprint: Fingerprint, skip_unchanged: bool) -> T | None:
        self._fingerprint = fingerprint
        started = time.perf_counter()
        try:
            bundle = load_bundle(self.directory)
            if skip_unchanged and self.bundle is not None and bundle.card == self.bundle.card:
                return None  # the same bundle re-published: keep the sessions running
            try:
                built = self._build(bundle)
            except Exception as exc:  # e.g. a vocabulary the runtime cannot use
                raise BundleError(f"bundle {self.directory}: cannot be used "
                                  f"({type(exc).__name__})") from None
        except BundleError as exc:
            self._metrics.loads.labels(role=self.role, result="refused").inc()
            log.error("refused %s bundle: %s", self.role, exc)
            raise
        self._metrics.loads.labels(role=self.role, result="loaded").inc()
        self._metrics.load_seconds.labels(role=self.role).set(time.perf_counter() - started)
        self._metrics.model.labels(role=self.role).info(
            {"name": bundle.card.name, "version": str(bundle.card.version),
             "sha256": bundle.card.sha256[MODEL_FILE]})
        log.info("loaded %s bundle %s from %s", self.role, bundle.describe(), self.directory)
        self.bundle = bundle
        return built

"""Hot reload: new bundles are picked up between batches; bad ones are refused; nothing is lost."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from sidecar.record import Batch, Record


def publish(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (rename a fresh symlink over it)."""
    fresh = link.with_name(f".{link.name}.{target.name}")
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(target)
    os.replace(fresh, link)


def test_a_new_bundle_is_picked_up_after_the_poll_interval(harness, make_bundle, clock, tmp_path):
    live = tmp_path / "live"
    publish(live, make_bundle("v1"))
    h = harness(model_dir=str(live), reload_poll_seconds=10)
    h.run([Record(body="E5 a blk_1"), Record(body="E5 a blk_2")])
    publish(live, make_bundle("v2", card={"version": 2, "scoring": {"g": 3}}))
    h.run([Record(body="E22 b blk_1")])
    assert h.scorer.live_bundle.card.version == 1  # not polled yet
    clock.now += 10
    first_after = h.run([Record(body="E22 b blk_1")])[0]
    assert h.scorer.live_bundle.card.version == 2
    assert h.metric("logminer_scoring_sessions_evicted_total", reason="reload") == 2
    assert h.metric("logminer_scoring_sessions_live") == 1  # sessions restarted their state
    restarted = h.run([Record(body="E22 b blk_9")])[0]
    assert first_after.score == restarted.score  # blk_1 was judged as a new session
    assert h.metric("logminer_scoring_model_loads_total", role="live", result="loaded") == 2
    assert h.metric("logminer_scoring_model_info", role="live", name="tiny", version="2",
                    sha256=h.scorer.live_bundle.card.sha256["model.tflite"]) == 1


def test_a_bad_bundle_is_refused_once_and_the_old_one_stays(harness, make_bundle, clock, tiny,
                                                            caplog):
    live = make_bundle("live")
    h = harness(model_dir=str(live), reload_poll_seconds=1)
    h.run([Record(body="E5 secret-looking body blk_1")])
    (live / "model.tflite").write_bytes(tiny.model[:-10])  # a copy caught half-way
    with caplog.at_level(logging.ERROR, logger="sidecar.scoring.reload"):
        for _ in range(3):
            clock.now += 1
            assert h.run([Record(body="E22 b blk_1")])[0].score is not None
    assert h.metric("logminer_scoring_model_loads_total", role="live", result="refused") == 1
    assert "refused live bundle" in caplog.text and "does not match the sha256" in caplog.text
    assert "secret-looking" not in caplog.text
    assert h.metric("logminer_scoring_sessions_evicted_total", reason="reload") == 0
    (live / "model.tflite").write_bytes(tiny.model)  # the copy completes
    clock.now += 1
    h.run([Record(body="E5 a blk_2")])
    # Same card as the running bundle: nothing to reload, the sessions keep their state.
    assert h.metric("logminer_scoring_model_loads_total", role="live", result="loaded") == 1
    assert h.metric("logminer_scoring_sessions_live") == 2


def test_a_shadow_appearing_later_is_loaded(harness, make_bundle, clock, tmp_path):
    shadow = tmp_path / "shadow"
    h = harness(shadow_dir=str(shadow), reload_poll_seconds=1)
    assert h.scorer.shadow_bundle is None
    make_bundle("shadow", card={"version": 7})
    clock.now += 1
    h.run([Record(body="E5 a blk_1")])
    assert h.scorer.shadow_bundle is not None and h.scorer.shadow_bundle.card.version == 7
    assert h.metric("logminer_scoring_shadow_agreements_total", kind="record") == 1


def test_hot_reload_under_load_loses_no_record(harness, make_bundle, stand_in_records, tmp_path,
                                               normal_sessions):
    versions = [make_bundle(f"v{n}", card={"version": n}) for n in (1, 2, 3)]
    broken = make_bundle("broken", files={"window.tflite": b"truncated"}, rehash=False)
    live = tmp_path / "live"
    publish(live, versions[0])
    h = harness(model_dir=str(live), reload_poll_seconds=0)  # poll before every batch
    bodies = [r.body for r in stand_in_records(normal_sessions)]
    done = threading.Event()

    def publisher() -> None:
        for n in range(24):
            publish(live, broken if n % 4 == 3 else versions[n % 3])
            time.sleep(0.003)
        publish(live, versions[2])
        done.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    scored: list[Record] = []
    while not done.is_set() or len(scored) < 5000:
        batch = [Record(body=bodies[(len(scored) + i) % len(bodies)]) for i in range(64)]
        h.scorer.process(Batch(batch))
        scored.extend(batch)
    thread.join()
    h.scorer.process(Batch([]))  # one more poll after the last publication

    assert all(r.score is not None and r.session and r.template for r in scored)
    assert h.metric("logminer_scoring_records_total") == len(scored)
    assert h.scorer.live_bundle.card.version == 3
    assert h.metric("logminer_scoring_model_loads_total", role="live", result="loaded") >= 2


def test_a_bundle_the_runtime_cannot_use_is_refused_not_raised(tmp_path):
    """A build failure other than BundleError (here: a broken vocabulary map) is a refusal."""
    import pytest
    from prometheus_client import CollectorRegistry

    from sidecar.scoring.bundle import BundleError
    from sidecar.scoring.reload import BundleWatcher, ReloadMetrics

    def broken_build(bundle):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    watcher = BundleWatcher(str(Path(__file__).parents[1] / "testdata/bundles/tiny"), "live",
                            broken_build, ReloadMetrics(CollectorRegistry()), 0.0, time.monotonic)
    with pytest.raises(BundleError, match="cannot be used"):
        watcher.load()

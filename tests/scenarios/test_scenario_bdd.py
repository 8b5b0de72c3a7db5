"""Every generated feature parses with Cucumber's official parser (gherkin-official), and the
generated skeleton lets pytest-bdd collect and run every scenario (pending: skipped, never
failed) - on a committed HDFS slice always, and on the HDFS data of ``../shared/data`` when it
is there (Loghub data: research or academic use only, see tests/testdata/scenarios/README.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from gherkin import Compiler, Parser
from support import TESTDATA

from sidecar.scoring.datasets import SessionSource

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

INPUTS = {
    "committed raw slice": {"logs": (TESTDATA / "scenarios" / "hdfs_slice.log.gz",)},
    "committed key sequences": {
        "model": TESTDATA / "bundles" / "tiny",
        "sessions": (SessionSource(TESTDATA / "bundles" / "hdfs_sample" / "abnormal.txt"),)},
    "shared raw HDFS_5k": {"logs": (SHARED / "hdfs_raw_labelled" / "HDFS_5k.log",)},
    "shared key sequences": {"sessions": (SessionSource.parse(
        str(SHARED / "hdfs_100k_sessions" / "hdfs_100k_sessions.csv")
        + "?deep_loglizer_split=test"),)},
}


def inputs_of(config: dict) -> list[Path]:
    return [*config.get("logs", ()), *(s.path for s in config.get("sessions", ()))]


@pytest.mark.parametrize("name", INPUTS)
def test_features_parse_and_pytest_bdd_runs_every_scenario(name, scenarios):
    config = INPUTS[name]
    missing = [path for path in inputs_of(config) if not path.exists()]
    if missing:
        pytest.skip(f"shared data not here: {missing[0]}")
    report = scenarios(**config)
    features = sorted(report.out.glob("*.feature"))
    assert len(features) == len(report.features) == 1
    pickles = []
    for path in features:
        document = Parser().parse(path.read_text(encoding="utf-8"))
        pickles += Compiler().compile({**document, "uri": str(path)})
    (feature,) = report.features
    assert len(pickles) == sum(max(len(flow.examples), 1)
                               for flow in feature.common + feature.anomalous) > 0
    assert any("@anomaly" in [t["name"] for t in p["tags"]] for p in pickles)

    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "-W", "error::pytest.PytestUnknownMarkWarning", str(report.out)],
                         cwd=report.out, capture_output=True, text=True, timeout=120)
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.fullmatch(rf"{len(pickles)} skipped in [\d.]+s", summary), run.stdout
    assert "pending steps: a_session, the_model, the_system_logs" in run.stdout

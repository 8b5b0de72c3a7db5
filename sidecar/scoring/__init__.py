"""Anomaly scoring: model bundles, sessions, the LiteRT runner and the pipeline stage.

``Scorer`` is the stage (settings in ``ScoringSettings``); ``load_bundle`` verifies a
bundle directory; ``SessionModel`` and ``WindowRunner`` score key sequences directly
(evaluation, benchmarks). Nothing here imports TensorFlow.
"""

from sidecar.scoring.bundle import Bundle, BundleError, load_bundle
from sidecar.scoring.runner import SessionModel, Verdicts, WindowRunner, judge, reference_windows
from sidecar.scoring.scorer import Scorer, ScoringSettings, SessionAlert
from sidecar.scoring.sessions import SessionKeyer, SessionTable

__all__ = [
    "Bundle",
    "BundleError",
    "Scorer",
    "ScoringSettings",
    "SessionAlert",
    "SessionKeyer",
    "SessionModel",
    "SessionTable",
    "Verdicts",
    "WindowRunner",
    "judge",
    "load_bundle",
    "reference_windows",
]

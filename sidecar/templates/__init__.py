"""Template mining: the online miner, its crash-safe store and the bundle vocabulary map.

Templates are mined from *sanitized* bodies only, so neither the table nor a model's
vocabulary carries personal data (design invariant 5).
"""

from sidecar.templates.miner import (
    OVERFLOW,
    UNKNOWN_ID,
    WILDCARD,
    MaskPattern,
    MatchResult,
    MinerSettings,
    MinerState,
    MinerStats,
    TemplateMiner,
    TemplateRecord,
)
from sidecar.templates.store import TemplateStoreError, load_miner, save_miner
from sidecar.templates.vocabulary import VocabularyMap

__all__ = [
    "OVERFLOW",
    "UNKNOWN_ID",
    "WILDCARD",
    "MaskPattern",
    "MatchResult",
    "MinerSettings",
    "MinerState",
    "MinerStats",
    "TemplateMiner",
    "TemplateRecord",
    "TemplateStoreError",
    "VocabularyMap",
    "load_miner",
    "save_miner",
]

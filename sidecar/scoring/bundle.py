"""Load and verify a model bundle directory ``models/<name>/``.

Strategy: read every file of the bundle into memory once, check each against the
sha256 the card lists, then check the card, the vocabulary and both models' input
and output signatures against each other. The runners later build their
interpreters from these verified bytes, so a file replaced after the check cannot
slip in. Any problem raises ``BundleError`` naming the bundle and the problem, and
the bundle is refused as a whole. A bundle holds sanitized templates only, so the
messages may quote card values; they never quote log records.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from sidecar.scoring.sessions import SessionKeyer, TextPattern

MODEL_FILE = "model.tflite"
WINDOW_FILE = "window.tflite"
VOCAB_FILE = "vocab.json"
CARD_FILE = "card.json"
SIGNATURE = "serving_default"
HASHED_FILES = (MODEL_FILE, WINDOW_FILE, VOCAB_FILE)


class BundleError(ValueError):
    """A bundle that must not be used; the message says which bundle and why."""


@dataclass(frozen=True)
class Architecture:
    """The network shape the card declares (checked against the model signatures)."""

    layers: int
    hidden: int
    embedding_dim: int
    vocab_size: int
    quantization: str


@dataclass(frozen=True)
class ScoringDefaults:
    """How the bundle's author meant it to be scored; settings may override each."""

    g: int
    window: int
    session_key: str
    idle_timeout_seconds: float
    end_marker: str | None


@dataclass(frozen=True)
class ModelCard:
    """``card.json``: identity, provenance and validation of a bundle."""

    name: str
    version: int
    created: datetime.datetime
    sha256: Mapping[str, str]
    architecture: Architecture
    scoring: ScoringDefaults
    training: Mapping[str, Any]
    template_distribution: Mapping[str, float]
    validation: Mapping[str, Any]


@dataclass(frozen=True)
class Vocabulary:
    """``vocab.json``: model class index -> template text, and the special keys."""

    templates: Mapping[int, str]
    unknown_key: int
    start_key: int
    end_key: int
    size: int


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: card, vocabulary and the bytes of both models."""

    path: Path
    card: ModelCard
    vocab: Vocabulary
    model: bytes
    window_model: bytes

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the step model's state inputs, in state-array order: h0, c0, h1, c1, ..."""
        return tuple(f"{part}{layer}" for layer in range(self.card.architecture.layers)
                     for part in "hc")

    def describe(self) -> str:
        """``name v<version> (<sha256 prefix>)``, for logs."""
        return f"{self.card.name} v{self.card.version} ({self.card.sha256[MODEL_FILE][:12]})"


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify the bundle in directory ``path``.

    Raises BundleError if a file is missing or unreadable, a file's sha256 differs
    from the card's, the card or vocabulary is malformed or inconsistent, or either
    model's signature does not match the card's architecture.
    """
    path = Path(path)
    where = f"bundle {path}"
    data = {}
    for name in (CARD_FILE, *HASHED_FILES):
        try:
            data[name] = (path / name).read_bytes()
        except OSError as exc:
            raise BundleError(f"{where}: cannot read {name} ({exc.strerror})") from None
    card_json = _json(data[CARD_FILE], f"{where}: {CARD_FILE}")
    hashes = _get(card_json, "sha256", dict, f"{where}: {CARD_FILE}")
    for name in HASHED_FILES:
        listed = hashes.get(name)
        if hashlib.sha256(data[name]).hexdigest() != str(listed).lower():
            raise BundleError(f"{where}: {name} does not match the sha256 in {CARD_FILE}")
    vocab_where = f"{where}: {VOCAB_FILE}"
    vocab = _parse_vocab(_json(data[VOCAB_FILE], vocab_where), vocab_where)
    card = _parse_card(card_json, vocab, f"{where}: {CARD_FILE}")
    bundle = Bundle(path, card, vocab, data[MODEL_FILE], data[WINDOW_FILE])
    arch = card.architecture
    batch_state = (-1, arch.hidden)
    _check_signature(
        bundle.model, f"{where}: {MODEL_FILE}",
        inputs={"key": (np.int32, (-1,)), **{n: (np.float32, batch_state)
                                            for n in bundle.state_names}},
        outputs={"logits": (np.float32, (-1, arch.vocab_size)),
                 **{f"{n}_out": (np.float32, batch_state) for n in bundle.state_names}})
    _check_signature(
        bundle.window_model, f"{where}: {WINDOW_FILE}",
        inputs={"keys": (np.int32, (-1, card.scoring.window))},
        outputs={"logits": (np.float32, (-1, arch.vocab_size))})
    return bundle


def _json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise BundleError(f"{where}: not valid JSON") from None
    if not isinstance(value, dict) or value.get("format") != 1:
        raise BundleError(f"{where}: expected a JSON object with \"format\": 1")
    return value


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         minimum: float | None = None) -> Any:
    """``obj[key]`` if it has type ``kind`` (bools are not numbers) and is >= ``minimum``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    value = obj.get(key)
    ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        bound = f" >= {minimum}" if minimum is not None else ""
        got = repr(value) if isinstance(value, (int, float)) else type(value).__name__
        raise BundleError(f"{where}: {key}: expected {names}{bound}, got {got}")
    return value


def _parse_vocab(obj: Mapping[str, Any], where: str) -> Vocabulary:
    size = _get(obj, "vocab_size", int, where, minimum=3)
    unknown = _get(obj, "unknown_key", int, where)
    start = _get(obj, "start_key", int, where, minimum=1)
    end = _get(obj, "end_key", int, where, minimum=1)
    if unknown != 0:
        raise BundleError(f"{where}: unknown_key must be 0")
    if start >= size or end >= size or start == end:
        raise BundleError(f"{where}: start_key and end_key must be distinct keys below vocab_size")
    templates: dict[int, str] = {}
    for key, text in _get(obj, "templates", dict, where).items():
        index = int(key) if isinstance(key, str) and key.isdigit() else -1
        if not 0 < index < size or index in (start, end) or not isinstance(text, str):
            raise BundleError(f"{where}: templates: key {key!r} is not a template key "
                              "(1 <= key < vocab_size, not start/end) with a text")
        templates[index] = text
    return Vocabulary(templates, unknown, start, end, size)


def _parse_card(obj: Mapping[str, Any], vocab: Vocabulary, where: str) -> ModelCard:
    arch = _get(obj, "architecture", dict, where)
    if arch.get("type") != "lstm":
        raise BundleError(f"{where}: architecture.type must be \"lstm\"")
    architecture = Architecture(
        layers=_get(arch, "layers", int, f"{where}: architecture", minimum=1),
        hidden=_get(arch, "hidden", int, f"{where}: architecture", minimum=1),
        embedding_dim=_get(arch, "embedding_dim", int, f"{where}: architecture", minimum=1),
        vocab_size=_get(arch, "vocab_size", int, f"{where}: architecture", minimum=3),
        quantization=_get(arch, "quantization", str, f"{where}: architecture"))
    if architecture.vocab_size != vocab.size:
        raise BundleError(f"{where}: architecture.vocab_size {architecture.vocab_size} != "
                          f"vocab.json vocab_size {vocab.size}")
    sc, sc_where = _get(obj, "scoring", dict, where), f"{where}: scoring"
    scoring = ScoringDefaults(
        g=_get(sc, "g", int, sc_where, minimum=1),
        window=_get(sc, "window", int, sc_where, minimum=1),
        session_key=_get(sc, "session_key", str, sc_where),
        idle_timeout_seconds=float(_get(sc, "idle_timeout_seconds", (int, float), sc_where,
                                        minimum=0.001)),
        end_marker=_get(sc, "end_marker", (str, type(None)), sc_where))
    try:
        SessionKeyer(scoring.session_key)
        if scoring.end_marker is not None:
            TextPattern(scoring.end_marker)
    except ValueError as exc:
        raise BundleError(f"{sc_where}: {exc}") from None
    created = _get(obj, "created", str, where)
    try:
        created_at = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(f"{where}: created: not an ISO-8601 time") from None
    return ModelCard(
        name=_get(obj, "name", str, where),
        version=_get(obj, "version", int, where, minimum=0),
        created=created_at,
        sha256=dict(_get(obj, "sha256", dict, where)),
        architecture=architecture,
        scoring=scoring,
        training=_get(obj, "training", dict, where),
        template_distribution=_get(obj, "template_distribution", dict, where),
        validation=_get(obj, "validation", dict, where))


Spec = Mapping[str, tuple[type, tuple[int, ...]]]


def _check_signature(model: bytes, where: str, inputs: Spec, outputs: Spec) -> None:
    """The model's ``serving_default`` signature has exactly these names, dtypes and shapes.

    A shape is compared on its signature (-1 = dynamic); a dimension expected as a
    number may also be dynamic in the model (a window model may accept any length).
    """
    try:
        interpreter = Interpreter(model_content=model)
        runner = interpreter.get_signature_runner(SIGNATURE)
        found = {"input": runner.get_input_details(), "output": runner.get_output_details()}
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{where}: not a usable LiteRT model with signature {SIGNATURE!r} "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
    for kind, expected in (("input", inputs), ("output", outputs)):
        details = found[kind]
        if set(details) != set(expected):
            raise BundleError(
                f"{where}: {kind}s are {sorted(details)}, expected {sorted(expected)}")
        for name, (dtype, shape) in expected.items():
            actual = tuple(int(d) for d in details[name]["shape_signature"])
            fits = len(actual) == len(shape) and all(
                a in (s, -1) for a, s in zip(actual, shape, strict=True))
            if details[name]["dtype"] != dtype or not fits:
                raise BundleError(
                    f"{where}: {kind} {name} is {np.dtype(details[name]['dtype']).name}"
                    f"{list(actual)}, expected {np.dtype(dtype).name}{list(shape)}")

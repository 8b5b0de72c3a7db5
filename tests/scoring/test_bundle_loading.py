"""Loading a bundle: the tiny fixture loads; corrupted or mismatched bundles are refused."""

from __future__ import annotations

import json

import pytest

from sidecar.scoring.bundle import BundleError, load_bundle
from sidecar.scoring.runner import SessionModel


def test_tiny_bundle_loads_with_its_card(tiny):
    card = tiny.card
    assert card.name == "tiny" and card.version == 1
    assert card.architecture.layers == 2 and card.architecture.quantization == "dynamic_range_int8"
    assert card.scoring.session_key == r"regex:blk_-?\d+" and card.scoring.end_marker is None
    assert 1 <= card.scoring.g < tiny.vocab.size
    assert tiny.vocab.unknown_key == 0 and tiny.vocab.size == card.architecture.vocab_size
    assert tiny.vocab.templates[17] == "<*>PendingReplicationMonitor timed out block<*>"
    assert tiny.state_names == ("h0", "c0", "h1", "c1")
    assert set(card.validation) >= {"precision", "recall", "f1", "fpr", "roc_auc", "g"}


def test_a_corrupted_model_is_refused(make_bundle, tiny):
    corrupted = bytearray(tiny.model)
    corrupted[len(corrupted) // 2] ^= 0xFF
    path = make_bundle(files={"model.tflite": bytes(corrupted)}, rehash=False)
    with pytest.raises(BundleError, match=r"model\.tflite does not match the sha256"):
        load_bundle(path)


@pytest.mark.parametrize("name", ["window.tflite", "vocab.json"])
def test_every_listed_file_is_checked(make_bundle, name):
    path = make_bundle()
    with (path / name).open("ab") as handle:
        handle.write(b" ")
    with pytest.raises(BundleError, match=f"{name} does not match the sha256"):
        load_bundle(path)


def test_a_missing_file_is_refused(make_bundle):
    path = make_bundle()
    (path / "window.tflite").unlink()
    with pytest.raises(BundleError, match=r"cannot read window\.tflite"):
        load_bundle(path)


def test_models_swapped_with_matching_hashes_are_refused_by_signature(make_bundle, tiny):
    path = make_bundle(files={"model.tflite": tiny.window_model, "window.tflite": tiny.model})
    with pytest.raises(BundleError, match=r"model\.tflite: inputs are \['keys'\]"):
        load_bundle(path)


def test_a_card_that_disagrees_with_the_model_shape_is_refused(make_bundle):
    path = make_bundle(card={"architecture": {"hidden": 64}})
    with pytest.raises(BundleError, match=r"model\.tflite: input h0 is float32\[-1, 32\], "
                                          r"expected float32\[-1, 64\]"):
        load_bundle(path)


def test_a_model_with_fewer_layers_than_the_card_is_refused(make_bundle):
    path = make_bundle(card={"architecture": {"layers": 3}})
    with pytest.raises(BundleError, match="inputs are"):
        load_bundle(path)


def test_a_vocabulary_of_another_size_is_refused(make_bundle, tiny):
    vocab = json.loads((make_bundle("src") / "vocab.json").read_text())
    vocab["vocab_size"] = 40
    path = make_bundle(files={"vocab.json": json.dumps(vocab).encode()})
    with pytest.raises(BundleError, match=r"vocab_size 31 != vocab\.json vocab_size 40"):
        load_bundle(path)


def test_a_model_that_is_not_a_model_is_refused(make_bundle):
    path = make_bundle(files={"model.tflite": b"not a flatbuffer at all"})
    with pytest.raises(BundleError, match="not a usable LiteRT model"):
        load_bundle(path)


@pytest.mark.parametrize(("card", "message"), [
    ({"format": 2}, "format"),
    ({"version": "one"}, "version: expected int"),
    ({"scoring": {"g": 0}}, "g: expected int >= 1, got 0"),
    ({"scoring": {"g": True}}, "g: expected int"),
    ({"scoring": {"session_key": "field:x"}}, "session key 'field:x'"),
    ({"scoring": {"session_key": "regex:(a"}}, "not valid RE2 syntax"),
    ({"scoring": {"end_marker": "x*"}}, "matches the empty string"),
    ({"scoring": {"idle_timeout_seconds": 0}}, "idle_timeout_seconds"),
    ({"architecture": {"type": "gru"}}, "architecture.type"),
    ({"created": "yesterday"}, "created: not an ISO-8601 time"),
])
def test_malformed_cards_are_refused(make_bundle, card, message):
    with pytest.raises(BundleError, match=message):
        load_bundle(make_bundle(card=card))


def test_vocabulary_keys_must_be_template_keys(make_bundle):
    vocab = json.loads((make_bundle("src") / "vocab.json").read_text())
    vocab["templates"]["29"] = "the start key has no template"
    path = make_bundle(files={"vocab.json": json.dumps(vocab).encode()})
    with pytest.raises(BundleError, match="key '29' is not a template key"):
        load_bundle(path)


def test_a_model_with_non_finite_output_is_refused(monkeypatch, tiny):
    import numpy as np

    from sidecar.scoring import runner

    def nan_step(self, keys, state):
        return np.full((len(keys), tiny.vocab.size), np.nan, np.float32), list(state)

    monkeypatch.setattr(runner.StepRunner, "step", nan_step)
    with pytest.raises(BundleError, match="non-finite output"):
        SessionModel(tiny, g=tiny.card.scoring.g, max_sessions=10)

"""Keras -> TFLite export: parity in LiteRT within the stated tolerance, and a gate that can fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.bundle import CATALOG_FILE, ENVELOPE_FILE, MODEL_FILE, parse_manifest
from shared.catalog import parse_catalog
from shared.signing import load_public_key, verify


@pytest.fixture(scope="module")
def keras_model(trained_run: Path):  # type: ignore[no-untyped-def]
    import keras

    return keras.models.load_model(trained_run / "model.keras")


@pytest.fixture(scope="module")
def histories(trained_run: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(trained_run / "histories.npz")
    return data["items"], data["weights"]


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_tflite_matches_keras_within_tolerance(keras_model, histories, variant: str) -> None:  # type: ignore[no-untyped-def]
    from cloud_trainer.export import check_parity, to_tflite
    from cloud_trainer.model import extract_weights

    weights = extract_weights(keras_model)
    model_bytes = to_tflite(weights, histories[0].shape[1], 20, variant, histories)
    report = check_parity(keras_model, model_bytes, variant, *histories)
    assert report.ok, report.to_json()
    if variant == "float32":
        assert report.mean_overlap_at_10 == 1.0


def test_parity_check_catches_a_wrong_model(keras_model, histories) -> None:  # type: ignore[no-untyped-def]
    from cloud_trainer.export import check_parity, to_tflite
    from cloud_trainer.model import extract_weights

    weights = extract_weights(keras_model)
    rng = np.random.default_rng(0)
    weights.item_vectors = rng.permutation(weights.item_vectors, axis=1)  # scramble which item is which
    model_bytes = to_tflite(weights, histories[0].shape[1], 20, "float32", histories)
    assert not check_parity(keras_model, model_bytes, "float32", *histories).ok


def test_bundle_is_signed_and_self_consistent(int8_bundle: Path, keys: Path) -> None:
    signed = verify((int8_bundle / ENVELOPE_FILE).read_bytes(), load_public_key((keys / "signing.pub").read_bytes()))
    manifest = parse_manifest(signed)
    assert manifest.version == 1000 and manifest.model.variant == "int8"
    assert manifest.files[MODEL_FILE].length == (int8_bundle / MODEL_FILE).stat().st_size
    catalog = parse_catalog((int8_bundle / CATALOG_FILE).read_bytes(), manifest.model.num_items)
    assert catalog.popular and catalog.items[catalog.popular[0]].title
    assert json.loads(signed)["training"]["parity"]["ok"] is True


def test_blocked_top_k_in_the_graph_is_exact() -> None:
    """The graph's block-pruned top-K returns exactly numpy's top-K, tail items and block items alike."""
    from cloud_trainer.export import TOP_K_BLOCK, litert_runner, to_tflite
    from cloud_trainer.model import ModelWeights

    n_items, dim, history, top_k = 60 * TOP_K_BLOCK + 77, 8, 5, 20  # 77 items left over after the blocks
    rng = np.random.default_rng(3)
    weights = ModelWeights(
        history_embedding=rng.normal(0, 1, (n_items, dim)).astype(np.float32),
        projection=rng.normal(0, 1, (dim, dim)).astype(np.float32),
        projection_bias=np.zeros(dim, np.float32),
        item_vectors=rng.normal(0, 1, (dim, n_items)).astype(np.float32),
        item_bias=rng.normal(0, 0.1, n_items).astype(np.float32),
    )
    weights.item_bias[[n_items - 5, 3 * TOP_K_BLOCK + 9]] = 1000.0  # one tail item and one block item always win
    items = rng.integers(0, n_items, (30, history)).astype(np.int32)
    mix = rng.random((30, history)).astype(np.float32)
    _, runner = litert_runner(to_tflite(weights, history, top_k, "float32", (items, mix), explanations=False))
    for h, w in zip(items, mix, strict=True):
        out = runner(history_items=h[None], history_weights=w[None])  # type: ignore[operator]
        scores = ((w @ weights.history_embedding[h]) @ weights.projection) @ weights.item_vectors + weights.item_bias
        expected = np.argsort(-scores, kind="stable")[:top_k]
        got = out["item_indices"][0]
        assert sorted(got.tolist()) == sorted(expected.tolist())
        assert {n_items - 5, 3 * TOP_K_BLOCK + 9} <= set(got.tolist())
        np.testing.assert_allclose(out["scores"][0], scores[got], rtol=1e-4, atol=1e-3)

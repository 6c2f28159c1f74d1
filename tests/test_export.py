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
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.gates import check_parity
    from cloud_trainer.models.dot_product import extract_weights

    weights = extract_weights(keras_model)
    model_bytes = to_tflite(weights, histories[0].shape[1], 20, variant, histories)
    report = check_parity(keras_model, model_bytes, variant, *histories)
    assert report.ok, report.to_json()
    if variant == "float32":
        assert report.mean_overlap_at_10 == 1.0


def test_parity_check_catches_a_wrong_model(keras_model, histories) -> None:  # type: ignore[no-untyped-def]
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.gates import check_parity
    from cloud_trainer.models.dot_product import extract_weights

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
    gate = json.loads(signed)["training"]["quality_gate"]
    assert gate["ok"] is True and gate["histories"] > 100 and gate["float_recall_at_20"] > 0, gate


def test_recall_at_on_hand_computed_cases() -> None:
    from cloud_trainer.evaluation.metrics import recall_at

    ranked = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [3, 2, 1]])
    targets = np.array([[1, 9, -1], [7, -1, -1], [-1, -1, -1], [1, 2, 3]])
    # row 0: 1 hit of min(2, 2); row 1: 0 of 1; row 2: no targets, skipped; row 3: 2 of min(2, 3)
    assert recall_at(ranked, targets, k=2) == pytest.approx((0.5 + 0.0 + 1.0) / 3)


def test_quantization_gate_allows_at_most_a_two_percent_relative_drop() -> None:
    from cloud_trainer.delivery.gates import QualityGate

    assert QualityGate("int8", 100, 0.5, 0.49).ok  # exactly 2% lower
    assert not QualityGate("int8", 100, 0.5, 0.489).ok
    assert QualityGate("int8", 100, 0.5, 0.6).ok  # better is fine


def test_quality_gate_passes_the_real_int8_export_and_refuses_a_degraded_one(  # type: ignore[no-untyped-def]
    keras_model, trained_run: Path
) -> None:
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.gates import quality_gate
    from cloud_trainer.models.dot_product import extract_weights

    data = np.load(trained_run / "histories.npz")
    items, weights, targets = data["items"], data["weights"], data["targets"]
    good = to_tflite(extract_weights(keras_model), items.shape[1], 20, "int8", (items, weights))
    report = quality_gate(keras_model, good, "int8", items, weights, targets)
    assert report.ok and report.float_recall_at_20 > 0.05, report.to_json()
    degraded = extract_weights(keras_model)  # noisy item vectors, and the repeat term lost
    rng = np.random.default_rng(1)
    degraded.item_vectors = degraded.item_vectors + rng.normal(0, 2 * degraded.item_vectors.std(),
                                                               degraded.item_vectors.shape).astype(np.float32)
    degraded.repeat_weight = 0.0
    bad = to_tflite(degraded, items.shape[1], 20, "int8", (items, weights))
    report = quality_gate(keras_model, bad, "int8", items, weights, targets)
    assert not report.ok and report.relative_drop > 0.02, report.to_json()


def test_blocked_top_k_in_the_graph_is_exact() -> None:
    """The graph's block-pruned top-K returns exactly numpy's top-K, tail items and block items alike."""
    from cloud_trainer.delivery.export import TOP_K_BLOCK, to_tflite
    from cloud_trainer.delivery.litert import litert_runner
    from cloud_trainer.models.dot_product import ModelWeights

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


def test_auto_variant_falls_back_to_float16_when_int8_cannot_order_the_scores(  # type: ignore[no-untyped-def]
    keras_model, trained_run: Path, keys: Path, tmp_path: Path
) -> None:
    """One item far above the rest stretches int8's single scale for the score vector until the
    others share a few steps (as 10^5+ items do): int8 is refused, float16 is bundled, and the
    manifest says so. An explicit --variant int8 is still refused."""
    import shutil

    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from cloud_trainer.errors import ParityError
    from cloud_trainer.models.dot_product import extract_weights, model_from_weights

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("bundle*", "report"))
    weights = extract_weights(keras_model)
    weights.item_bias = weights.item_bias.copy()
    weights.item_bias[0] = 1e4
    config = json.loads((run / "config.json").read_text())
    model_from_weights(weights, int(config["history_length"])).save(run / "model.keras")
    manifest = build_bundle(run, keys / "signing.key", tmp_path / "auto", BundleOptions(version=7))
    assert manifest.model.variant == "float16"
    assert "int8" in manifest.training["variants_refused"]
    assert manifest.training["parity"]["ok"]
    with pytest.raises(ParityError):
        build_bundle(run, keys / "signing.key", tmp_path / "int8", BundleOptions(variant="int8", version=8))

"""The factorized model: closed-form fit, distinct pooling and the in-graph repeat term."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_trainer.data.events_io import KIND_CODES, EventTable, ReadReport
from shared.events import EventKind


def toy_table(users: int = 40, items: int = 15, events: int = 300, seed: int = 0) -> EventTable:
    rng = np.random.default_rng(seed)
    return EventTable(
        user_ids=[f"u{n}" for n in range(users)], item_ids=[f"i{n}" for n in range(items)],
        user=rng.integers(0, users, events).astype(np.int32), item=rng.integers(0, items, events).astype(np.int32),
        kind=np.full(events, KIND_CODES[EventKind.PURCHASE], dtype=np.int8),
        timestamp=np.sort(rng.uniform(0, 60 * 86400, events)), report=ReadReport(),
    )


def test_full_rank_factorization_scores_exactly_as_ease() -> None:
    """At full rank, pooling each distinct history item once gives EASE's scores (Steck 2019), up
    to each history item's own (diagonal) score, which EASE sets to zero."""
    from cloud_trainer.models.ease import ease
    from cloud_trainer.models.factorized import FactorizedSettings, fit, shopper_item_matrix

    table = toy_table()
    weights = fit(table, FactorizedSettings(rank=15, trend_weight=0.0, repeat_weight=0.0))
    x = shopper_item_matrix(table, FactorizedSettings().event_weights()).toarray()
    item_item = (weights.history_embedding @ weights.projection) @ weights.item_vectors
    np.testing.assert_allclose(item_item - np.diag(np.diag(item_item)), ease(x, 200.0), atol=1e-5)
    assert weights.pooling == "distinct" and not weights.item_bias.any()


def test_the_spectrum_comes_from_products_with_the_sparse_matrix() -> None:
    """The rank-r model keeps the Gram matrix's top r eigenpairs, found by subspace iteration with
    products by the sparse shopper-item matrix alone (shoppers taken in blocks)."""
    from cloud_trainer.models.factorized import FactorizedSettings, gram_spectrum, gram_times, shopper_item_matrix

    table = toy_table(users=400, items=60, events=4000, seed=3)
    table.item = (table.item % 6 + 6 * (table.user % 10)).astype(np.int32)  # ten taste groups of six items
    x = shopper_item_matrix(table, FactorizedSettings().event_weights())
    gram = (x.T @ x).toarray().astype(np.float64)
    q = np.random.default_rng(0).normal(size=(60, 5))
    np.testing.assert_allclose(gram_times(x, q, block=7), gram @ q, rtol=1e-5, atol=1e-4)  # float32 products
    exact = np.linalg.eigvalsh(gram)[::-1]
    spectrum = gram_spectrum(x, 10, seed=0, power_iterations=8)
    np.testing.assert_allclose(spectrum.values[:10], exact[:10], rtol=1e-5)
    np.testing.assert_allclose(spectrum.vectors.T @ spectrum.vectors, np.eye(10), atol=1e-8)
    top = spectrum.vectors[:, :3]
    np.testing.assert_allclose(gram @ top, top * spectrum.values[:3], atol=1e-5 * spectrum.values[0])


def test_trend_bias_counts_only_the_last_days() -> None:
    from cloud_trainer.models.factorized import trend

    table = toy_table()
    recent = table.timestamp >= table.timestamp.max() - 14 * 86400
    expected = np.log1p(np.bincount(table.item[recent], minlength=15))
    np.testing.assert_allclose(trend(table, 14), expected)
    assert trend(table, 14).sum() < trend(table, 90).sum()


def test_distinct_pooling_counts_each_item_once() -> None:
    from cloud_trainer.models.dot_product import distinct_positions, history_counts, history_present

    items = np.array([[7, 3, 7, 7, 2, 0, 0], [0, 5, 0, 0, 0, 0, 0]], dtype=np.int32)  # item 0 twice
    weights = np.array([[0.3, 0.2, 0.2, 0.1, 0.2, 0.0, 0.0],  # the zeros are padding
                        [0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # int8 turned 5's weight to 0
    present = history_present(items, weights)
    counts = history_counts(items, present, 8)
    np.testing.assert_array_equal(counts.numpy(), [[0, 0, 1, 1, 0, 0, 0, 3], [2, 0, 0, 0, 0, 1, 0, 0]])
    np.testing.assert_allclose(distinct_positions(items, present, counts).numpy(),
                               [[1 / 3, 1, 1 / 3, 1 / 3, 1, 0, 0], [1 / 2, 1, 1 / 2, 0, 0, 0, 0]], rtol=1e-6)
    # recency: position p (0 = the latest event) weighs 0.5**p; 7's three positions share their mean
    np.testing.assert_allclose(distinct_positions(items, present, counts, 0.5).numpy(),
                               [[1 / 3, 0.5, 1 / 12, 1 / 24, 1 / 16, 0, 0], [1 / 2, 0.5, 1 / 8, 0, 0, 0, 0]],
                               rtol=1e-6)


def numpy_scores(weights, items: np.ndarray, mix: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Scores by the definition: each distinct item once, with the mean of recency**p over its positions."""
    present = mix > 0
    distinct = sorted(set(items[present].tolist()))
    coefficient = [np.mean([weights.recency**p for p in np.flatnonzero(present & (items == i))]) for i in distinct]
    pooled = (np.asarray(coefficient)[:, None] * weights.history_embedding[distinct]).sum(axis=0)
    user = pooled @ weights.projection + weights.projection_bias
    scores = user @ weights.item_vectors + weights.item_bias
    np.add.at(scores, items[present], weights.repeat_weight)
    return scores


@pytest.mark.parametrize("recency", [1.0, 0.8])
def test_repeat_term_in_the_graph_is_exact_and_explained(recency: float) -> None:
    """Top-K of dot product + repeat from the dot product's top-K plus the history: the same items
    and scores as scoring every item, for histories whose items score low without their repeats;
    with recency weights, the graph (Keras and TFLite) pools by their definition."""
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.litert import litert_runner
    from cloud_trainer.models.dot_product import ModelWeights, model_from_weights

    n_items, dim, length, top_k = 500, 8, 12, 10
    rng = np.random.default_rng(5)
    weights = ModelWeights(
        history_embedding=rng.normal(0, 1, (n_items, dim)).astype(np.float32),
        projection=np.eye(dim, dtype=np.float32), projection_bias=np.zeros(dim, np.float32),
        item_vectors=rng.normal(0, 1, (dim, n_items)).astype(np.float32),
        item_bias=rng.normal(0, 0.1, n_items).astype(np.float32), pooling="distinct", repeat_weight=4.0,
        recency=recency,
    )
    items = rng.integers(0, 40, (40, length)).astype(np.int32)  # few distinct items: many repeats
    mix = rng.random((40, length)).astype(np.float32)
    items[:, 9:], mix[:, 9:] = 0, 0.0  # padding: item 0, weight 0
    items[:5, 8], mix[:5, 8] = 0, 1e-4  # item 0 as a real (oldest) event
    _, runner = litert_runner(to_tflite(weights, length, top_k, "float32", (items, mix)))
    keras_scores = model_from_weights(weights, length).predict([items, mix], verbose=0)
    for h, w, from_keras in zip(items, mix, keras_scores, strict=True):
        expected = numpy_scores(weights, h, w)
        np.testing.assert_allclose(from_keras, expected, rtol=1e-4, atol=1e-3)
        out = runner(history_items=h[None], history_weights=w[None])  # type: ignore[operator]
        got = out["item_indices"][0]
        assert len(set(got.tolist())) == top_k
        assert sorted(got.tolist()) == sorted(np.argsort(-expected, kind="stable")[:top_k].tolist())
        np.testing.assert_allclose(out["scores"][0], expected[got], rtol=1e-4, atol=1e-3)
        # explanations add up to each score, biases aside
        np.testing.assert_allclose(out["contributions"][0].sum(axis=0), expected[got] - weights.item_bias[got],
                                   rtol=1e-4, atol=1e-3)
    assert any(set(h[:9].tolist()) & set(runner(history_items=h[None], history_weights=w[None])["item_indices"][0]  # type: ignore[operator]
                                                .tolist()) for h, w in zip(items, mix, strict=True))


def test_long_histories_explain_their_most_recent_positions() -> None:
    from cloud_trainer.delivery.export import EXPLAINED_POSITIONS, to_tflite
    from cloud_trainer.delivery.litert import litert_runner
    from cloud_trainer.models.dot_product import ModelWeights

    n_items, dim, length, top_k = 300, 4, EXPLAINED_POSITIONS + 30, 10
    rng = np.random.default_rng(2)
    weights = ModelWeights(
        history_embedding=rng.normal(0, 1, (n_items, dim)).astype(np.float32),
        projection=np.eye(dim, dtype=np.float32), projection_bias=np.zeros(dim, np.float32),
        item_vectors=rng.normal(0, 1, (dim, n_items)).astype(np.float32),
        item_bias=np.zeros(n_items, np.float32), pooling="distinct", repeat_weight=1.0,
    )
    items = rng.permutation(n_items)[:length].astype(np.int32)[None]  # distinct items
    mix = np.full((1, length), 1.0 / length, dtype=np.float32)
    _, runner = litert_runner(to_tflite(weights, length, top_k, "float32", (items, mix)))
    out = runner(history_items=items, history_weights=mix)  # type: ignore[operator]
    got = out["item_indices"][0]
    assert out["contributions"].shape == (1, EXPLAINED_POSITIONS, top_k)
    shares = weights.history_embedding[items[0][:EXPLAINED_POSITIONS]] @ weights.item_vectors[:, got]
    shares += np.equal.outer(items[0][:EXPLAINED_POSITIONS], got)  # the repeat term, weight 1
    np.testing.assert_allclose(out["contributions"][0], shares, rtol=1e-4, atol=1e-4)

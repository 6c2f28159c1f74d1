"""Cold-start items: side features by hand, the ridge map, and new items joining a model that ranks them
like the trained items they resemble, in the int8 LiteRT graph the agents run."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_trainer.models.dot_product import ModelWeights
from cloud_trainer.models.side_features import (
    FeatureSpace,
    SideFeatureSettings,
    SparseRows,
    extend_with_cold_items,
    predict_item_weights,
    ridge,
    title_words,
)
from shared.catalog import CatalogItem


def test_title_words_are_distinct_lower_case_and_at_least_two_characters() -> None:
    assert title_words("12 PENCILS, TALL TUBE & RED RETROSPOT  pencils") == ["12", "pencils", "tall", "tube", "red",
                                                                            "retrospot"]
    assert title_words("A / B") == [] and title_words("") == []


@pytest.mark.filterwarnings("error")  # e.g. a division by zero for a title without known words
def test_feature_matrix_by_hand() -> None:
    known = [
        CatalogItem("1", "red mug", "kitchen", 1.0),
        CatalogItem("2", "red cup", "kitchen", 2.0),
        CatalogItem("3", "blue hat", "", 4.0),
        CatalogItem("4", "blue cap", "clothes", 8.0),
    ]
    space = FeatureSpace.fit(known, SideFeatureSettings(price_buckets=2, min_items=1))
    assert space.categories == {"clothes": 0, "kitchen": 1}
    space = FeatureSpace.fit(known, SideFeatureSettings(price_buckets=2))
    assert space.words == {"blue": 0, "red": 1}  # mug, cup, hat, cap appear in one title each
    assert space.categories == {"kitchen": 0}  # clothes: one item only
    assert space.price_edges.tolist() == pytest.approx([np.log(np.sqrt(8))])  # median of log 1, 2, 4, 8
    # columns: intercept, blue, red, kitchen, price below 2.83, price above
    x = space.matrix([CatalogItem("5", "Red BLUE bowl", "kitchen", 5.0), CatalogItem("6", "", "garden", None)])
    half = 1 / np.sqrt(2)
    assert np.allclose(x.dense(), [[1, half, half, 1, 0, 1], [1, 0, 0, 0, 0, 0]])
    assert FeatureSpace.fit(known, SideFeatureSettings(use_title=False, use_price=False)).size == 2
    # the most used names first when there are too many: "red" and "blue" (3 items each) over the rest
    many = FeatureSpace.fit(known + known[:2], SideFeatureSettings(max_names=1, min_items=1))
    assert many.words == {"red": 0} and many.categories == {"kitchen": 0}


def _sparse(x: np.ndarray) -> SparseRows:
    rows, cols = np.nonzero(x)
    return SparseRows(rows, cols, x[rows, cols], x.shape)


def test_sparse_products_equal_the_dense_ones() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 12)) * (rng.random((30, 12)) < 0.3)  # rows with 0 to 12 entries
    x[4] = 0.0
    sparse, y, w = _sparse(x), rng.standard_normal((30, 5)), rng.standard_normal((12, 5))
    assert np.array_equal(sparse.dense(), x)
    assert np.allclose(sparse.gram(), x.T @ x) and np.allclose(sparse.t_dot(y), x.T @ y)
    assert np.allclose(sparse.dot(w), x @ w)


@pytest.mark.parametrize("rows", [40, 5])  # more rows than features, and fewer
def test_ridge_is_the_penalised_least_squares_solution(rows: int) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((rows, 8)), rng.standard_normal((rows, 3))
    w = ridge(_sparse(x), y, 0.5)
    stacked = np.vstack([x, np.sqrt(0.5) * np.eye(8)])  # ridge = least squares on augmented data
    expected = np.linalg.lstsq(stacked, np.vstack([y, np.zeros((8, 3))]), rcond=None)[0]
    assert w == pytest.approx(expected, abs=1e-9)


def _two_groups() -> tuple[ModelWeights, list[CatalogItem]]:
    """Six trained items in two groups, red kitchenware and blue hats, with opposite vectors."""
    titles = ["red mug", "red cup", "red jug", "blue hat", "blue cap", "blue beret"]
    red, blue = np.array([1.0, 0.2]), np.array([-1.0, 0.3])
    vectors = np.array([red if "red" in t else blue for t in titles])
    weights = ModelWeights(
        history_embedding=vectors.astype(np.float32), projection=np.eye(2, dtype=np.float32),
        projection_bias=np.zeros(2, dtype=np.float32), item_vectors=vectors.T.astype(np.float32).copy(),
        item_bias=np.zeros(6, dtype=np.float32),
    )
    return weights, [CatalogItem(str(n), t, "", 3.0) for n, t in enumerate(titles)]


def test_new_items_get_the_vectors_of_the_trained_items_they_resemble() -> None:
    weights, known = _two_groups()
    new = [CatalogItem("r", "red bowl", "", 3.0), CatalogItem("b", "blue bonnet", "", 3.0)]
    embedding, vectors, bias = predict_item_weights(weights, known, new, SideFeatureSettings(l2=0.1))
    red, blue = weights.item_vectors[:, 0], weights.item_vectors[:, 3]
    assert vectors[:, 0] @ red > 0 > vectors[:, 0] @ blue
    assert vectors[:, 1] @ blue > 0 > vectors[:, 1] @ red
    assert embedding[0] @ red > 0 and embedding[1] @ blue > 0 and bias.shape == (2,)

    extended = extend_with_cold_items(weights, known, new, SideFeatureSettings(l2=0.1))
    assert extended.num_items == 8
    assert np.array_equal(extended.first_items(6).item_vectors, weights.item_vectors)  # trained items untouched
    assert np.array_equal(extended.history_embedding[:6], weights.history_embedding)
    with pytest.raises(ValueError, match="known items"):
        predict_item_weights(weights, known[:5], new, SideFeatureSettings())
    assert extend_with_cold_items(weights, known, [], SideFeatureSettings()) is weights


def test_the_int8_graph_recommends_a_new_item_to_shoppers_of_its_kind() -> None:
    """The agents' runtime: a history of red items puts the new red item above the new blue one, and
    a history holding only the new blue item (seen on the device) brings blue items first."""
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.litert import litert_runner

    weights, known = _two_groups()
    new = [CatalogItem("r", "red bowl", "", 3.0), CatalogItem("b", "blue bonnet", "", 3.0)]
    extended = extend_with_cold_items(weights, known, new, SideFeatureSettings(l2=0.1))
    length = 4
    histories = np.array([[0, 1, 0, 0], [3, 4, 0, 0], [7, 0, 0, 0], [2, 5, 6, 0]], dtype=np.int32)
    history_weights = np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [1, 0, 0, 0], [1 / 3] * 3 + [0]], dtype=np.float32)
    model = to_tflite(extended, length, 8, "int8", (histories, history_weights), explanations=False)
    _, run = litert_runner(model)
    red_shopper = run(history_items=histories[:1], history_weights=history_weights[:1])["item_indices"][0].tolist()
    assert set(red_shopper[:4]) == {0, 1, 2, 6}  # the red items, trained and new, then the blue ones
    blue_new = run(history_items=histories[2:3], history_weights=history_weights[2:3])["item_indices"][0].tolist()
    assert set(blue_new[:4]) == {3, 4, 5, 7}


def test_training_appends_the_items_file_s_new_items_unless_told_not_to(prepared, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import keras

    from cloud_trainer.data.events_io import read_items
    from cloud_trainer.train import TrainConfig, train

    listed, _ = read_items(prepared / "items.csv")
    runs = {}
    for n, cold_start in enumerate((True, False, True)):
        run = tmp_path / str(n)
        config = TrainConfig(events=str(prepared / "events.csv.gz"), items=str(prepared / "items.csv"),
                             test_from="2010-12-20", cold_start=cold_start, calibration_histories=64, tune=False)
        metrics = train(config, run)
        runs[cold_start] = [item["id"] for item in json.loads((run / "catalog.json").read_text())["items"]]
        assert len(runs[cold_start]) == metrics["items"] + metrics["new_items"]  # type: ignore[operator]
    trained, new = runs[False], runs[True][len(runs[False]) :]
    # the same data twice: the same model, bit for bit
    first, again = (keras.models.load_model(tmp_path / name / "model.keras") for name in ("0", "2"))
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), again.get_weights(), strict=True))
    assert runs[True][: len(trained)] == trained  # the trained items keep their indices
    assert new == sorted(set(listed) - set(trained)) and len(new) > 100

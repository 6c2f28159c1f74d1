"""Filters rank the whole catalogue: what the agent serves under ``exclude`` and ``category`` is the
model's full ranking under the same filter, not its unfiltered top K with gaps filled by popular
items.

Both checks load real bundles into the agent's own scorer (:class:`edge_agent.loaded_model.LoadedModel`)
and call the function its REST route calls. References rank every item of the catalogue:
the Keras model for a float32 bundle, and for int8 the same graph exported with K = every item
(the same weights and calibration, so the same quantization), filtered afterwards in numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.data.events_io import KIND_CODES, EventTable, read_events
from cloud_trainer.evaluation.served import HistoryEvent, stored_shoppers
from edge_agent.loaded_model import LoadedModel
from harness import manifest_of
from shared.bundle import CATALOG_FILE, MODEL_FILE
from shared.catalog import parse_catalog
from shared.events import EventKind, history_inputs
from shared.recommendation import Exclude, allowed_items, recommend

K = 20
PURCHASE = KIND_CODES[EventKind.PURCHASE]


def _agent_model(bundle: Path) -> LoadedModel:
    manifest = manifest_of(bundle)
    catalog = parse_catalog((bundle / CATALOG_FILE).read_bytes(), manifest.model.num_items)
    model = LoadedModel(manifest, (bundle / MODEL_FILE).read_bytes(), catalog)
    assert model.filters_in_graph
    return model


def _histories(table: EventTable, users: np.ndarray) -> list[list[HistoryEvent]]:
    order = np.lexsort((table.timestamp, table.user))
    bounds = np.searchsorted(table.user[order], np.arange(len(table.user_ids) + 1))
    rows = [order[bounds[u] : bounds[u + 1]] for u in users]
    return [shopper.history for shopper in stored_shoppers(table, rows, now=float(table.timestamp.max()))]


def _full_ranking(run: Path, histories: list[list[HistoryEvent]], index: dict[str, int],
                  variant: str) -> np.ndarray:
    """[shoppers, items] scores over the whole catalogue: Keras (float32) or the int8 graph's own."""
    import keras

    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.litert import litert_runner
    from cloud_trainer.models.dot_product import extract_weights

    length = int(json.loads((run / "config.json").read_text())["history_length"])
    inputs = [history_inputs([(index[e.item_id], e.kind) for e in h if e.item_id in index], length) for h in histories]
    items = np.asarray([i for i, _ in inputs], dtype=np.int32)
    weights = np.asarray([w for _, w in inputs], dtype=np.float32)
    model = keras.models.load_model(run / "model.keras")
    if variant == "float32":
        return np.asarray(model.predict([items, weights], verbose=0), dtype=np.float64)
    calibration = np.load(run / "histories.npz")
    every = extract_weights(model)
    _, runner = litert_runner(to_tflite(every, length, every.num_items, "int8",
                                        (calibration["items"], calibration["weights"])))
    scores = np.full((len(items), every.num_items), -np.inf)
    for row in range(len(items)):
        out = runner(history_items=items[row : row + 1], history_weights=weights[row : row + 1])
        scores[row, out["item_indices"][0]] = out["scores"][0]
    return scores


def _assert_exact(model: LoadedModel, run: Path, histories: list[list[HistoryEvent]], variant: str,
                  exclude: Exclude, categories: list[str | None]) -> float:
    """Served top K equal to the reference's top K under the same filter: the same scores in the
    same order, and the same items wherever no tie at the edge makes either choice right. Returns
    the share of served slots that popular items filled."""
    reference = _full_ranking(run, histories, model.item_index, variant)
    tolerance = 1e-4 if variant == "float32" else 1e-6
    filled = 0
    for row, (history, category) in enumerate(zip(histories, categories, strict=True)):
        served = recommend(model, history, K, exclude, category)
        known = [(model.item_index[e.item_id], e.kind) for e in history if e.item_id in model.item_index]
        banned = [i for i, kind in known if exclude is Exclude.SEEN or kind is EventKind.PURCHASE] \
            if exclude is not Exclude.NONE else []
        allowed = allowed_items(model.catalog, banned, category)
        expected = np.where(allowed if allowed is not None else True, reference[row], -np.inf)
        order = np.argsort(-expected, kind="stable")[:K]
        got = [model.item_index[r.item.id] for r in served.items]
        assert len(got) == min(K, int(np.isfinite(expected).sum()))
        filled += sum(r.score is None for r in served.items)
        got_scores = reference[row, got]
        assert np.all(np.abs(np.sort(got_scores)[::-1] - expected[order[: len(got)]]) <= tolerance), row
        edge = expected[order[len(got) - 1]]
        assert {i for i in order[: len(got)] if expected[i] > edge + tolerance} <= set(got), row
    return filled / (K * len(histories))


@pytest.fixture(scope="module")
def heavy_shoppers(prepared: Path) -> list[list[HistoryEvent]]:
    """The 200 shoppers of the Online Retail slice with the most purchases."""
    table = read_events(prepared / "events.csv.gz")
    purchases = np.bincount(table.user[table.kind == PURCHASE], minlength=len(table.user_ids))
    return _histories(table, np.argsort(-purchases, kind="stable")[:200])


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_exclude_purchased_ranks_the_whole_catalogue_for_200_heavy_shoppers(
    variant: str, trained_run: Path, keys: Path, heavy_shoppers: list[list[HistoryEvent]], tmp_path: Path
) -> None:
    from conftest import make_bundle

    model = _agent_model(make_bundle(trained_run, keys, tmp_path / "bundle", version=1, variant=variant))
    assert min(sum(e.kind is EventKind.PURCHASE for e in h) for h in heavy_shoppers) > 40
    filled = _assert_exact(model, trained_run, heavy_shoppers, variant, Exclude.PURCHASED, [None] * 200)
    assert filled == 0  # the slice has 2,000+ items: the model always has 20 left to rank


@pytest.fixture(scope="module")
def generated_shop(synthetic_shop: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
                   keys: Path) -> tuple[Path, Path, EventTable]:
    """The generated shop with 100 categories, trained (factorized, rank 64) and bundled in int8."""
    from cloud_trainer.train import TrainConfig, train
    from conftest import make_bundle

    events, items = synthetic_shop
    where = tmp_path_factory.mktemp("shop")
    run = where / "run"
    train(TrainConfig(events=str(events), items=str(items), rank=64, tune=False, calibration_histories=256), run)
    return run, make_bundle(run, keys, where / "bundle", version=1), read_events(events)


def test_a_category_filter_ranks_the_whole_category(generated_shop: tuple[Path, Path, EventTable]) -> None:
    run, bundle, table = generated_shop
    model = _agent_model(bundle)
    users = np.unique(table.user)[:200]
    histories = _histories(table, users)
    rng = np.random.default_rng(3)
    names = sorted({item.category for item in model.catalog.items})
    assert len(names) == 100
    # a category outside each shopper's own ones, where the old top-100-then-filter served popular items
    categories: list[str | None] = []
    for history in histories:
        own = {model.catalog.items[model.item_index[e.item_id]].category for e in history}
        categories.append(str(rng.choice([name for name in names if name not in own])))
    filled = _assert_exact(model, run, histories, "int8", Exclude.PURCHASED, categories)
    assert filled < 0.01, filled  # the generated categories hold 30 items on average


def test_a_model_without_the_filter_input_is_filtered_after_its_top_k(generated_shop: tuple[Path, Path, EventTable],
                                                                      tmp_path: Path) -> None:
    """Bundles of contract version 1 (no ``item_allowed`` input) still serve, filtered afterwards."""
    import tensorflow as tf

    from cloud_trainer.models.dot_product import extract_weights

    run, bundle, _ = generated_shop
    weights = extract_weights(__import__("keras").models.load_model(run / "model.keras"))

    class Old(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 200], tf.int32, name="history_items"),
                                      tf.TensorSpec([1, 200], tf.float32, name="history_weights")])
        def recommend(self, history_items: tf.Tensor, history_weights: tf.Tensor) -> dict[str, tf.Tensor]:
            user = tf.reduce_sum(tf.gather(tf.constant(weights.history_embedding), history_items), axis=1)
            scores = tf.matmul(user, tf.constant(weights.item_vectors))
            top_scores, top_items = tf.math.top_k(scores, k=100)
            return {"item_indices": top_items, "scores": top_scores}

    old = Old()
    model_bytes = tf.lite.TFLiteConverter.from_concrete_functions(
        [old.recommend.get_concrete_function()], old).convert()
    manifest = manifest_of(bundle)
    from dataclasses import replace

    contract = replace(manifest.model, variant="float32", contract_version=1, signature="serving_default")
    catalog = parse_catalog((bundle / CATALOG_FILE).read_bytes(), manifest.model.num_items)
    model = LoadedModel(replace(manifest, model=contract), model_bytes, catalog)
    assert not model.filters_in_graph
    first = catalog.items[0]
    served = recommend(model, [HistoryEvent(first.id, EventKind.VIEW)], 10, category=first.category)
    assert served.items and all(r.item.category == first.category for r in served.items)

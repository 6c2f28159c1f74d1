"""Per-store assortments: the file, the selection, what it does to histories, targets and the
catalogue, and the export of a store's bundle against the Keras model (the delivery to two
stores, with real agents, is tests/test_store_bundles.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.delivery.assortment import HISTORY_SCOPES, Assortment, read_assortment, select
from cloud_trainer.errors import AssortmentError
from shared.catalog import Catalog, CatalogError, CatalogItem, parse_catalog
from shared.events import EventKind
from shared.recommendation import Exclude, Scores, recommend

RUN_IDS = ["a", "b", "c", "d", "e", "f"]


def test_the_cli_offers_the_same_history_scopes() -> None:
    from cloud_trainer.commands import ASSORTMENT_HISTORY

    assert ASSORTMENT_HISTORY == HISTORY_SCOPES


def test_an_assortment_file_is_one_id_per_line_or_a_csv_with_an_item_id_column(tmp_path: Path) -> None:
    plain = tmp_path / "store.txt"
    plain.write_text("# store 1, spring\n85123A\n\n71053 \n85123A\n")
    assert read_assortment(plain) == ["85123A", "71053"]  # comments, blanks and repeats skipped
    table = tmp_path / "store.csv"
    table.write_text("store,item_id,facings\n1,85123A,4\n1,\"22,1\",2\n1,,3\n")
    assert read_assortment(table) == ["85123A", "22,1"]
    lone_header = tmp_path / "ids.txt"
    lone_header.write_text("item_id\nx\ny\n")
    assert read_assortment(lone_header) == ["x", "y"]
    no_column = tmp_path / "wrong.csv"
    no_column.write_text("sku,name\n1,lamp\n")
    with pytest.raises(AssortmentError, match="without an item_id column"):
        read_assortment(no_column)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(AssortmentError, match="lists no item ids"):
        read_assortment(empty)


def test_unknown_ids_are_left_out_with_a_count_and_none_known_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assortment = select(RUN_IDS, ["e", "zz1", "b", "zz2"])
    assert assortment.sold.tolist() == [1, 4]  # in the run's order
    assert assortment.unknown == ("zz1", "zz2")
    assert "2 of the assortment's 4 item ids are not items of the run" in caplog.text and "'zz1'" in caplog.text
    with pytest.raises(AssortmentError, match=r"none of the assortment's 7 item ids .*'q1', 'q2', 'q3', 'q4', 'q5', "
                                              r"\.\.\.\); the run knows ids like 'a'"):
        select(RUN_IDS, [f"q{n}" for n in range(1, 8)])
    with pytest.raises(AssortmentError, match="must be one of chain, store"):
        select(RUN_IDS, ["a"], history="everything")


def test_chain_history_keeps_every_item_readable_after_the_sold_ones() -> None:
    chain = select(RUN_IDS, ["e", "b"])
    assert chain.history_only.tolist() == [0, 2, 3, 5]
    # bundle order: b, e (sold), then a, c, d, f
    assert chain.history_index.tolist() == [2, 0, 3, 4, 1, 5]
    store = select(RUN_IDS, ["e", "b"], history="store")
    assert store.history_only.tolist() == [] and store.history_index.tolist() == [-1, 0, -1, -1, 1, -1]


def test_histories_as_the_stores_agent_reads_them() -> None:
    # run indices, most recent first, 0-padded: [c, b, e, pad], [a, c, pad, pad], [b, pad, pad, pad]
    items = np.array([[2, 1, 4, 0], [0, 2, 0, 0], [1, 0, 0, 0]], dtype=np.int32)
    weights = np.array([[0.5, 0.3, 0.2, 0], [0.6, 0.4, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    chain = select(RUN_IDS, ["b", "e"])
    keras_items, keras_weights, bundle_items, bundle_weights, rows = chain.histories(items, weights)
    np.testing.assert_array_equal(keras_items, items)  # every item is read: nothing changes but the indices
    np.testing.assert_array_equal(keras_weights, weights)
    assert bundle_items.tolist() == [[3, 0, 1, 0], [2, 3, 0, 0], [0, 0, 0, 0]] and rows.all()
    store = select(RUN_IDS, ["b", "e"], history="store")
    keras_items, keras_weights, bundle_items, bundle_weights, rows = store.histories(items, weights)
    assert rows.tolist() == [True, False, True]  # [a, c] holds nothing the store's bundle reads
    assert keras_items.tolist() == [[1, 4, 0, 0], [1, 0, 0, 0]]  # c dropped, b and e move up
    np.testing.assert_allclose(keras_weights, [[0.6, 0.4, 0, 0], [1, 0, 0, 0]])  # 0.3 and 0.2 scaled to sum 1
    assert bundle_items.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(bundle_weights, keras_weights)


def test_next_baskets_count_only_the_items_the_store_sells() -> None:
    chain = select(RUN_IDS, ["b", "e"])
    targets = np.array([[4, 2, -1], [0, -1, -1], [1, 4, 5]])
    assert chain.targets(targets).tolist() == [[1, -1, -1], [-1, -1, -1], [0, 1, -1]]


def test_the_stores_catalogue_lists_its_items_and_fills_its_popular_list() -> None:
    catalog = Catalog(items=tuple(CatalogItem(i, f"title {i}", "cat") for i in RUN_IDS), popular=(5, 1, 0))
    assortment = select(RUN_IDS, ["b", "c", "d", "f"])
    bias = np.array([0.0, 0.1, 0.5, 0.3, 0.0, 0.2])
    store = assortment.catalog(catalog, bias)
    assert [i.id for i in store.items] == ["b", "c", "d", "f"]
    assert [i.id for i in store.history_only] == ["a", "e"]
    # the run's popular items the store sells (f, b), then the rest by the model's item bias (c, d)
    assert [store.items[i].id for i in store.popular] == ["f", "b", "c", "d"]
    parsed = parse_catalog(store.to_bytes(), 4, history_only=2)
    assert parsed.index_of() == {"b": 0, "c": 1, "d": 2, "f": 3, "a": 4, "e": 5}
    assert parsed.item(4) == CatalogItem("a", "title a") and parsed.item(1).category == "cat"
    assert json.loads(store.to_bytes())["history_only"] == [{"id": "a", "title": "title a"},
                                                            {"id": "e", "title": "title e"}]
    with pytest.raises(CatalogError, match="has 2 history-only items, the model reads 0"):
        parse_catalog(store.to_bytes(), 4)
    with pytest.raises(CatalogError, match="appears twice"):
        parse_catalog(json.dumps({"items": [{"id": "a"}], "history_only": [{"id": "a"}]}).encode(), 1, 1)
    assert "history_only" not in json.loads(catalog.to_bytes())  # a chain-wide catalogue is as before


class StoreScorer:
    """A store's model: ranks b, c (indices 0, 1); reads a (index 2) in histories only.
    Every history position explains item b's score with 1.0, c's with nothing."""

    def __init__(self) -> None:
        self.catalog = Catalog(items=(CatalogItem("b"), CatalogItem("c")), popular=(1, 0),
                               history_only=(CatalogItem("a", "sold elsewhere"),))
        self.item_index = self.catalog.index_of()
        self.version, self.history_length, self.takes_sequence = 3, 4, False
        self.inputs: list[list[int]] = []

    def score(self, items: list[int], weights: list[float], allowed: np.ndarray | None = None) -> Scores:
        self.inputs.append(list(items))
        assert allowed is None or allowed.shape == (2,)
        contributions = np.zeros((4, 2))
        contributions[:, 0] = 1.0
        return Scores(np.array([0, 1]), np.array([2.0, 1.0]), contributions)


@pytest.mark.parametrize("exclude", list(Exclude))
def test_an_item_sold_elsewhere_counts_in_the_history_and_may_explain(exclude: Exclude) -> None:
    class Ev:
        item_id, kind, timestamp = "a", EventKind.PURCHASE, None

    scorer = StoreScorer()
    result = recommend(scorer, [Ev()], 2, exclude)
    assert scorer.inputs == [[2, 0, 0, 0]]  # the history-only item reached the model
    assert result.fallback is False and result.history_used == 1
    assert [r.item.id for r in result.items] == ["b", "c"]  # excluding it from a store that does not sell it: no-op
    assert result.items[0].because == CatalogItem("a", "sold elsewhere") and result.items[1].because is None


@pytest.fixture(scope="module")
def keras_model(trained_run: Path):  # type: ignore[no-untyped-def]
    import keras

    return keras.models.load_model(trained_run / "model.keras")


@pytest.mark.parametrize("history", HISTORY_SCOPES)
def test_a_stores_export_ranks_its_items_exactly_as_the_keras_model_does(  # type: ignore[no-untyped-def]
    keras_model, trained_run: Path, history: str
) -> None:
    """float32 export of a third of the run's items: the same top 10 as the Keras model's scores of
    those items, on real histories that mostly hold items the store does not sell."""
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.gates import check_parity
    from cloud_trainer.delivery.litert import litert_runner
    from cloud_trainer.models.dot_product import extract_weights

    catalog = parse_catalog((trained_run / "catalog.json").read_bytes(), keras_model.output_shape[-1])
    run_ids = list(catalog.index_of())
    assortment: Assortment = select(run_ids, run_ids[1::3], history)
    data = np.load(trained_run / "histories.npz")
    items, weights = data["items"], data["weights"]
    store = assortment.weights(extract_weights(keras_model))
    assert store.num_items == len(run_ids[1::3])
    assert store.num_history_items == (len(run_ids) if history == "chain" else store.num_items)
    calibration = assortment.histories(items, weights)[2:4]
    model_bytes = to_tflite(store, items.shape[1], 20, "float32", calibration)
    report = check_parity(keras_model, model_bytes, "float32", items, weights, assortment)
    assert report.ok and report.mean_overlap_at_10 == 1.0, report.to_json()
    # returned indices are the store's items only, also when the history holds items sold elsewhere
    _, runner = litert_runner(model_bytes)
    sold_elsewhere = np.isin(calibration[0], np.arange(store.num_items, store.num_history_items))
    assert (history == "chain") == bool(sold_elsewhere.any())
    for n in range(len(calibration[0])):
        out = runner(history_items=calibration[0][n : n + 1], history_weights=calibration[1][n : n + 1],
                     item_allowed=np.ones((1, store.num_items), dtype=bool))
        assert out["item_indices"].max() < store.num_items and len(set(out["item_indices"][0].tolist())) == 20

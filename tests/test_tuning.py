"""``train`` chooses the factorized model's settings on a validation window of the training period."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.data.events_io import read_events
from cloud_trainer.models import tuning
from cloud_trainer.models.served_ranking import served_top_k
from cloud_trainer.train import TrainConfig, train

TEST_FROM = "2024-06-01"  # the generated shop runs from 2024-01-01 for 180 days
#: A small space, so the search converges within the test's time.
SMALL_SPACE = {"repeat_weight": (0.0, 0.5), "trend_weight": (0.05, 0.2), "l2": (200.0, 800.0)}


def _without_seconds(tuning_json: dict[str, object]) -> dict[str, object]:
    trials = [{k: v for k, v in trial.items() if k != "seconds"} for trial in tuning_json["trials"]]  # type: ignore[attr-defined]
    return {k: v for k, v in tuning_json.items() if k != "seconds"} | {"trials": trials}


def test_tuning_reads_nothing_of_the_test_period(
    synthetic_shop: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "SEARCH_SPACE", SMALL_SPACE)
    events, items = synthetic_shop
    # the same events without the test period: the search must go exactly the same way
    before = tmp_path / "before.csv.gz"
    with gzip.open(events, "rt") as src, gzip.open(before, "wt") as dst:
        dst.write(src.readline())
        dst.writelines(line for line in src if line.rstrip().split(",")[3] < TEST_FROM)
    assert read_events(before).timestamp.size < read_events(events).timestamp.size
    runs = {}
    for name, source in (("all", events), ("before", before)):
        config = TrainConfig(events=str(source), items=str(items), rank=64, test_from=TEST_FROM,
                             calibration_histories=64, tune_budget=600)
        train(config, tmp_path / name)
        runs[name] = json.loads((tmp_path / name / "tuning.json").read_text())
    assert _without_seconds(runs["all"]) == _without_seconds(runs["before"])
    chosen = runs["all"]
    assert chosen["stopped_by"] == "converged" and chosen["validation_from"] < TEST_FROM
    assert chosen["searched"] == list(SMALL_SPACE) and len(chosen["trials"]) >= 4
    assert chosen["validation_shoppers"] >= tuning.MIN_SHOPPERS
    # the run is trained with what was chosen, and its config says so
    config = json.loads((tmp_path / "all" / "config.json").read_text())
    assert (config["repeat_weight"], config["trend_weight"], config["ease_l2"]) == (
        chosen["chosen"]["repeat_weight"], chosen["chosen"]["trend_weight"], chosen["chosen"]["l2"])


def test_the_repeat_term_is_chosen_where_shoppers_come_back_to_items_and_dropped_where_they_never_do(
    synthetic_shop: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shops alike but for one habit: in one, shoppers view items again and buy what they saw
    on an earlier visit; in the other (like ratings turned into events) nobody meets an item
    twice, so boosting a shopper's own items can only cost. The search tells them apart."""
    from cloud_trainer.data.events_io import read_items
    from devtools.synthetic_shop import ShopSpec, write

    monkeypatch.setattr(tuning, "SEARCH_SPACE", {"repeat_weight": (0.0, 0.5)})
    once = write(ShopSpec(users=2500, items=3000, categories=100, tastes=20, seed=11, revisits=False), tmp_path)
    chosen = {}
    for name, (events, items) in (("revisits", synthetic_shop), ("never twice", once)):
        result = tuning.tune(read_events(events), read_items(items)[0], tuning.Candidate(rank=64))
        by_repeat = {t.candidate.repeat_weight: t.objective for t in result.trials}
        chosen[name] = result.chosen.repeat_weight
        assert by_repeat[result.chosen.repeat_weight] == max(by_repeat.values())
    assert chosen == {"revisits": 0.5, "never twice": 0.0}


@pytest.mark.parametrize("recency", [1.0, 0.95])
def test_the_validation_ranking_is_the_served_one(synthetic_shop: tuple[Path, Path], recency: float) -> None:
    """The tuner's fast float scoring ranks as the agent's recommendation path does with the same
    weights (a float32 export in LiteRT): the same holdings, exclusions, new items and recency weights."""
    from cloud_trainer.data.events_io import read_items
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.evaluation.served import ServedModel, served_rankings, stored_shoppers
    from cloud_trainer.evaluation.splits import cut_time, train_period
    from shared.catalog import Catalog
    from shared.recommendation import Exclude

    events, items = synthetic_shop
    table = train_period(read_events(events), cut_time(TEST_FROM))
    validation = tuning.validation_window(table, read_items(items)[0], 0.1)
    scorer = tuning.ValidationScorer(validation, 7)
    weights = scorer.weights(tuning.Candidate(rank=32, history_length=50, repeat_weight=0.3, recency=recency))
    assert weights.num_items == len(validation.known) + len(validation.new) > len(validation.known)
    n = 300
    fast = served_top_k(weights, validation.train, scorer.kept[:n], 50, {"new": scorer.excluded[:n]})["new"]
    model_bytes = to_tflite(weights, 50, 100, "float32", (np.zeros((1, 50), np.int32), np.zeros((1, 50), np.float32)))
    catalog = Catalog(items=(*validation.known, *validation.new), popular=tuple(range(20)))
    shoppers = stored_shoppers(validation.train, validation.data.history[:n], now=validation.start)
    served = served_rankings(ServedModel(model_bytes, catalog, 50), shoppers, tuning.K, Exclude.PURCHASED)
    agree = np.mean([len(set(a) & set(b)) / tuning.K for a, b in zip(fast, served, strict=True)])
    assert agree > 0.99, agree

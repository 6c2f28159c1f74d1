"""Evaluation at scale: baselines ranked in user batches equal the whole-matrix ranking, sparse
item-kNN keeps the top neighbours, and a seeded sample of test users beyond the limit."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.data.events_io import KIND_CODES, EventTable, ReadReport
from cloud_trainer.evaluation import baselines, splits
from cloud_trainer.evaluation import metrics as ev_metrics
from shared.events import EventKind

CUT = 1_000_000.0
P, V = KIND_CODES[EventKind.PURCHASE], KIND_CODES[EventKind.VIEW]


def random_shop(users: int = 60, items: int = 40, events: int = 900, seed: int = 3) -> EventTable:
    """Random purchases and views, before and after the cut, on a few popular items mostly."""
    rng = np.random.default_rng(seed)
    return EventTable(
        user_ids=[f"u{n}" for n in range(users)], item_ids=[f"i{n}" for n in range(items)],
        user=rng.integers(0, users, events).astype(np.int32),
        item=np.minimum(rng.zipf(1.3, events) - 1, items - 1).astype(np.int32),
        kind=rng.choice([P, P, V], events).astype(np.int8),
        timestamp=CUT + rng.uniform(-50, 10, events), report=ReadReport(),
    )


@pytest.mark.parametrize("name", list(baselines.BASELINES))
def test_batched_ranking_equals_the_whole_matrix_ranking(name: str) -> None:
    data = splits.split(random_shop(), CUT)
    assert len(data.users) > 20
    scorer = baselines.BASELINES[name](data)
    assert scorer is not None
    whole = ev_metrics.all_scores(scorer, data)
    assert whole.shape == (len(data.users), data.num_items)
    k = min(max(ev_metrics.CURVE_AT), data.num_items)
    batched = ev_metrics.rank_in_batches(scorer, data, k, batch=7)
    assert batched["all"].tolist() == ev_metrics.top_k(whole, k).tolist()
    assert batched["new"].tolist() == ev_metrics.top_k(whole, k, data.bought_before).tolist()
    assert ev_metrics.evaluate(scorer, data) == ev_metrics.evaluate(whole, data)


def test_sparse_item_knn_is_the_dense_cosine_and_keeps_the_top_neighbours() -> None:
    data = splits.split(random_shop(), CUT)
    x = baselines._purchase_matrix(data).toarray()
    norms = np.sqrt(x.sum(axis=0))
    norms[norms == 0] = 1.0
    dense = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(dense, 0.0)
    full = baselines.knn_similarity(baselines._purchase_matrix(data), data.num_items)
    np.testing.assert_allclose(full.toarray(), dense, rtol=1e-12, atol=0)
    top3 = baselines.knn_similarity(baselines._purchase_matrix(data), 3)
    for row, kept in zip(dense, top3.toarray(), strict=True):
        assert np.count_nonzero(kept) <= 3
        assert np.count_nonzero(kept) == min(3, np.count_nonzero(row))
        nonzero = kept[kept > 0]
        assert nonzero.size == 0 or nonzero.min() >= np.sort(row)[-3]
    assert baselines.knn_neighbours(3_660) >= 3_660 and baselines.knn_neighbours(1_000_000) == 200


def test_ease_is_not_computed_above_its_item_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = splits.split(random_shop(), CUT)
    monkeypatch.setattr(baselines, "EASE_MAX_ITEMS", data.num_items - 1)
    assert baselines.ease_baseline(data) is None


def test_a_seeded_sample_of_test_users_beyond_the_limit(prepared: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from cloud_trainer.evaluation.evaluate_run import evaluate_run

    data = splits.split(random_shop(), CUT)
    assert splits.sample_users(data, len(data.users)) is data
    sample = splits.sample_users(data, 10, seed=5)
    assert sample.users == splits.sample_users(data, 10, seed=5).users and len(sample.users) == 10
    positions = [data.users.index(u) for u in sample.users]
    assert positions == sorted(positions)
    assert [data.targets["new"][n] for n in positions] == sample.targets["new"]
    assert [data.bought_before[n] for n in positions] == sample.bought_before

    monkeypatch.setattr(splits, "MAX_TEST_USERS", 25)
    with caplog.at_level(logging.INFO):
        report = evaluate_run(None, prepared / "events.csv.gz", "2010-12-20")
    assert "evaluating a seeded sample of 25" in caplog.text
    assert all(rows["all"]["users"] <= 25 for rows in report.rows.values())
    assert report.rows["popularity"]["all"]["users"] > 0

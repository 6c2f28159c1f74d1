"""The scenes' evaluation protocol (cloud_trainer/evaluation/scenes.py) on a toy shop whose answers
are worked out by hand, through the same scene functions the agent serves."""

from __future__ import annotations

from test_evaluation import CUT, P, V, table
from test_recommender import MaskingScorer

from cloud_trainer.evaluation.scenes import _scored, _test_baskets, cart_queries, related_queries

SHOP = table([
    ("ann", "a", P, -3), ("ann", "b", V, -2),  # training period
    ("ann", "a", P, 1), ("ann", "c", P, 1), ("ann", "q", P, 1),  # a basket: a, c and q (unknown to the model)
    ("ann", "d", P, 2), ("ann", "d", V, 3),  # her next basket: d (the view is no purchase)
    ("bob", "e", P, 1),  # a one-item basket
])


def test_baskets_are_a_shoppers_purchases_at_one_time() -> None:
    assert _test_baskets(SHOP, CUT, "purchase") == [("ann", ["a", "c", "q"]), ("ann", ["d"]), ("bob", ["e"])]


def test_related_targets_are_the_same_and_next_basket_and_the_model_is_asked_for_each_item() -> None:
    scorer = MaskingScorer()  # ranks a b c d e; items a-e, no q
    queries = related_queries(scorer, _test_baskets(SHOP, CUT, "purchase"))  # type: ignore[arg-type]
    # a: {c, q, d} (q unknown: a target nothing can hit); c: {a, q, d}; d: its basket's others and
    # no next basket: none, so no query; e: likewise
    assert [targets for _, targets in queries] == [{2, -2, 3}, {0, -2, 3}]
    # related(a) = b c d (top 3 of the rest): c and d of 3 targets; related(c) = a b d: a and d
    assert _scored(scorer, queries, True)["recall@20"] == round(2 / 3, 4)  # type: ignore[arg-type]


def test_cart_leaves_one_item_out_of_baskets_of_two_or_more() -> None:
    scorer = MaskingScorer()
    queries = cart_queries(scorer, _test_baskets(SHOP, CUT, "purchase"), {}, as_guest=True)  # type: ignore[arg-type]
    assert len(queries) == 1 and len(queries[0][1]) == 1  # ann's first basket only, one item held out

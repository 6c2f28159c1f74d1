"""The generated shop keeps its stated model of shopping, vectorised: seeded, sessions in order,
no item before its launch, revisits and rebuys as specified; both file formats read the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.data.events_io import read_events, read_items
from devtools.session_shop import _Browsing
from devtools.synthetic_shop import CART, PURCHASE, VIEW, Shop, ShopSpec, _accept, _Shelves, generate, sized, write

SMALL = ShopSpec(users=1500, items=1200, categories=60, tastes=12, seed=3)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return generate(SMALL)


def _pairs(shop: Shop, kind: int) -> np.ndarray:
    mask = shop.kind == kind
    return shop.user[mask].astype(np.int64) * SMALL.items + shop.item[mask]


def test_the_same_spec_gives_the_same_shop_and_another_seed_another(shop: Shop) -> None:
    again = generate(SMALL)
    for column in ("user", "item", "kind", "seconds"):
        assert np.array_equal(getattr(shop, column), getattr(again, column)), column
    other = generate(ShopSpec(**{**vars(SMALL), "seed": 4}))
    assert len(other) != len(shop) or not np.array_equal(other.item, shop.item)


def test_events_are_in_time_order_and_every_cart_and_purchase_follows_its_view(shop: Shop) -> None:
    assert np.all(np.diff(shop.seconds) >= 0)
    assert set(np.unique(shop.kind).tolist()) == {VIEW, CART, PURCHASE}
    key = shop.user.astype(np.int64) * SMALL.items + shop.item
    for kind, delay in ((CART, 20), (PURCHASE, 40)):
        mask = shop.kind == kind
        views = set(zip(key[shop.kind == VIEW].tolist(), shop.seconds[shop.kind == VIEW].tolist(), strict=True))
        assert all((k, t - delay) in views for k, t in zip(key[mask].tolist(), shop.seconds[mask].tolist(),
                                                            strict=True))
    views, carts, purchases = (int((shop.kind == k).sum()) for k in (VIEW, CART, PURCHASE))
    assert 0.27 < carts / views < 0.33 and 0.5 < purchases / carts < 0.62  # 0.3, then 0.6 less rebuys


def test_no_item_is_met_before_its_launch_and_popularity_follows_appeal(shop: Shop) -> None:
    launch = shop.catalogue.launch[shop.item]
    assert np.all(launch <= shop.seconds)
    assert (shop.catalogue.launch > 0).mean() == pytest.approx(0.2, abs=0.04)
    views = np.bincount(shop.item[shop.kind == VIEW], minlength=SMALL.items)
    top = np.argsort(-shop.catalogue.appeal)[: SMALL.items // 100]
    assert views[top].sum() / views.sum() > 0.05  # the top 1% of appeal: a power law, not uniform


def test_a_visit_takes_its_draws_in_order_skipping_repeats_and_items_not_on_sale() -> None:
    """Two visits of one shopper, 2 views each, from draws with replacement (in draw order)."""
    visit = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    item = np.array([3, 3, 5, 7, 7, 5, 8, 2])
    ok = np.ones(8, dtype=bool)
    wanted = np.array([2, 2])

    def taken(group: np.ndarray, ok: np.ndarray) -> list[tuple[int, int, int]]:
        return list(zip(*(a.tolist() for a in _accept(visit, item, ok, group, wanted, 10)), strict=True))

    # revisits on (a visit is its own group): 3, then 5 (3 again is skipped); 7 then 5
    assert taken(np.array([0, 1]), ok) == [(0, 0, 3), (0, 1, 5), (1, 0, 7), (1, 1, 5)]
    # revisits off (one shopper): visit 1 skips 5, met before, but not 7, drawn only after visit 0 was full
    assert taken(np.array([0, 0]), ok) == [(0, 0, 3), (0, 1, 5), (1, 0, 7), (1, 1, 8)]
    # 5 not on sale at visit 0: it takes 7 instead, so visit 1 skips 7 and takes 5 and 8
    not_yet = ok & ~((visit == 0) & (item == 5))
    assert taken(np.array([0, 0]), not_yet) == [(0, 0, 3), (0, 1, 7), (1, 0, 5), (1, 1, 8)]


def test_with_revisits_on_a_shopper_meets_items_again(shop: Shop) -> None:
    views = _pairs(shop, VIEW)
    assert 0.15 < 1 - len(np.unique(views)) / len(views) < 0.35  # about a quarter of views, as before


def test_with_revisits_off_a_shopper_meets_an_item_once() -> None:
    once = generate(ShopSpec(**{**vars(SMALL), "revisits": False}))
    views = _pairs(once, VIEW)
    assert len(np.unique(views)) == len(views)
    assert len(once) > 0.8 * len(generate(SMALL))  # a visit draws among the items not met yet


@pytest.mark.parametrize("rebuy", [0.0, 1.0])
def test_rebuys_follow_the_rebuy_probability(rebuy: float) -> None:
    spec = ShopSpec(users=800, items=300, categories=20, tastes=4, rebuy=rebuy, seed=5)
    shop = generate(spec)
    purchases = shop.user[shop.kind == PURCHASE].astype(np.int64) * spec.items + shop.item[shop.kind == PURCHASE]
    carts = shop.kind == CART
    repeated = len(purchases) - len(np.unique(purchases))
    if rebuy == 0.0:
        assert repeated == 0
    else:  # every cart is a purchase attempt with probability 0.6, kept whether bought before or not
        assert repeated > 0 and int((shop.kind == PURCHASE).sum()) / int(carts.sum()) == pytest.approx(0.6, abs=0.04)


def test_csv_and_parquet_hold_the_same_events(tmp_path: Path) -> None:
    csv_events, csv_items = write(SMALL, tmp_path / "csv")
    parquet_events, _ = write(SMALL, tmp_path / "parquet", "parquet")
    assert (csv_events.name, parquet_events.name) == ("events.csv.gz", "events.parquet")
    a, b = read_events(csv_events), read_events(parquet_events)
    assert a.report.kept == a.report.rows == len(generate(SMALL)) and not a.report.skipped
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    for column in ("user", "item", "kind", "timestamp"):
        assert np.array_equal(getattr(a, column), getattr(b, column)), column
    items, report = read_items(csv_items)
    assert report.kept == SMALL.items
    # a word of its own for each category (the category filter tests count them)
    assert len({item.category for item in items.values()}) == len(np.unique(generate(SMALL).catalogue.category))


def test_sized_finds_the_visits_for_a_number_of_events() -> None:
    spec = sized(200_000, 20_000, 4_000, sample=5_000)
    assert (spec.items, spec.categories, spec.tastes) == (4_000, 100, 20) and spec.users > 20_000
    shop = generate(spec)
    assert len(shop) == pytest.approx(200_000, rel=0.05)
    assert len(np.unique(shop.user)) == pytest.approx(20_000, rel=0.05)  # shoppers seen in the events


SESSIONS = ShopSpec(users=1500, items=1200, categories=60, tastes=12, seed=3, sequential=True)


def test_a_sequential_shop_buys_the_complements_of_the_item_viewed_last() -> None:
    """Order carries information: a purchase's item is a complement of the item viewed just before
    its view far above chance, and the item viewed last predicts it better than the whole history."""
    shop = generate(SESSIONS)
    successors = _Browsing(SESSIONS, _Shelves(shop.catalogue, SESSIONS.categories)).successors
    assert np.array_equal(generate(SESSIONS).item, shop.item)  # seeded
    assert not np.array_equal(shop.item[:1000], generate(SMALL).item[:1000])  # the option changes the shop
    views, purchases = (int((shop.kind == k).sum()) for k in (VIEW, PURCHASE))
    assert purchases / views < 0.08  # many views, few purchases
    view = np.flatnonzero(shop.kind == VIEW)
    order = view[np.lexsort((shop.seconds[view], shop.user[view]))]  # views by shopper, in time order
    at = {(u, t): n for n, (u, t) in enumerate(zip(shop.user[order].tolist(), shop.seconds[order].tolist(),
                                                   strict=True))}
    last = earlier = total = 0
    for p in np.flatnonzero(shop.kind == PURCHASE).tolist():
        n = at[(int(shop.user[p]), int(shop.seconds[p]) - 40)]  # the purchased item's own view
        mine = order[max(n - 20, 0):n][shop.user[order[max(n - 20, 0):n]] == shop.user[p]]
        if len(mine) < 2:
            continue
        total += 1
        last += int(shop.item[p] in successors[shop.item[mine[-1]]])
        earlier += int(shop.item[p] in successors[shop.item[mine[0]]])  # up to 20 views earlier
    chance = successors.shape[1] / SESSIONS.items
    assert total > 500 and last / total > 100 * chance and last / total > 0.4
    assert last > 2 * earlier  # the item viewed last, not any item of the history

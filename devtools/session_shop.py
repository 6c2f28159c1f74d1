"""Sessions in order: the generated shop's shoppers when what they view next follows from what they
just viewed (``ShopSpec(sequential=True)`` of :mod:`devtools.synthetic_shop`).

The planted structure is one that real shops show (RetailRocket-style logs: many views a session,
few purchases; complements after a main item), stated here so that figures on it can be judged:

- The catalogue (categories, tastes, Zipf appeal, launches, prices, titles) is the generated
  shop's. Each category has a *complement* category, another one, fixed (cases for phones), and
  each item has SUCCESSORS complements: items of that category on sale from the start, drawn by
  appeal (several phones share the popular cases).
- A shopper likes one to three categories of one taste and comes back a lognormal number of times
  (median ``visits_per_user``) over part of the period, as in the generated shop. A session has a
  geometric number of views (mean MEAN_VIEWS, at most MAX_VIEWS), a minute apart.
- The first view of a session resumes the shopper's story with probability RESUME (a complement of
  the item viewed last in the previous session: back for the case), else it is an item of a liked
  category. Each next view is, with probabilities FOLLOW, SAME and the rest, a complement of the
  item viewed last, another item of its category (comparing), or an item of a liked category (the
  session drifts). Items are drawn by appeal among those on sale at the time.
- A view is carted with probability CART_RATE and a cart bought with PURCHASE_RATE (about 5% of
  views end in a purchase, a purchase 40 s after its view); a rebuy as ``rebuy`` says.

So the item viewed last predicts the next views and purchases (its complements) far better than
the whole history does: a bag of items can learn which items go together, not which came last.
Not planted: the items a session starts from depend on the shopper's liked categories only, as in
the generated shop, so a bag of items keeps its share of the signal; ``revisits`` is not used (a
shopper may view an item again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from devtools.synthetic_shop import visit_times, with_purchases

if TYPE_CHECKING:
    from devtools.synthetic_shop import ShopSpec, _Shelves

SUCCESSORS = 4
MEAN_VIEWS, MAX_VIEWS = 6.0, 30
RESUME, FOLLOW, SAME = 0.5, 0.55, 0.25
CART_RATE, PURCHASE_RATE = 0.12, 0.4
#: Draws of an item on sale before falling back to its category's most appealing established item.
DRAW_TRIES = 8
#: The random stream of the complements (one for the whole shop, whatever the block).
COMPLEMENT_STREAM = 1_000_003


class _Browsing:
    """The catalogue as sessions draw from it: per item its category and its complements
    ``successors`` [items, SUCCESSORS]; per category its most appealing item on sale from the
    start (``best``, the fallback of a draw that keeps meeting items not launched yet)."""

    def __init__(self, spec: ShopSpec, shelves: _Shelves) -> None:
        self.shelves = shelves
        in_shelf = np.repeat(np.arange(spec.categories), shelves.size)  # category in shelf order
        self.category = np.empty(len(shelves.order), dtype=np.int64)
        self.category[shelves.order] = in_shelf
        cumulative = shelves.key - in_shelf  # share of the category's appeal up to each item
        share = cumulative - np.r_[0.0, cumulative[:-1]]
        share[shelves.first[shelves.size > 0]] = cumulative[shelves.first[shelves.size > 0]]
        established = shelves.launch[shelves.order] == 0
        score = np.where(established, share, -1.0)
        self.best = np.full(spec.categories, shelves.order[np.argmax(score)])  # where a category has none
        for c in np.flatnonzero(shelves.size > 0):
            part = slice(shelves.first[c], shelves.first[c] + shelves.size[c])
            if score[part].max() >= 0:
                self.best[c] = shelves.order[part][np.argmax(score[part])]
        rng = np.random.default_rng([spec.seed, COMPLEMENT_STREAM])
        stocked = np.flatnonzero(np.bincount(in_shelf[established], minlength=spec.categories) > 0)
        pick = rng.integers(0, max(len(stocked) - 1, 1), spec.categories)
        if len(stocked) > 1:  # another category than the item's own
            pick += stocked[pick] >= np.arange(spec.categories)
        complement = stocked[np.minimum(pick, len(stocked) - 1)]
        wanted = np.repeat(complement[self.category], SUCCESSORS)
        self.successors = self.draw(wanted, np.zeros(len(wanted)), rng).reshape(-1, SUCCESSORS)

    def draw(self, category: np.ndarray, when: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An item of each ``category`` on sale at ``when``, drawn by appeal."""
        item = self.shelves.draw(category, rng)
        for _ in range(DRAW_TRIES):
            late = np.flatnonzero(self.shelves.launch[item] > when)
            if not len(late):
                return item
            item[late] = self.shelves.draw(category[late], rng)
        late = self.shelves.launch[item] > when
        item[late] = self.best[category[late]]
        return item


def session_shoppers(spec: ShopSpec, shelves: _Shelves, first_user: int, users: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(user, item, kind, seconds) of one block of shoppers, not yet in time order (the
    ``_shoppers`` of :mod:`devtools.synthetic_shop` for ``sequential`` shops)."""
    browsing = _Browsing(spec, shelves)
    taste = rng.integers(0, spec.tastes, users)  # categories of taste t are t, t + tastes, ...
    in_taste = (spec.categories - taste + spec.tastes - 1) // spec.tastes
    liked = taste[:, None] + (rng.random((users, 3)) * in_taste[:, None]).astype(np.int64) * spec.tastes
    n_liked = rng.integers(1, 4, users)

    owner, when = visit_times(spec, users, rng)
    views = np.minimum(rng.geometric(1 / MEAN_VIEWS, len(owner)), MAX_VIEWS)

    # the steps: each shopper's views of all sessions, in order, contiguous
    session = np.repeat(np.arange(len(owner)), views)
    starts = np.r_[0, np.cumsum(views)[:-1]]
    rank = np.arange(len(session)) - starts[session]
    seconds = np.floor(when[session]).astype(np.int64) + 60 * rank
    user = owner[session]
    length = np.bincount(user, minlength=users)
    offset = np.r_[0, np.cumsum(length)[:-1]]
    item = np.zeros(len(session), dtype=np.int64)
    for t in range(int(length.max(initial=0))):
        alive = np.flatnonzero(length > t)
        step = offset[alive] + t
        prev = item[step - 1] if t else np.zeros(len(step), dtype=np.int64)
        u = rng.random(len(step))
        opening = rank[step] == 0
        follow = (t > 0) & np.where(opening, u < RESUME, u < FOLLOW)
        same = ~opening & ~follow & (u < FOLLOW + SAME)
        fresh = ~follow & ~same
        category = np.where(same, browsing.category[prev],
                            liked[alive, (rng.random(len(step)) * n_liked[alive]).astype(np.int64)])
        drawn = np.flatnonzero(same | fresh)
        chosen = browsing.successors[prev, rng.integers(0, SUCCESSORS, len(step))]
        chosen[drawn] = browsing.draw(category[drawn], seconds[step[drawn]].astype(np.float64), rng)
        item[step] = chosen
    return with_purchases(user, item, seconds, first_user, len(shelves.order), spec.rebuy, rng,
                          (CART_RATE, PURCHASE_RATE))

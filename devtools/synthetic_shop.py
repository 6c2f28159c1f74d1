"""A generated shop where shoppers rarely buy the same item twice, with planted taste structure.

Real data sets of this kind (media, electronics, fashion) cannot be shipped, so this one is made,
seeded, from a stated model of shopping, and the trainer is checked on it beside the real logs:

- Items belong to ``categories``; categories are grouped into ``tastes`` (a shopper's interests).
  Item appeal follows a Zipf law over the whole shop (power-law popularity); a fifth of the
  items launch during the period (new products), the rest exist from the start.
- Each shopper likes one to three tastes (Dirichlet weights) and some categories within them more
  than others, and comes back a lognormal number of times over ``days`` (a few shoppers return
  often and buy again and again, most come once or twice).
- A visit picks a taste, a category of it, and views 1-6 of its items on sale, drawn by appeal
  without replacement (a session); a viewed item goes to the cart with probability 0.3 and a
  cart item is bought with probability 0.6. An item bought before is bought again with
  probability ``rebuy`` only. With ``revisits`` off, a shopper never meets an item twice (like
  ratings turned into events: one event per item): a visit draws only among the items that
  shopper has not met on an earlier visit.
- With ``sequential`` on, shoppers browse in ordered sessions instead, each view following from
  the one before it (complements of the item viewed last): :mod:`devtools.session_shop`.
- Titles name the item's category and taste in words, a word of its own for each category and
  taste (so side features carry signal); prices are lognormal around a price level per category.

Generation is vectorised (numpy): shoppers are made in blocks (:func:`block_size`, set by the
spec alone), each from its own seeded stream, so the same spec gives the same shop on any
machine. Memory grows with events (13 bytes an event in columns, about 50 at the peak, while
they are put in time order) and a block's working arrays, never with users x items. The events
are written in time order, in slices, as CSV (gzipped) or Parquet; :func:`sized` finds the
visits for a wanted number of events. Measured here (2 cores, Parquet): 10M events, 1M
shoppers and 200k items in 12 s at 0.57 GB peak RSS; 100M events in 4 min at 4.8 GB.

    python devtools/synthetic_shop.py --out data/synthetic    # events.csv.gz and items.csv
    python devtools/synthetic_shop.py --out data/sessions --users 5000 --sequential true   # ordered sessions
    python devtools/synthetic_shop.py --out data/big --users 1000000 --items 200000 \\
        --categories 5000 --tastes 1000 --visits-per-user 2.3 --format parquet   # ~10M events
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
SYLLABLES = ("ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "pe", "zu", "fo", "ri", "ma", "xe", "bo")
KINDS = ("view", "cart", "purchase")  # event codes 0, 1, 2 (shared.events.EventKind's order)
VIEW, CART, PURCHASE = 0, 1, 2
CART_RATE, PURCHASE_RATE = 0.3, 0.6
MAX_VIEWS = 6
#: Shoppers made from one random stream (at most; see block_size): fixed, so the output does not
#: depend on the machine.
SHOPPER_BLOCK = 50_000
#: Draws per visit in each round, as (per view wanted, extra); a visit still short of its views
#: (duplicates, items not launched yet or met before) draws again in the next round.
DRAW_ROUNDS = ((2, 2), (4, 8), (16, 32))
#: Events per written slice (CSV text or a Parquet row group).
WRITE_SLICE = 1 << 21


@dataclass
class ShopSpec:
    users: int = 6000
    items: int = 4000
    categories: int = 100
    tastes: int = 20
    days: float = 180.0
    visits_per_user: float = 6.0  # median of the lognormal number of visits
    rebuy: float = 0.03  # chance that an item bought before is bought again
    revisits: bool = True  # a shopper may view an item again on a later visit
    seed: int = 7
    #: sessions in order instead of visits to a category: views follow the item viewed last
    #: (its complements), see :mod:`devtools.session_shop`
    sequential: bool = False

    def __post_init__(self) -> None:
        if min(self.users, self.items, self.tastes) < 1 or self.categories < self.tastes:
            raise ValueError(f"need users, items, tastes >= 1 and categories >= tastes: {self}")
        if not 0 < self.days < 20_000 or self.visits_per_user <= 0 or not 0 <= self.rebuy <= 1:
            raise ValueError(f"need 0 < days < 20000, visits_per_user > 0 and 0 <= rebuy <= 1: {self}")


@dataclass
class Catalogue:
    """The items as columns: category [items] int64, appeal, launch (seconds since START) and
    price [items] float64; words for categories [categories] and tastes [tastes], and each
    item's own word as syllable indices [items, 3] (made into text only for the items file)."""

    category: np.ndarray
    appeal: np.ndarray
    launch: np.ndarray
    price: np.ndarray
    category_words: list[str]
    taste_words: list[str]
    item_syllables: np.ndarray

    def rows(self, spec: ShopSpec) -> list[tuple[str, str, str, float]]:
        """(id, title, category, price) per item."""
        taste = [self.taste_words[c % spec.tastes] for c in range(spec.categories)]
        return [(item_id(i), f"{self.category_words[c]} {taste[c]} {word}", self.category_words[c], price)
                for i, (c, word, price) in enumerate(zip(self.category.tolist(), _text(self.item_syllables),
                                                         self.price.tolist(), strict=True))]


@dataclass
class Shop:
    """Events as columns in time order: user and item indices (int32 [n]; ids from
    :func:`user_id` and :func:`item_id`), kind (int8 [n], an index into KINDS) and whole
    seconds since START (int32 [n], ascending); and the catalogue."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    seconds: np.ndarray
    catalogue: Catalogue

    def __len__(self) -> int:
        return len(self.user)


def user_id(index: int) -> str:
    return f"U{index:06d}"


def item_id(index: int) -> str:
    return f"S{index:06d}"


def _syllables(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, len(SYLLABLES), (n, 3), dtype=np.uint8)


def _distinct_words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` different words: of three syllables, or more where three would often repeat."""
    length = 3
    while len(SYLLABLES) ** length < 4 * n:
        length += 1
    codes = rng.choice(len(SYLLABLES) ** length, n, replace=False)
    return _text(codes[:, None] // len(SYLLABLES) ** np.arange(length) % len(SYLLABLES))


def _text(syllables: np.ndarray) -> list[str]:
    """A word per row of syllable indices."""
    return ["".join(SYLLABLES[s] for s in row) for row in syllables.tolist()]


def _catalogue(spec: ShopSpec, rng: np.random.Generator) -> Catalogue:
    category = rng.integers(0, spec.categories, spec.items)
    appeal = 1.0 / rng.permutation(np.arange(1, spec.items + 1)) ** 1.1  # Zipf over the whole shop
    launch = np.where(rng.random(spec.items) < 0.2, rng.uniform(0, spec.days * 86400, spec.items), 0.0)
    category_words, taste_words = _distinct_words(rng, spec.categories), _distinct_words(rng, spec.tastes)
    level = rng.lognormal(2.5, 0.8, spec.categories)
    price = np.round(level[category] * rng.lognormal(0, 0.3, spec.items), 2)
    return Catalogue(category, appeal, launch, price, category_words, taste_words, _syllables(rng, spec.items))


class _Shelves:
    """The catalogue arranged for drawing: items ordered by category, and per category the
    cumulative share of appeal (``c + share`` for category ``c``, so one search serves every
    category) and the sorted launch times."""

    def __init__(self, catalogue: Catalogue, categories: int) -> None:
        self.order = np.argsort(catalogue.category, kind="stable")
        category = catalogue.category[self.order]
        self.size = np.bincount(category, minlength=categories)
        self.first = np.r_[0, np.cumsum(self.size)[:-1]]
        cumulative = np.cumsum(catalogue.appeal[self.order])
        before = np.r_[0.0, cumulative][self.first][category]
        total = np.add.reduceat(catalogue.appeal[self.order], self.first[self.size > 0])
        share = (cumulative - before) / np.repeat(total, self.size[self.size > 0])
        share[self.first[self.size > 0] + self.size[self.size > 0] - 1] = 1.0
        self.key = category + share
        self.launch = catalogue.launch
        self.horizon = float(catalogue.launch.max()) + 1.0
        self.launch_key = np.sort(category * self.horizon + catalogue.launch[self.order])

    def draw(self, category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item of each ``category`` (none empty), drawn by appeal."""
        at = np.searchsorted(self.key, category + rng.random(len(category)), side="right")
        return self.order[np.minimum(at, len(self.order) - 1)]

    def on_sale(self, category: np.ndarray, when: np.ndarray) -> np.ndarray:
        """How many items of each ``category`` have launched by ``when``."""
        on_sale: np.ndarray = np.searchsorted(self.launch_key, category * self.horizon
                                              + np.minimum(when, self.horizon - 1), side="right")
        return on_sale - self.first[category]


def _heads(starts: np.ndarray) -> np.ndarray:
    """For each position, the position of the last start at or before it."""
    return np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))


def _running_count(flags: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """For each position, how many ``flags`` are set before it since its head (exclusive)."""
    before = np.cumsum(flags) - flags
    return before - before[heads]


def _accept(visit: np.ndarray, item: np.ndarray, ok: np.ndarray, group: np.ndarray,
            wanted: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Successive sampling without replacement, from draws with replacement (ordered by visit,
    then draw): a visit takes its draws in order, skipping those not ``ok`` (not on sale) and an
    item already taken within its ``group`` (the visit, or with revisits off the shopper's
    earlier visits, which come first), until it has ``wanted`` views. A draw after a visit is
    full was never made, so it cannot block a later visit: solved as a fixed point, which
    settles in a few passes. (visit, rank within the visit, item) of the views taken."""
    key = group[visit].astype(np.int64) * n_items + item
    by_group = np.argsort(key, kind="stable")  # (group, visit, draw): visits of a shopper in time order
    sorted_key = key[by_group]
    group_heads = _heads(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    visit_heads = _heads(np.r_[True, visit[1:] != visit[:-1]])
    drawn = np.ones(len(visit), dtype=bool)
    while True:
        active = (drawn & ok)[by_group]
        first = np.empty_like(active)
        first[by_group] = active & (_running_count(active, group_heads) == 0)
        rank = _running_count(first, visit_heads)
        now_drawn = rank < wanted[visit]
        if np.array_equal(now_drawn, drawn):
            break
        drawn = now_drawn
    taken = first & drawn
    return visit[taken], rank[taken], item[taken]


def _views(shelves: _Shelves, owner: np.ndarray, when: np.ndarray, category: np.ndarray, wanted: np.ndarray,
           target: np.ndarray, group: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(visit, rank, item) of the views of each visit, ordered by visit and rank, in rounds of
    draws (DRAW_ROUNDS): after the first, only the shoppers with a visit still short of its
    ``target`` draw again and have their visits settled again (a shopper's visits depend on each
    other, other shoppers' do not)."""
    n_items = len(shelves.order)
    draws_visit, draws_item = np.zeros(0, np.int64), np.zeros(0, np.int64)
    need = np.flatnonzero(target > 0)
    taken: tuple[np.ndarray, ...] = ()
    for per_view, extra in DRAW_ROUNDS:
        visit = np.repeat(need, per_view * wanted[need] + extra)
        draws_visit = np.concatenate([draws_visit, visit])
        draws_item = np.concatenate([draws_item, shelves.draw(category[visit], rng)])
        redo = np.zeros(owner[-1] + 1 if len(owner) else 0, dtype=bool)
        redo[owner[need]] = True
        mine = np.flatnonzero(redo[owner[draws_visit]])
        mine = mine[np.argsort(draws_visit[mine], kind="stable")]  # by visit, then draw (rounds in order)
        visit, item = draws_visit[mine], draws_item[mine]
        again: tuple[np.ndarray, ...] = _accept(visit, item, shelves.launch[item] <= when[visit], group, wanted,
                                                n_items)
        if taken:
            kept = ~redo[owner[taken[0]]]
            again = tuple(np.concatenate([old[kept], new]) for old, new in zip(taken, again, strict=True))
        taken = again
        need = np.flatnonzero(np.bincount(taken[0], minlength=len(owner)) < target)
        if not len(need):
            break
    order = np.lexsort((taken[1], taken[0]))
    return tuple(column[order] for column in taken)


def visit_times(spec: ShopSpec, users: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(shopper, seconds since START) of each visit within the period, by shopper then time: a
    lognormal number of visits (median ``visits_per_user``) over a random part of the period."""
    span = spec.days * 86400
    visits = np.maximum(1, rng.lognormal(np.log(spec.visits_per_user), 0.8, users).astype(np.int64))
    first = rng.uniform(0, span, users)
    window = rng.uniform(0.2, 1.0, users) * span
    owner = np.repeat(np.arange(users), visits)
    when = first[owner] + rng.random(len(owner)) * window[owner]
    order = np.lexsort((when, owner))
    owner, when = owner[order], when[order]
    return owner[when < span], when[when < span]


def _shoppers(spec: ShopSpec, shelves: _Shelves, first_user: int, users: int,
              rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(user, item, kind, seconds) of one block of shoppers, not yet in time order."""
    tastes, per_taste = spec.tastes, -(-spec.categories // spec.tastes)
    # one to three liked tastes, distinct: the second skips the first, the third skips both
    n_liked = np.minimum(rng.integers(1, 4, users), tastes)
    a = rng.integers(0, tastes, users)
    b = rng.integers(0, max(tastes - 1, 1), users)
    b += b >= a
    c = rng.integers(0, max(tastes - 2, 1), users)
    c += c >= np.minimum(a, b)
    c += c >= np.maximum(a, b)
    liked = np.stack([a, b, c], axis=1)
    mix = rng.standard_exponential((users, 3)) * (np.arange(3) < n_liked[:, None])  # Dirichlet(1, ...)
    mix = np.cumsum(mix, axis=1) / mix.sum(axis=1, keepdims=True)
    # categories of taste t are t, t + tastes, ...; Dirichlet(0.5) preferences among them
    count = (spec.categories - liked + tastes - 1) // tastes
    # (a row per shopper and liked taste, cumulative, as ``row + share`` so that one search serves all rows)
    preference = rng.standard_gamma(0.5, (users, 3, per_taste)) * (np.arange(per_taste) < count[:, :, None])
    preference[:, :, 0] += 1e-300
    preference = np.cumsum(preference, axis=2) / preference.sum(axis=2, keepdims=True)
    preference += np.arange(users * 3).reshape(users, 3, 1)

    owner, when = visit_times(spec, users, rng)
    slot = np.minimum((rng.random(len(owner))[:, None] >= mix[owner]).sum(axis=1), n_liked[owner] - 1)
    taste = liked[owner, slot]
    row = owner * 3 + slot
    chosen = np.searchsorted(preference.ravel(), row + rng.random(len(owner)), side="right") - row * per_taste
    category = taste + np.minimum(chosen, count[owner, slot] - 1) * tastes
    wanted = rng.integers(1, MAX_VIEWS + 1, len(owner))
    target = np.minimum(wanted, shelves.on_sale(category, when))
    group = np.arange(len(owner)) if spec.revisits else owner

    taken_visit, rank, taken_item = _views(shelves, owner, when, category, wanted, target, group, rng)

    # a session: views a minute apart
    seconds = np.floor(when[taken_visit]).astype(np.int64) + 60 * rank
    return with_purchases(owner[taken_visit], taken_item, seconds, first_user, len(shelves.order), spec.rebuy, rng)


def with_purchases(user: np.ndarray, item: np.ndarray, seconds: np.ndarray, first_user: int, n_items: int,
                   rebuy: float, rng: np.random.Generator, rates: tuple[float, float] = (CART_RATE, PURCHASE_RATE),
                   ) -> tuple[np.ndarray, ...]:
    """(user, item, kind, seconds) of views (``user``, ``item``, ``seconds``, in time order within a
    shopper) with their carts (probability ``rates[0]`` a view, 20 s after it) and purchases
    (``rates[1]`` a cart, 40 s after the view): the first purchase of an item always happens, a
    later one with probability ``rebuy``."""
    cart = rng.random(len(user)) < rates[0]
    purchase = cart & (rng.random(len(user)) < rates[1])
    key = user[purchase] * n_items + item[purchase]
    by_pair = np.argsort(key, kind="stable")  # views are in time order within a shopper
    again = np.empty(len(key), dtype=bool)
    again[by_pair] = np.r_[False, key[by_pair][1:] == key[by_pair][:-1]]
    bought = np.flatnonzero(purchase)[~again | (rng.random(len(key)) < rebuy)]
    pick = np.r_[np.arange(len(user)), np.flatnonzero(cart), bought]
    kind = np.repeat(np.array([VIEW, CART, PURCHASE], dtype=np.int8), [len(user), int(cart.sum()), len(bought)])
    return ((user[pick] + first_user).astype(np.int32), item[pick].astype(np.int32), kind,
            (seconds[pick] + np.array([0, 20, 40])[kind]).astype(np.int32))


def block_size(spec: ShopSpec) -> int:
    """Shoppers made from one random stream: SHOPPER_BLOCK, fewer where a taste has very many
    categories (the preferences take 3 x categories a taste floats a shopper)."""
    return max(1000, min(SHOPPER_BLOCK, 4_000_000 // -(-spec.categories // spec.tastes)))


def _time_order(seconds: np.ndarray) -> np.ndarray:
    """The stable order of ``seconds`` (0 <= s < 2**31), as int32 positions: two stable passes
    over 16-bit digits, which numpy sorts by radix (twice as fast as one comparison sort at 100M
    events; int32 positions keep its memory near that of one int64 argsort)."""
    order = np.argsort((seconds & 0xFFFF).astype(np.uint16), kind="stable").astype(np.int32)
    high = (seconds >> 16).astype(np.uint16)[order]
    return order[np.argsort(high, kind="stable")]


def generate(spec: ShopSpec) -> Shop:
    """The shop of ``spec``: events in time order and the catalogue (the same for the same spec)."""
    catalogue = _catalogue(spec, np.random.default_rng(spec.seed))
    shelves = _Shelves(catalogue, spec.categories)
    size = block_size(spec)
    if spec.sequential:
        from devtools.session_shop import session_shoppers as make
    else:
        make = _shoppers
    blocks: list[list[np.ndarray | None]] = [
        list(make(spec, shelves, start, min(size, spec.users - start), np.random.default_rng([spec.seed, n])))
        for n, start in enumerate(range(0, spec.users, size))]
    columns: list[np.ndarray] = []
    for n in range(4):  # one column at a time, each block's part let go once copied
        columns.append(np.concatenate([block[n] for block in blocks if block[n] is not None]))
        for block in blocks:
            block[n] = None
    order = _time_order(columns[3])
    for n in range(4):  # one at a time, the unordered column let go as its ordered one is made
        columns[n] = columns[n][order]
    return Shop(columns[0], columns[1], columns[2], columns[3], catalogue)


def sized(events: int, shoppers: int, items: int, seed: int = 7, sample: int = SHOPPER_BLOCK) -> ShopSpec:
    """A spec of about ``events`` events from about ``shoppers`` shoppers seen in them (some of
    ``users`` come only after the period) and ``items`` items: 40 items a category and 5
    categories a taste, as the default spec. ``visits_per_user`` is found by bisection on a
    sample of shoppers (events a shopper grow with it about linearly), then ``users`` so that
    ``shoppers`` are seen."""
    categories = max(1, items // 40)
    base = ShopSpec(users=min(shoppers, sample), items=items, categories=categories,
                    tastes=max(1, categories // 5), seed=seed)

    def per_shopper(visits: float) -> tuple[float, float]:
        shop = generate(replace(base, visits_per_user=visits))
        seen = len(np.unique(shop.user))
        return len(shop) / max(seen, 1), seen / base.users

    low, high = 0.05, 50.0
    for _ in range(14):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if per_shopper(middle)[0] * shoppers < events else (low, middle)
    visits = round((low * high) ** 0.5, 4)
    return replace(base, users=round(shoppers / per_shopper(visits)[1]), visits_per_user=visits)


def _event_slices(shop: Shop) -> Iterator[pa.Table]:
    """The events as tables of WRITE_SLICE rows: string ids and kinds, UTC timestamps in seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kinds = pa.array(KINDS)
    for at in range(0, len(shop), WRITE_SLICE):
        part = slice(at, at + WRITE_SLICE)
        ids = [pc.binary_join_element_wise(prefix, pc.utf8_lpad(pc.cast(pa.array(column[part]), pa.string()), 6,
                                                                 padding="0"), "")
               for prefix, column in (("U", shop.user), ("S", shop.item))]
        when = pa.array(shop.seconds[part].astype(np.int64) + int(START)).cast(pa.timestamp("s", tz="UTC"))
        yield pa.table({"user_id": ids[0], "item_id": ids[1], "event": kinds.take(pa.array(shop.kind[part])),
                        "timestamp": when})


def write_events_csv(shop: Shop, path: Path, level: int = 6) -> None:
    """``user_id,item_id,event,timestamp`` with ISO-8601 UTC times, gzipped when ``path`` ends in .gz."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with (gzip.open(path, "wb", compresslevel=level) if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(b"user_id,item_id,event,timestamp\n")
        for table in _event_slices(shop):
            text = pc.strftime(table["timestamp"], format="%Y-%m-%dT%H:%M:%SZ")
            pacsv.write_csv(table.set_column(3, "timestamp", text), f, options)


def write_events_parquet(shop: Shop, path: Path) -> None:
    """The same columns as Parquet: strings, and the timestamp as a UTC timestamp (whole seconds);
    a row group a slice."""
    import pyarrow.parquet as pq

    writer = None
    for table in _event_slices(shop):
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    if writer:
        writer.close()


def write_items(shop: Shop, spec: ShopSpec, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("item_id", "title", "category", "price"))
        writer.writerows(shop.catalogue.rows(spec))


def write(spec: ShopSpec, out: Path, events_format: str = "csv") -> tuple[Path, Path]:
    """(events, items) written under ``out``: events.csv.gz or events.parquet, and items.csv."""
    shop = generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    events = out / ("events.parquet" if events_format == "parquet" else "events.csv.gz")
    if events_format == "parquet":
        write_events_parquet(shop, events)
    else:
        write_events_csv(shop, events)
    write_items(shop, spec, out / "items.csv")
    return events, out / "items.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="of the events file")
    for name, value in vars(ShopSpec()).items():
        kind = (lambda text: text.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args()
    spec = ShopSpec(**{name: getattr(args, name) for name in vars(ShopSpec())})
    events, items = write(spec, args.out, args.format)
    print(f"wrote {events} and {items}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools.session_shop, run as a script
    sys.exit(main())

"""A generated shop where shoppers rarely buy the same item twice, with planted taste structure.

Real data sets of this kind (media, electronics, fashion) cannot be shipped, so this one is made,
seeded, from a stated model of shopping, and the trainer is checked on it beside the real logs:

- Items belong to ``categories``; categories are grouped into ``tastes`` (a shopper's interests).
  Within a category, item appeal follows a Zipf law; a fifth of the items launch during the
  period (new products), the rest exist from the start.
- Each shopper likes one to three tastes (Dirichlet weights) and some categories within them more
  than others, and comes back a lognormal number of times over ``days``.
- A visit picks a taste, a category of it, and views 1-6 of its items on sale by appeal; a viewed
  item goes to the cart with probability 0.3 and a cart item is bought with probability 0.6. An
  item bought before is bought again with probability 0.03 only. With ``revisits`` off, a
  shopper never meets an item twice (like ratings turned into events: one event per item).
- Titles name the item's category and taste in words (so side features carry signal); prices
  are lognormal around a price level per category.

    python devtools/synthetic_shop.py --out data/synthetic    # events.csv.gz and items.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
SYLLABLES = ("ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "pe", "zu", "fo", "ri", "ma", "xe", "bo")


@dataclass
class ShopSpec:
    users: int = 6000
    items: int = 4000
    categories: int = 100
    tastes: int = 20
    days: float = 180.0
    visits_per_user: float = 6.0  # mean of the lognormal number of visits
    rebuy: float = 0.03  # chance that an item bought before is bought again
    revisits: bool = True  # a shopper may view an item again on a later visit
    seed: int = 7


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(SYLLABLES, size=3))


def generate(spec: ShopSpec) -> tuple[list[tuple[str, str, str, float]], list[tuple[str, str, str, float]]]:
    """(events as (user, item, kind, epoch seconds) in time order, items as (id, title, category, price))."""
    rng = np.random.default_rng(spec.seed)
    taste_of_category = np.arange(spec.categories) % spec.tastes
    category = rng.integers(0, spec.categories, spec.items)
    appeal = 1.0 / rng.permutation(np.arange(1, spec.items + 1)) ** 1.1  # Zipf over the whole shop
    launch = np.where(rng.random(spec.items) < 0.2, rng.uniform(0, spec.days * 86400, spec.items), 0.0)
    category_words = [_word(rng) for _ in range(spec.categories)]
    taste_words = [_word(rng) for _ in range(spec.tastes)]
    level = rng.lognormal(2.5, 0.8, spec.categories)
    items = [(f"S{i:06d}", f"{category_words[c]} {taste_words[taste_of_category[c]]} {_word(rng)}",
              f"{category_words[c]}", round(float(level[c] * rng.lognormal(0, 0.3)), 2))
             for i, c in enumerate(category.tolist())]
    by_category = [np.flatnonzero(category == c) for c in range(spec.categories)]
    categories_of_taste = [np.flatnonzero(taste_of_category == t) for t in range(spec.tastes)]
    events: list[tuple[str, str, str, float]] = []
    for u in range(spec.users):
        user = f"U{u:06d}"
        liked = rng.choice(spec.tastes, size=rng.integers(1, 4), replace=False)
        taste_mix = rng.dirichlet(np.ones(len(liked)))
        visits = max(1, int(rng.lognormal(np.log(spec.visits_per_user), 0.8)))
        first = rng.uniform(0, spec.days * 86400)
        times = np.sort(rng.uniform(first, first + rng.uniform(0.2, 1.0) * spec.days * 86400, visits))
        times = times[times < spec.days * 86400]
        bought: set[int] = set()
        met: set[int] = set()
        preference = {t: rng.dirichlet(np.ones(len(categories_of_taste[t])) * 0.5) for t in liked.tolist()}
        for when in times.tolist():
            taste = int(rng.choice(liked, p=taste_mix))
            cat = int(rng.choice(categories_of_taste[taste], p=preference[taste]))
            on_sale = by_category[cat][launch[by_category[cat]] <= when]
            if not spec.revisits:
                on_sale = np.asarray([i for i in on_sale.tolist() if i not in met], dtype=np.int64)
            if not len(on_sale):
                continue
            weights = appeal[on_sale] / appeal[on_sale].sum()
            seen = rng.choice(on_sale, size=min(len(on_sale), int(rng.integers(1, 7))), replace=False, p=weights)
            met.update(seen.tolist())
            for step, item in enumerate(seen.tolist()):
                t = START + when + 60.0 * step
                events.append((user, items[item][0], "view", t))
                if rng.random() < 0.3:
                    events.append((user, items[item][0], "cart", t + 20))
                    if rng.random() < 0.6 and (item not in bought or rng.random() < spec.rebuy):
                        events.append((user, items[item][0], "purchase", t + 40))
                        bought.add(item)
    events.sort(key=lambda e: e[3])
    return events, items


def write(spec: ShopSpec, out: Path) -> tuple[Path, Path]:
    events, items = generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "events.csv.gz", "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("user_id", "item_id", "event", "timestamp"))
        writer.writerows((u, i, k, datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                         for u, i, k, t in events)
    with open(out / "items.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("item_id", "title", "category", "price"))
        writer.writerows(items)
    return out / "events.csv.gz", out / "items.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    for name, value in vars(ShopSpec()).items():
        kind = (lambda text: text.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args()
    spec = ShopSpec(**{name: getattr(args, name) for name in vars(ShopSpec())})
    events, items = write(spec, args.out)
    print(f"wrote {events} and {items}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

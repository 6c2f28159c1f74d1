"""Cold-start items: vectors for catalogue items that have no events yet, predicted from their side features.

An item listed in the items file but absent from the training events (a new product) has no
learned embedding, so no shopper could be shown it until the next training run with its sales.
This module gives it one. Each item is described by

- the words of its title (lower case, letters and digits, words of at least 2 characters that
  occur in at least ``min_items`` training items' titles; the ``max_names`` most used),
- its category, when the data has one (one indicator per category of at least ``min_items``
  training items; the ``max_names`` most used),
- its price bucket (``price_buckets`` quantiles of log price over the training items),
- an intercept,

and a ridge regression fitted on the training items maps those features to everything the model
holds per item: its history-embedding row, its item vector and its item bias. A new item then
scores like the trained items it resembles ("PINK RETROSPOT" near the other pink-retrospot
items), and once a shopper interacts with it on the device its predicted history embedding
speaks for it.

Ridge predictions are shrunk towards the average item, so a predicted item vector is scaled by
``vector_scale`` before use: unscaled, a new item scored below the trained items it resembles and
never reached a top 100. The defaults (``l2`` 3, ``vector_scale`` 5) were chosen on the validation
month cut from the training period, as the pair with the best Recall@20 over every item bought
(new and trained), ties broken towards more new items found (docs/evaluation.md, "Cold-start items").

The trainer calls :func:`extend_with_cold_items` after fitting, whatever the model kind.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cloud_trainer.models.dot_product import ModelWeights
from shared.catalog import CatalogItem

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class SideFeatureSettings:
    l2: float = 3.0  # ridge penalty
    vector_scale: float = 5.0  # undoes the ridge's shrinkage of predicted item vectors
    min_items: int = 2  # a title word or category is a feature if at least this many trained items have it
    max_names: int = 4096  # at most this many title words, and this many categories (the most used)
    price_buckets: int = 8
    use_title: bool = True
    use_category: bool = True
    use_price: bool = True


def title_words(title: str) -> list[str]:
    """The distinct words of a title, lower case, at least 2 characters (``"12 PENCILS TALL TUBE"`` ->
    ``["12", "pencils", "tall", "tube"]``)."""
    return list(dict.fromkeys(w for w in _WORD.findall(title.lower()) if len(w) >= 2))


@dataclass(frozen=True)
class SparseRows:
    """A sparse [rows, columns] matrix as (row, column, value) triples, rows ascending.

    An item has a handful of features among thousands, so dense matrices would cost items x
    features x 8 bytes (3 GB for 40k items and 10k words); these cost a few per item. numpy only:
    the products below are bincounts, one per dense column.
    """

    rows: np.ndarray  # int64 [nnz]
    cols: np.ndarray  # int64 [nnz]
    vals: np.ndarray  # float64 [nnz]
    shape: tuple[int, int]

    def dense(self) -> np.ndarray:
        x = np.zeros(self.shape)
        np.add.at(x, (self.rows, self.cols), self.vals)
        return x

    def gram(self) -> np.ndarray:
        """X'X [columns, columns]: every pair of entries that share a row."""
        first = np.searchsorted(self.rows, self.rows, side="left")
        count = np.searchsorted(self.rows, self.rows, side="right") - first  # entries in each entry's row
        left = np.repeat(np.arange(len(self.rows)), count)
        right = np.repeat(first, count) + np.arange(len(left)) - np.repeat(np.cumsum(count) - count, count)
        width = self.shape[1]
        flat = np.bincount(self.cols[left] * width + self.cols[right], weights=self.vals[left] * self.vals[right],
                           minlength=width * width)
        return flat.reshape(width, width)

    def dot(self, w: np.ndarray) -> np.ndarray:
        """X W: [rows, k] for W [columns, k]."""
        return _scatter(self.rows, self.cols, self.vals, w, self.shape[0])

    def t_dot(self, y: np.ndarray) -> np.ndarray:
        """X'Y: [columns, k] for Y [rows, k]."""
        return _scatter(self.cols, self.rows, self.vals, y, self.shape[1])


def _scatter(out_index: np.ndarray, in_index: np.ndarray, vals: np.ndarray, dense: np.ndarray,
             size: int) -> np.ndarray:
    out = np.empty((size, dense.shape[1]))
    for j in range(dense.shape[1]):
        out[:, j] = np.bincount(out_index, weights=vals * dense[in_index, j], minlength=size)
    return out


@dataclass
class FeatureSpace:
    """The feature vocabulary, fixed on the training items: words, categories and price cut points."""

    words: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    price_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # log-price cut points, ascending

    @property
    def size(self) -> int:
        return 1 + len(self.words) + len(self.categories) + (len(self.price_edges) + 1 if len(self.price_edges) else 0)

    @classmethod
    def fit(cls, items: Sequence[CatalogItem], settings: SideFeatureSettings) -> FeatureSpace:
        space = cls()
        if settings.use_title:
            space.words = _vocabulary(Counter(w for item in items for w in title_words(item.title)), settings)
        if settings.use_category:
            space.categories = _vocabulary(Counter(item.category for item in items if item.category), settings)
        prices = np.log([item.price for item in items if item.price is not None and item.price > 0])
        if settings.use_price and settings.price_buckets > 1 and len(prices):
            quantiles = np.linspace(0, 1, settings.price_buckets + 1)[1:-1]
            space.price_edges = np.unique(np.quantile(prices, quantiles))
        return space

    def matrix(self, items: Sequence[CatalogItem]) -> SparseRows:
        """[items, size]: the intercept, then title words (each row's words scaled to unit length, so
        a long title does not outweigh a short one), categories, price bucket."""
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        words_at, categories_at = 1, 1 + len(self.words)
        price_at = categories_at + len(self.categories)
        for row, item in enumerate(items):
            words = [words_at + self.words[w] for w in title_words(item.title) if w in self.words]
            columns = [0, *words]
            values = [1.0] + ([len(words) ** -0.5] * len(words) if words else [])
            category = self.categories.get(item.category)
            if category is not None:
                columns.append(categories_at + category)
                values.append(1.0)
            if len(self.price_edges) and item.price is not None and item.price > 0:
                columns.append(price_at + int(np.searchsorted(self.price_edges, np.log(item.price))))
                values.append(1.0)
            rows += [row] * len(columns)
            cols += columns
            vals += values
        return SparseRows(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
                          np.asarray(vals, dtype=np.float64), (len(items), self.size))


def _vocabulary(counts: Counter[str], settings: SideFeatureSettings) -> dict[str, int]:
    """Column per name used by at least ``min_items`` items, the ``max_names`` most used ones
    (the ridge solves a features x features system)."""
    common = [name for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
              if n >= settings.min_items][: settings.max_names]
    return {name: n for n, name in enumerate(sorted(common))}


def ridge(x: SparseRows, y: np.ndarray, l2: float) -> np.ndarray:
    """``argmin_w |x w - y|^2 + l2 |w|^2`` by the normal equations (features x features; the
    intercept column is penalised too, which is tiny next to the data)."""
    gram = x.gram()
    gram[np.diag_indices_from(gram)] += l2
    return np.linalg.solve(gram, x.t_dot(y))


def predict_item_weights(weights: ModelWeights, known: Sequence[CatalogItem], new: Sequence[CatalogItem],
                         settings: SideFeatureSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted (history-embedding rows [M, D], item vectors [D, M], item bias [M]) for ``new``
    items, from a ridge fit of ``known`` items' features (``known[i]`` is model item ``i``)."""
    if len(known) != weights.num_items:
        raise ValueError(f"{len(known)} known items for a model of {weights.num_items}")
    space = FeatureSpace.fit(known, settings)
    log.info("side features of %d new items: %d title words, %d categories, %d price buckets (ridge on %d items)",
             len(new), len(space.words), len(space.categories),
             len(space.price_edges) + 1 if len(space.price_edges) else 0, len(known))
    x_known, x_new = space.matrix(known), space.matrix(new)
    dim = weights.history_embedding.shape[1]
    targets = np.hstack([weights.history_embedding, weights.item_vectors.T, weights.item_bias[:, None]])
    predicted = x_new.dot(ridge(x_known, targets.astype(np.float64), settings.l2))
    return predicted[:, :dim], settings.vector_scale * predicted[:, dim:-1].T, predicted[:, -1]


def extend_with_cold_items(weights: ModelWeights, known: Sequence[CatalogItem], new: Sequence[CatalogItem],
                           settings: SideFeatureSettings) -> ModelWeights:
    """``weights`` with ``new`` items appended after the known ones (model indices N .. N+M-1)."""
    if not new:
        return weights
    embedding, vectors, bias = predict_item_weights(weights, known, new, settings)
    return replace(
        weights,
        history_embedding=np.vstack([weights.history_embedding, embedding]).astype(np.float32),
        item_vectors=np.hstack([weights.item_vectors, vectors]).astype(np.float32),
        item_bias=np.concatenate([weights.item_bias, bias]).astype(np.float32),
    )


def catalogue_items(metadata: dict[str, CatalogItem],
                    trained: list[str]) -> tuple[list[CatalogItem], list[CatalogItem]]:
    """The trained items in model order (bare ids where the items file lacks them), and the items of
    the items file that have no training events, by id: those follow the trained items in the model
    and catalogue, with vectors predicted from their side features."""
    known = set(trained)
    return ([metadata.get(item_id, CatalogItem(id=item_id)) for item_id in trained],
            [metadata[item_id] for item_id in sorted(metadata) if item_id not in known])

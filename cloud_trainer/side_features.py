"""Cold-start items: vectors for catalogue items that have no events yet, predicted from their side features.

An item listed in the items file but absent from the training events (a new product) has no
learned embedding, so no shopper could be shown it until the next training run with its sales.
This module gives it one. Each item is described by

- the words of its title (lower case, letters and digits, words of at least 2 characters that
  occur in at least ``min_word_items`` training items' titles),
- its category, when the data has one (one indicator per category seen in training),
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
(new and trained), ties broken towards more new items found (README "Cold-start items").

The trainer calls :func:`extend_with_cold_items` after fitting, whatever the model kind.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cloud_trainer.model import ModelWeights
from shared.catalog import CatalogItem

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class SideFeatureSettings:
    l2: float = 3.0  # ridge penalty
    vector_scale: float = 5.0  # undoes the ridge's shrinkage of predicted item vectors
    min_word_items: int = 2  # a title word is a feature if at least this many training items use it
    price_buckets: int = 8
    use_title: bool = True
    use_category: bool = True
    use_price: bool = True


def title_words(title: str) -> list[str]:
    """The distinct words of a title, lower case, at least 2 characters (``"12 PENCILS TALL TUBE"`` ->
    ``["12", "pencils", "tall", "tube"]``)."""
    return list(dict.fromkeys(w for w in _WORD.findall(title.lower()) if len(w) >= 2))


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
            counts = Counter(w for item in items for w in title_words(item.title))
            kept = sorted(w for w, n in counts.items() if n >= settings.min_word_items)
            space.words = {w: n for n, w in enumerate(kept)}
        if settings.use_category:
            names = sorted({item.category for item in items if item.category})
            space.categories = {name: n for n, name in enumerate(names)}
        prices = np.log([item.price for item in items if item.price is not None and item.price > 0])
        if settings.use_price and settings.price_buckets > 1 and len(prices):
            quantiles = np.linspace(0, 1, settings.price_buckets + 1)[1:-1]
            space.price_edges = np.unique(np.quantile(prices, quantiles))
        return space

    def matrix(self, items: Sequence[CatalogItem]) -> np.ndarray:
        """float64 [items, size]: the intercept, then title words (each row's words scaled to unit
        length, so a long title does not outweigh a short one), categories, price bucket."""
        x = np.zeros((len(items), self.size))
        x[:, 0] = 1.0
        words_at, categories_at = 1, 1 + len(self.words)
        price_at = categories_at + len(self.categories)
        for row, item in enumerate(items):
            columns = [self.words[w] for w in title_words(item.title) if w in self.words]
            if columns:
                x[row, [words_at + c for c in columns]] = 1.0 / np.sqrt(len(columns))
            category = self.categories.get(item.category)
            if category is not None:
                x[row, categories_at + category] = 1.0
            if len(self.price_edges) and item.price is not None and item.price > 0:
                x[row, price_at + int(np.searchsorted(self.price_edges, np.log(item.price)))] = 1.0
        return x


def ridge(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """``argmin_w |x w - y|^2 + l2 |w|^2`` (intercept column included in the penalty; it is tiny
    next to the data), solved as the smaller of the two normal-equation systems."""
    if x.shape[0] >= x.shape[1]:
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += l2
        return np.linalg.solve(gram, x.T @ y)
    gram = x @ x.T
    gram[np.diag_indices_from(gram)] += l2
    return x.T @ np.linalg.solve(gram, y)


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
    predicted = x_new @ ridge(x_known, targets.astype(np.float64), settings.l2)
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

"""The blend's weight ``a`` (:mod:`cloud_trainer.models.blend`), chosen on the validation window
of the shop's own training data, as the factorized model's settings are
(:mod:`cloud_trainer.models.tuning`: the same window, shoppers, holdings, exclusions and objective,
the mean of the two modes' Recall@20).

Neither model has learnt the window's purchases when it is scored: the factorized model is refitted
on the events before the window with the settings ``train`` chose for it, and the transformer's
own early stopping already held the same most recent share of its training examples out (its
checkpoint never trained on them; its cut is the same share of examples rather than of events,
a little later in time at most). Every weight in :data:`~cloud_trainer.models.blend.BLEND_WEIGHTS`
is scored, all figures are recorded; ties go to the smaller weight. The best weight is kept only if
its gain over the factorized model alone (weight 0) exceeds :data:`MIN_GAIN_SE` standard errors of
that gain (paired, shopper by shopper); else the weight is 0 and the factorized model serves alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable
from cloud_trainer.evaluation import metrics, splits
from cloud_trainer.models.blend import BATCH, BLEND_WEIGHTS, VARIANCE_FLOOR, TransformerWeights, augmented
from cloud_trainer.models.served_ranking import K, ban, pooled_histories
from cloud_trainer.models.transformer import encode
from cloud_trainer.models.tuning import (
    MAX_VALIDATION_SHOPPERS,
    MIN_SHOPPERS,
    Candidate,
    Validation,
    ValidationScorer,
    validation_window,
)
from shared.catalog import CatalogItem
from shared.sequence import sequence_inputs

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
#: The best weight must gain more than this many standard errors of the objective over the factorized
#: model alone, or the factorized model serves alone: the best of 10 weights is a maximum over noisy
#: figures, and the blend costs both models' training, file and time on the device.
MIN_GAIN_SE = 2.0


@dataclass
class BlendChoice:
    a: float
    validation_from: str
    shoppers: int  # validation shoppers scored
    recall: dict[str, dict[str, float]] = field(default_factory=dict)  # per weight: all, new, objective
    seconds: float = 0.0
    stopped_by: str = "scored"  # or why the weight is 0 (the factorized model alone): too few shoppers, no clear gain

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _scaled(users: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """``[u, 1] / sd`` per shopper: the user rows whose dot with the item rows are scores over sd."""
    v = np.concatenate([users, np.ones((len(users), 1), dtype=users.dtype)], axis=1).astype(np.float64)
    sd = np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", v, covariance, v), VARIANCE_FLOOR))
    return v / sd[:, None]


def per_shopper_recall(ranked: np.ndarray, targets: list[set[int]]) -> np.ndarray:
    """Recall@K of each shopper (NaN for one without targets), as :func:`metrics.recall_ndcg` counts it."""
    return np.array([len(set(row[:K].tolist()) & wanted) / min(K, len(wanted)) if wanted else np.nan
                     for row, wanted in zip(ranked, targets, strict=True)])


def objective_gain(mine: dict[str, np.ndarray], alone: dict[str, np.ndarray]) -> tuple[float, float]:
    """(the objective's gain over ``alone``, its standard error), shopper by shopper: each shopper's
    share of the mean of the two modes' mean Recall@K, summed; a shopper without targets in a mode
    has no share of it."""
    shares = np.zeros(len(alone["all"]))
    for mode in ("all", "new"):
        d = mine[mode] - alone[mode]
        counted = np.isfinite(d)
        if counted.any():
            shares[counted] += d[counted] / (2 * counted.sum())
    if len(shares) < 2:
        return float(shares.sum()), 0.0
    return float(shares.sum()), float(np.sqrt(len(shares) * shares.var(ddof=1)))


def chosen_weight(recall: dict[str, dict[str, float]]) -> tuple[float, str]:
    """(the weight, why) from each weight's validation figures (``objective``, and ``gain`` and
    ``se(gain)`` over weight 0): the best objective, ties to the smaller weight, if its gain is
    clear (over :data:`MIN_GAIN_SE` standard errors); else 0."""
    best = max(recall, key=lambda a: (recall[a]["objective"], -float(a)))
    gain, se = recall[best]["gain"], recall[best]["se(gain)"]
    if float(best) and gain <= MIN_GAIN_SE * se:
        return 0.0, (f"the best weight, {best}, gains {gain:+.4f} ± {se:.4f}: within {MIN_GAIN_SE:g} standard "
                     "errors, so the factorized model alone")
    return float(best), f"the best objective on validation, {gain:+.4f} ± {se:.4f} over the factorized model alone"


def transformer_users(weights: TransformerWeights, train: EventTable, histories: list[np.ndarray]) -> np.ndarray:
    """[shoppers, D_t]: the transformer's user vectors of the histories (rows of ``train``, oldest
    first; item indices are the catalogue's that ``weights`` is over), built as the agent builds them."""
    columns = [sequence_inputs([(int(train.item[r]), KINDS_BY_CODE[int(train.kind[r])], float(train.timestamp[r]))
                                for r in rows], weights.length) for rows in histories]
    items, kinds, gaps = (np.asarray([c[n] for c in columns], dtype=np.int32).reshape(len(columns), weights.length)
                          for n in range(3))
    params = weights.constants()
    out = []
    for first in range(0, len(items), BATCH):
        part = slice(first, first + BATCH)
        hidden = encode(params, items[part], kinds[part], gaps[part], weights.blocks, weights.heads)[0]
        out.append(hidden.numpy() @ weights.projection + weights.projection_bias)
    return np.concatenate(out) if out else np.zeros((0, len(weights.projection)), dtype=np.float32)


def validation_rankings(validation: Validation, scorer: ValidationScorer, factorized: Candidate,
                        transformer: keras.Model, transformer_items: list[str],
                        weights: tuple[float, ...] = BLEND_WEIGHTS) -> dict[float, dict[str, np.ndarray]]:
    """Per weight and mode (all, new), [shoppers, K] catalogue indices as the agent serves the blend
    (float) to the validation shoppers, both models scored once: the factorized model refitted
    on the events before the window (``scorer``), the ``transformer`` as trained (ranking
    ``transformer_items``, by index)."""
    f = scorer.weights(factorized)
    catalogue = [*validation.train.item_ids, *(item.id for item in validation.new)]
    position = {item: n for n, item in enumerate(transformer_items)}
    t = TransformerWeights.of(transformer, np.asarray([position.get(item, -1) for item in catalogue]))
    m_f, c_f = augmented(f.item_vectors, f.item_bias)
    m_t, c_t = augmented(t.item_vectors, t.item_bias)
    pooled, (user, item, counts) = pooled_histories(f, validation.train, scorer.kept, factorized.history_length)
    g_f = _scaled(pooled @ f.projection + f.projection_bias, c_f)  # [shoppers, D_f + 1]
    g_t = _scaled(transformer_users(t, validation.train, scorer.kept), c_t)
    repeat = f.repeat_weight * counts * g_f[user, -1]  # the repeat term over sd_f (g_f's last column: 1 / sd_f)
    shoppers = len(scorer.kept)
    ranked = {a: {mode: np.empty((shoppers, min(K, f.num_items)), dtype=np.int64) for mode in ("all", "new")}
              for a in weights}
    batch = metrics.users_per_batch(f.num_items)
    for first in range(0, shoppers, batch):
        rows = slice(first, min(first + batch, shoppers))
        s_f, s_t = g_f[rows] @ m_f.T, g_t[rows] @ m_t.T
        mine = (user >= first) & (user < rows.stop)
        banned = scorer.excluded[rows]
        for a in weights:
            scores = (1.0 - a) * s_f + a * s_t
            scores[user[mine] - first, item[mine]] += (1.0 - a) * repeat[mine]
            ranked[a]["all"][rows] = metrics.top_k(scores, ranked[a]["all"].shape[1])
            ban(scores, banned)
            ranked[a]["new"][rows] = metrics.top_k(scores, ranked[a]["new"].shape[1])
    return ranked


def choose_weight(table: EventTable, metadata: dict[str, CatalogItem], factorized: Candidate,
                  transformer: keras.Model, transformer_items: list[str], share: float, seed: int,
                  target: str) -> BlendChoice:
    """``a`` on the validation window (the last ``share`` of ``table``, the training period),
    for the factorized model's settings ``factorized`` and the trained ``transformer`` (ranking
    ``transformer_items``, by index)."""
    started = time.monotonic()
    validation = validation_window(table, metadata, share, target)
    validation.data = splits.sample_shoppers(validation.data, MAX_VALIDATION_SHOPPERS, seed)
    day = time.strftime("%Y-%m-%d", time.gmtime(validation.start))
    shoppers = len(validation.data.users)
    if shoppers < MIN_SHOPPERS:
        log.info("blend: %d shoppers in the validation window from %s (at least %d are needed to choose by); "
                 "the weight stays 0 (the factorized model alone)", shoppers, day, MIN_SHOPPERS)
        return BlendChoice(0.0, day, shoppers, stopped_by="too few shoppers")
    log.info("blend: choosing the transformer's weight on the validation window from %s: %d shoppers", day, shoppers)
    scorer = ValidationScorer(validation, seed)
    ranked = validation_rankings(validation, scorer, factorized, transformer, transformer_items)
    alone = {mode: per_shopper_recall(ranked[0.0][mode], scorer.targets[mode]) for mode in ("all", "new")}
    recall = {}
    for a in BLEND_WEIGHTS:
        mine = {mode: per_shopper_recall(ranked[a][mode], scorer.targets[mode]) for mode in alone}
        modes = {mode: float(np.nanmean(mine[mode])) if np.isfinite(mine[mode]).any() else 0.0 for mode in mine}
        gain, se = objective_gain(mine, alone)
        recall[str(a)] = {**{mode: round(value, 4) for mode, value in modes.items()},
                          "objective": round((modes["all"] + modes["new"]) / 2, 4),
                          "gain": round(gain, 5), "se(gain)": round(se, 5)}
    chosen, stopped_by = chosen_weight(recall)
    log.info("blend: weight %.1f (%s; every weight's validation figures in blend.json)", chosen, stopped_by)
    return BlendChoice(chosen, day, shoppers, recall, round(time.monotonic() - started, 1), stopped_by)

"""Per-shop settings of the factorized model, chosen on a validation window of the training data.

No two shops are alike: a wholesaler's customers re-buy the same items (a strong repeat term
wins), a fashion or media shop's rarely do (it loses), and how fast taste moves differs too. So
``cloud-trainer train`` picks its settings on the shop's own data:

- **Validation window.** The last ``validation_share`` of the training events (by time) is held
  out; models are fitted on the events before it. Only the training period is ever read: a run
  trained with ``--test-from`` never sees the test period here either.
- **What is scored.** For every shopper with a purchase before the window and one in it: the top
  20 over the whole catalogue (trained items, and the new items known from side features) as the
  agent serves it, from the last ``history_length`` events. Mode all: everything bought in the
  window; mode new: what they never bought before, with what the agent knows they bought (its
  kept events and purchase memory, :mod:`cloud_trainer.evaluation.served`) excluded (``exclude=purchased``).
  The objective is the mean of the two Recall@20s.
- **Search.** Coordinate ascent over :data:`SEARCH_SPACE`: from the current best, each setting in
  turn is tried at each of its values with the others held, keeping any that scores higher;
  rounds repeat until one changes nothing or the time budget is spent. Eigendecompositions
  are cached, so a setting that needs none (lambda, repeat, trend, recency, history length, cold
  start scale) costs a re-scoring only. Settings that cannot matter on the data are left out (view and cart weights
  without views or carts, the cold-start scale without new items).
- **Record.** Every trial, its figures and the choice go to ``tuning.json`` in the run directory,
  and into the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TypeVar

import numpy as np

from cloud_trainer.data.events_io import KIND_CODES, EventTable
from cloud_trainer.evaluation import metrics, splits
from cloud_trainer.evaluation.served import kept_rows, remembered_purchases
from cloud_trainer.models.dot_product import ModelWeights
from cloud_trainer.models.factorized import FactorizedSettings, Spectrum, assemble, factors_from_spectrum, item_spectrum
from cloud_trainer.models.served_ranking import K, served_top_k
from cloud_trainer.models.side_features import SideFeatureSettings, catalogue_items, extend_with_cold_items
from shared.catalog import CatalogItem
from shared.events import EventKind

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The values each setting may take, in the order they are searched (most telling first).
SEARCH_SPACE: dict[str, tuple[float, ...]] = {
    "repeat_weight": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
    "trend_weight": (0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
    "recency": (1.0, 0.995, 0.99, 0.98, 0.95, 0.9),
    "l2": (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0),
    "history_length": (25, 50, 100, 200),
    "trend_days": (3.0, 7.0, 14.0, 28.0),
    "rank": (64, 128, 256, 512),
    "view_weight": (0.1, 0.25, 0.5, 1.0),
    "cart_weight": (0.25, 0.5, 0.75, 1.0),
    "cold_start_scale": (1.0, 2.0, 3.0, 5.0, 8.0),
}
#: Settings whose change needs a new eigendecomposition (lambda only re-weights the eigenpairs).
REFIT = ("rank", "view_weight", "cart_weight")
#: Gram spectra kept (N x (r + 16) floats each; each costs a few passes over the events to make),
#: and as many factorizations (a randomized SVD each; they differ by lambda).
CACHED_FITS = 4
#: Fewer validation shoppers than this say too little to choose by: the given settings are kept.
MIN_SHOPPERS = 50
DEFAULT_BUDGET_S = 180.0
#: Beyond this many validation shoppers a seeded sample of them is scored (a big shop's trials
#: would otherwise each take minutes; the standard error of a recall at 2,000 is about 0.008).
MAX_VALIDATION_SHOPPERS = 2_000
DEFAULT_VALIDATION_SHARE = 0.1


@dataclass(frozen=True)
class Candidate:
    """One point of the search: everything :data:`SEARCH_SPACE` names."""

    repeat_weight: float = FactorizedSettings.repeat_weight
    trend_weight: float = FactorizedSettings.trend_weight
    l2: float = FactorizedSettings.l2
    history_length: int = 200
    trend_days: float = FactorizedSettings.trend_days
    recency: float = FactorizedSettings.recency
    rank: int = FactorizedSettings.rank
    view_weight: float = FactorizedSettings.view_weight
    cart_weight: float = FactorizedSettings.cart_weight
    cold_start_scale: float = SideFeatureSettings.vector_scale

    def factorized(self, seed: int) -> FactorizedSettings:
        return FactorizedSettings(rank=self.rank, l2=self.l2, trend_days=self.trend_days,
                                  trend_weight=self.trend_weight, repeat_weight=self.repeat_weight,
                                  recency=self.recency, view_weight=self.view_weight, cart_weight=self.cart_weight,
                                  seed=seed)


@dataclass
class Validation:
    """The validation window: shoppers, their histories before it and what they bought in it."""

    data: splits.ColdStartSplit  # over the catalogue: trained items, then new items
    known: list[CatalogItem]
    new: list[CatalogItem]
    start: float  # epoch seconds where the window starts
    target: str = "purchase"  # what counts as bought (splits.TARGETS)

    @property
    def train(self) -> EventTable:
        return self.data.train


def validation_window(table: EventTable, metadata: dict[str, CatalogItem], share: float,
                      target: str = "purchase") -> Validation:
    """The last ``share`` of ``table``'s events by time as the window (``table`` must already be
    cut to the training period)."""
    if not 0 < share < 1:
        raise ValueError(f"the validation share must be between 0 and 1, not {share}")
    start = float(np.quantile(table.timestamp, 1.0 - share))
    train = splits.train_period(table, start)
    known, new = catalogue_items(metadata, train.item_ids)
    data = splits.catalogue_split(table, start, [*train.item_ids, *(item.id for item in new)], target)
    return Validation(data, known, new, start, target)


@dataclass
class Trial:
    candidate: Candidate
    recall_all: float
    recall_new: float
    seconds: float

    @property
    def objective(self) -> float:
        return (self.recall_all + self.recall_new) / 2

    def to_json(self) -> dict[str, object]:
        return {**asdict(self.candidate), "recall@20 all": round(self.recall_all, 4),
                "recall@20 new": round(self.recall_new, 4), "objective": round(self.objective, 4),
                "seconds": round(self.seconds, 2)}


@dataclass
class TuningResult:
    chosen: Candidate
    start: Candidate
    trials: list[Trial]
    searched: list[str]
    shoppers: int
    validation_from: str
    budget_s: float
    seconds: float
    stopped_by: str  # "converged", "budget" or "too few shoppers"
    scored: int = 0  # validation shoppers scored: all of them, or a seeded sample (MAX_VALIDATION_SHOPPERS)

    def to_json(self) -> dict[str, object]:
        return {"chosen": asdict(self.chosen), "start": asdict(self.start), "searched": self.searched,
                "validation_from": self.validation_from, "validation_shoppers": self.shoppers,
                "validation_shoppers_scored": self.scored,
                "budget_s": self.budget_s, "seconds": round(self.seconds, 1), "stopped_by": self.stopped_by,
                "trials": [trial.to_json() for trial in self.trials]}


class ValidationScorer:
    """Validation figures of a candidate, with the fits it needs cached."""

    def __init__(self, validation: Validation, seed: int) -> None:
        self.v, self.seed = validation, seed
        self._spectra: dict[tuple[float, ...], Spectrum] = {}
        self._factors: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}
        data = validation.data
        bought_before = [set(data.train.item[rows[splits.is_target(data.train.kind[rows], validation.target)]]
                             .tolist()) for rows in data.history]
        self.targets = {"all": data.all_targets, "new": [t - b for t, b in zip(data.all_targets, bought_before,
                                                                                 strict=True)]}
        # what the agent holds at the window's start, and what mode new's exclusion leaves out
        self.kept = [kept_rows(data.train, rows, validation.start) for rows in data.history]
        self.excluded = [np.union1d(data.train.item[kept[splits.is_target(data.train.kind[kept], validation.target)]],
                                    remembered_purchases(data.train, rows, validation.start))
                         for kept, rows in zip(self.kept, data.history, strict=True)]

    def weights(self, c: Candidate) -> ModelWeights:
        key = tuple(getattr(c, name) for name in REFIT)
        settings = c.factorized(self.seed)
        spectrum = _cached(self._spectra, key, lambda: item_spectrum(self.v.train, settings))
        factors = _cached(self._factors, (*key, c.l2), lambda: factors_from_spectrum(
            spectrum, min(c.rank, len(self.v.train.item_ids)), c.l2, self.seed))
        weights = assemble(factors, self.v.train, settings)
        if self.v.new:
            weights = extend_with_cold_items(weights, self.v.known, self.v.new,
                                             SideFeatureSettings(vector_scale=c.cold_start_scale))
        return weights

    def __call__(self, c: Candidate) -> Trial:
        started = time.monotonic()
        weights = self.weights(c)
        ranked = served_top_k(weights, self.v.train, self.kept, c.history_length,
                              {"all": None, "new": self.excluded})
        recall = {mode: metrics.recall_ndcg(ranked[mode], self.targets[mode])[f"recall@{K}"] for mode in ranked}
        return Trial(c, recall["all"], recall["new"], time.monotonic() - started)


def _cached(cache: dict[tuple[float, ...], T], key: tuple[float, ...], make: Callable[[], T]) -> T:
    """``cache[key]``, made if missing; at most :data:`CACHED_FITS` entries, the least recently used go."""
    if key in cache:
        cache[key] = cache.pop(key)  # the most recently used last
    else:
        if len(cache) >= CACHED_FITS:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def searched_settings(validation: Validation, fixed: Sequence[str] = ()) -> list[str]:
    """The settings worth searching on this data."""
    kinds = set(np.unique(validation.train.kind).tolist())
    skip = set(fixed)
    if KIND_CODES[EventKind.VIEW] not in kinds:
        skip.add("view_weight")
    if KIND_CODES[EventKind.CART] not in kinds:
        skip.add("cart_weight")
    if not validation.new:
        skip.add("cold_start_scale")
    return [name for name in SEARCH_SPACE if name not in skip]


def tune(table: EventTable, metadata: dict[str, CatalogItem], start: Candidate, budget_s: float = DEFAULT_BUDGET_S,
         share: float = DEFAULT_VALIDATION_SHARE, seed: int = 7, target: str = "purchase", fixed: Sequence[str] = (),
         progress: Callable[[str], None] = log.info) -> TuningResult:
    """Coordinate ascent from ``start`` within ``budget_s`` seconds (the trial under way when the
    budget runs out finishes); ``fixed`` settings keep their start values."""
    started = time.monotonic()
    validation = validation_window(table, metadata, share, target)
    day = time.strftime("%Y-%m-%d %H:%M", time.gmtime(validation.start))
    searched = searched_settings(validation, fixed)
    users = len(validation.data.users)
    validation.data = splits.sample_shoppers(validation.data, MAX_VALIDATION_SHOPPERS, seed)
    sampled = f" (a seeded sample of {len(validation.data.users)} scored)" if len(validation.data.users) < users else ""
    result = TuningResult(start, start, [], searched, users, day, budget_s, 0.0, "converged",
                          len(validation.data.users))
    if users < MIN_SHOPPERS:
        progress(f"tuning: {users} shoppers bought something in the validation window from {day} (at least "
                 f"{MIN_SHOPPERS} are needed to choose by); keeping the given settings")
        result.stopped_by = "too few shoppers"
        return result
    num_items = len(validation.train.item_ids)
    progress(f"tuning {', '.join(searched)} on the validation window from {day}: {users} shoppers{sampled}, "
             f"{num_items} items (+{len(validation.new)} new); budget {budget_s:g} s")
    score = ValidationScorer(validation, seed)
    tried: dict[Candidate, Trial] = {}

    def run(candidate: Candidate) -> Trial:
        trial = score(candidate)
        tried[candidate] = trial
        result.trials.append(trial)
        progress(f"  trial {len(result.trials):3d}: recall@20 all {trial.recall_all:.4f}, new {trial.recall_new:.4f} "
                 f"({trial.seconds:.1f} s) {_changes(start, candidate)}")
        return trial

    best = run(start)
    changed = True
    while changed and result.stopped_by == "converged":
        changed = False
        for name in searched:
            for value in SEARCH_SPACE[name]:
                candidate = replace(best.candidate, **{name: value})
                if name == "rank" and value > num_items or candidate in tried:
                    continue
                if time.monotonic() - started > budget_s:
                    result.stopped_by = "budget"
                    break
                trial = run(candidate)
                if trial.objective > best.objective:
                    best, changed = trial, True
            if result.stopped_by != "converged":
                break
    result.chosen, result.seconds = best.candidate, time.monotonic() - started
    progress(f"tuning chose {_changes(start, best.candidate) or 'the starting settings'}: recall@20 all "
             f"{best.recall_all:.4f}, new {best.recall_new:.4f} ({len(result.trials)} trials, "
             f"{result.seconds:.0f} s, {result.stopped_by})")
    return result


def _changes(start: Candidate, candidate: Candidate) -> str:
    return ", ".join(f"{f.name} {getattr(candidate, f.name):g}" for f in fields(Candidate)
                     if getattr(candidate, f.name) != getattr(start, f.name))

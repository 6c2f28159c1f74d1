"""A score blend of the transformer and the factorized default, on the served path (bench only).

Each model serves its list as the agent would (:func:`shared.recommendation.recommend`: the
agent's event cap, purchase memory and exclusions), CANDIDATES items with their scores. Per
shopper the two lists' scores are z-scored over the list, an item missing from a list takes that
list's lowest z, and ``a * z(transformer) + (1 - a) * z(factorized)`` ranks the union; the
factorized model's popularity fill completes a short list. ``a`` is chosen per mode on a
validation window cut from the training period alone (its last VALIDATION_SHARE, the models'
own training events: they have seen it, the factorized model fully, so the choice leans towards
it), never on the test period; the test figures at every ``a`` are kept too, marked as such.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cloud_trainer.data.events_io import EventTable
    from cloud_trainer.delivery.bundler import Exported
    from cloud_trainer.evaluation.served import ServedModel, StoredShopper
    from shared.recommendation import Exclude

CANDIDATES = 100
VALIDATION_SHARE = 0.1
WEIGHTS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))


@functools.lru_cache(maxsize=4)
def served_model(run: Path) -> tuple[ServedModel, Exported]:
    """``run``'s export as ``export`` builds it (``auto``), loaded as the agent loads a bundle
    (:func:`cloud_trainer.evaluation.served.load_run`, as ``cloud-trainer evaluate`` loads it)."""
    from cloud_trainer.evaluation.served import load_run

    loaded = load_run(run)
    return loaded.served, loaded.exported


def _scored(model: ServedModel, shopper: StoredShopper, exclude: Exclude) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids the model scored, their z-scores, ids of the popularity fill) of a shopper's served list."""
    from shared.recommendation import recommend

    answer = recommend(model, shopper.history, CANDIDATES, exclude, None, shopper.bought).items
    ids = [r.item.id for r in answer if r.score is not None]
    scores = np.array([r.score for r in answer if r.score is not None], dtype=np.float64)
    z = (scores - scores.mean()) / (scores.std() or 1.0) if len(scores) else scores
    return ids, z, [r.item.id for r in answer if r.score is None]


def _blended(lists: list[tuple[tuple[list[str], np.ndarray, list[str]], ...]], index: dict[str, int],
             a: float) -> np.ndarray:
    """int [shoppers, 20]: the blend's top 20 per shopper at weight ``a`` (-1 where short)."""
    ranked = np.full((len(lists), 20), -1, dtype=np.int64)
    for row, ((f_ids, f_z, fill), (t_ids, t_z, _)) in enumerate(lists):
        score: dict[str, float] = {}
        union = list(dict.fromkeys(f_ids + t_ids))  # ties keep the factorized list's order, then the other's
        for ids, z, weight in ((f_ids, f_z, 1 - a), (t_ids, t_z, a)):
            low = float(z.min()) if len(z) else 0.0
            mine = dict(zip(ids, z.tolist(), strict=True))
            for item in union:
                score[item] = score.get(item, 0.0) + weight * mine.get(item, low)
        chosen = sorted(union, key=lambda item: -score[item])[:20]
        chosen += [item for item in fill if item not in score][: 20 - len(chosen)]
        served = [index[item] for item in chosen if item in index]
        ranked[row, : len(served)] = served
    return ranked


def _figures(fact: ServedModel, trans: ServedModel, table: EventTable, cut: float, target: str,
             max_users: int, catalogue: bool) -> dict[float, dict[str, Any]]:
    """Per weight ``a``, both modes' metrics of the blend on the split at ``cut`` of ``table``
    (with the factorized model's ``catalogue`` as the test split has it, or the period's items), and
    per mode the Recall@20 of each shopper (``per_user``)."""
    from cloud_trainer.evaluation import metrics, splits
    from cloud_trainer.evaluation.served import EXCLUDE_FOR, stored_shoppers
    from shared.recommendation import Exclude

    ids = [i.id for i in fact.catalog.items] if catalogue else None
    data = splits.sample_users(splits.split(table, cut, ids, target), max_users)
    index = {item: n for n, item in enumerate(ids or data.train.item_ids)}
    shoppers = stored_shoppers(data.train, data.history, now=cut)
    lists = {mode: [(_scored(fact, s, exclude), _scored(trans, s, exclude)) for s in shoppers]
             for mode, exclude in (("all", Exclude.NONE), ("new", EXCLUDE_FOR[target]))}
    ranked = {a: {mode: _blended(lists[mode], index, a) for mode in lists} for a in WEIGHTS}
    return {a: {**metrics.evaluate_ranked(ranked[a], data),
                "per_user": {mode: _recalls(ranked[a][mode], data.targets[mode]) for mode in lists}}
            for a in WEIGHTS}


def _recalls(ranked: np.ndarray, targets: list[set[int]]) -> np.ndarray:
    """Recall@20 per shopper with targets, as :func:`cloud_trainer.evaluation.metrics.recall_ndcg` counts it."""
    return np.array([len(set(row[:20].tolist()) & wanted) / min(20, len(wanted))
                     for row, wanted in zip(ranked, targets, strict=True) if wanted])


def _paired(test: dict[float, dict[str, Any]], a: float, mode: str) -> dict[str, float]:
    """The blend at ``a`` less each model alone (``a`` = 0: the factorized list as served; 1: the
    transformer's scores alone), per shopper: mean and standard error of the difference."""
    out = {}
    for alone, name in ((0.0, "factorized"), (1.0, "transformer")):
        d = test[a]["per_user"][mode] - test[alone]["per_user"][mode]
        out[f"minus {name}"] = round(float(d.mean()), 4)
        out[f"se(minus {name})"] = round(float(d.std(ddof=1) / np.sqrt(len(d))), 4) if len(d) > 1 else 0.0
    return out


def blend_rows(factorized: Path, transformer: Path, events: Path, day: str, target: str,
               max_users: int) -> dict[str, object]:
    """The blend's row: ``a`` chosen per mode on the validation window, its test Recall@20 and
    standard error, and the validation and test Recall@20 at every ``a``."""
    from cloud_trainer.data.events_io import read_events
    from cloud_trainer.evaluation import splits

    fact, trans = served_model(factorized)[0], served_model(transformer)[0]
    table = read_events(events)
    cut = splits.cut_time(day)
    train = splits.train_period(table, cut)
    validation_cut = cut - VALIDATION_SHARE * (cut - float(train.timestamp.min()))
    validation = _figures(fact, trans, train, validation_cut, target, max_users, catalogue=False)
    test = _figures(fact, trans, table, cut, target, max_users, catalogue=True)
    row: dict[str, object] = {"targets_learnt": "blend of the two", "validation_from": validation_cut}
    for mode in ("all", "new"):
        a = max(WEIGHTS, key=lambda w: (validation[w][mode]["recall@20"], -w))
        row[mode] = {"a": a, **{k: test[a][mode][k] for k in ("recall@20", "se(recall@20)", "users")},
                     **_paired(test, a, mode)}
        row[f"validation_recall_at_20_{mode}"] = {str(w): validation[w][mode]["recall@20"] for w in WEIGHTS}
        row[f"test_recall_at_20_{mode}_every_a (not used to choose)"] = {str(w): test[w][mode]["recall@20"]
                                                                          for w in WEIGHTS}
    row["validation_users"] = validation[WEIGHTS[0]]["new"]["users"]
    return row

"""The evaluation protocol every quality figure of this project uses, and the baselines (pure numpy).

- Time split: train on events before the cut, test on events from the cut on. Item indices are
  those of :func:`train_period` (the model's too), then a model's new items (items listed
  without training events, known from side features) if it has any.
- Test users: at least one purchase in training and one test-period purchase of a rankable item
  (with ``target="any"``, read "event" for "purchase" throughout: :data:`TARGETS`).
- Full ranking over every item the model can rank, never sampled negatives; the baselines rank
  the training items.
- Mode ``all``: targets are the distinct items a user bought in the test period (repeats count).
  Mode ``new``: targets are test items the user never bought before; the items they bought before
  are excluded from the ranking (the model, as served, excludes what the agent's history of the
  user shows; see :mod:`cloud_trainer.served`).
- Recall@K = hits / min(K, |targets|); NDCG@K with binary gains; coverage@20 = distinct items in
  all top-20 lists / items.
- Cold start (:func:`cold_start_split`): the shoppers who bought items with no training events,
  ranked over a run's whole catalogue, which may know such items from their side features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

from cloud_trainer.events_io import KIND_CODES, EventTable
from shared.events import EventKind

PURCHASE = KIND_CODES[EventKind.PURCHASE]
#: What a hit is: a purchase (the default), or for shops with few purchases in their logs any
#: event (view, cart, purchase). "Bought before" in mode new and the test users' condition follow.
TARGETS: dict[str, tuple[int, ...]] = {"purchase": (PURCHASE,), "any": tuple(KIND_CODES.values())}


def is_target(kinds: np.ndarray, target: str) -> np.ndarray:
    """bool per event kind code: does it count under ``target`` (a key of :data:`TARGETS`)?"""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    return np.isin(kinds, TARGETS[target])
RECALL_AT = (10, 20, 50)
NDCG_AT = (10, 20)
#: Cut-offs of the recall@K curves in the report (the table shows RECALL_AT).
CURVE_AT = (1, 2, 5, 10, 20, 50, 100)
MODES = ("all", "new")


def cut_time(day: str) -> float:
    """Epoch seconds of midnight UTC starting ``day`` (YYYY-MM-DD)."""
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(f"{day!r} is not a date like 2011-11-09") from None


def train_period(table: EventTable, cut: float) -> EventTable:
    """The events before ``cut``, with user and item vocabularies of that period only."""
    keep = table.timestamp < cut
    if not keep.any():
        raise ValueError("no events before the cut")
    users, user = np.unique(table.user[keep], return_inverse=True)
    items, item = np.unique(table.item[keep], return_inverse=True)
    report = table.report
    return EventTable(
        user_ids=[table.user_ids[u] for u in users], item_ids=[table.item_ids[i] for i in items],
        user=user.astype(np.int32), item=item.astype(np.int32), kind=table.kind[keep],
        timestamp=table.timestamp[keep], report=report,
    )


@dataclass
class Split:
    train: EventTable  # the training period, own vocabularies (see train_period)
    users: list[str]  # test users
    history: list[np.ndarray]  # per test user: row indices into train, in time order
    targets: dict[str, list[set[int]]]  # mode -> per test user: target item indices
    bought_before: list[set[int]]  # per test user: items bought in training (excluded in mode new)
    target: str = "purchase"  # what counts as "bought" (TARGETS)

    @property
    def num_items(self) -> int:
        return len(self.train.item_ids)


def _rows_by_user(train: EventTable) -> tuple[np.ndarray, np.ndarray]:
    """Training rows ordered by (user, time), and where each user's run starts and ends in that order."""
    order = np.lexsort((train.timestamp, train.user))
    return order, np.searchsorted(train.user[order], np.arange(len(train.user_ids) + 1))


def _test_purchases(table: EventTable, train: EventTable, cut: float, target: str) -> Iterator[tuple[int, str]]:
    """(training-period user index, item id) of each test-period purchase (``target`` event) by a
    user seen in training."""
    user_index = {user_id: n for n, user_id in enumerate(train.user_ids)}
    test = (table.timestamp >= cut) & is_target(table.kind, target)
    for u, i in zip(table.user[test].tolist(), table.item[test].tolist(), strict=True):
        user = user_index.get(table.user_ids[u])
        if user is not None:
            yield user, table.item_ids[i]


def split(table: EventTable, cut: float, catalogue: list[str] | None = None, target: str = "purchase") -> Split:
    """The protocol's test users and targets. With a model's ``catalogue`` (item ids by model
    index, the training period's items first, as trained) the items it lists beyond the training
    items (new items, see :mod:`cloud_trainer.side_features`) count as targets too."""
    train = train_period(table, cut)
    if catalogue is not None and catalogue[: len(train.item_ids)] != train.item_ids:
        raise ValueError("the catalogue does not start with the training period's items")
    item_index = {item_id: n for n, item_id in enumerate(catalogue or train.item_ids)}
    order, bounds = _rows_by_user(train)
    test_purchases: dict[int, set[int]] = {}
    for user, item_id in _test_purchases(table, train, cut, target):
        known_item = item_index.get(item_id)
        if known_item is not None:
            test_purchases.setdefault(user, set()).add(known_item)
    result = Split(train, [], [], {mode: [] for mode in MODES}, [], target)
    for u in sorted(test_purchases):
        rows = order[bounds[u] : bounds[u + 1]]
        bought = set(train.item[rows[is_target(train.kind[rows], target)]].tolist())
        if not bought:
            continue
        result.users.append(train.user_ids[u])
        result.history.append(rows)
        result.bought_before.append(bought)
        result.targets["all"].append(test_purchases[u])
        result.targets["new"].append(test_purchases[u] - bought)
    return result


@dataclass
class ColdStartSplit:
    """The shoppers who bought a *new* item in the test period: one with no training events.

    Such items can be ranked only by a model that knows them from side features (catalogue
    indices ``num_known`` and up, :mod:`cloud_trainer.side_features`). Users: at least one
    training purchase and one test purchase of a new item. ``new_targets`` are the new items they
    bought, ``all_targets`` everything they bought in the test period; a bought item the catalogue
    does not list gets a negative index, so it counts as a target that cannot be hit.
    """

    train: EventTable  # the training period, own vocabularies (see train_period)
    users: list[str]
    history: list[np.ndarray]  # per user: row indices into train, in time order
    new_targets: list[set[int]]
    all_targets: list[set[int]]
    num_known: int  # catalogue indices below this are training items
    num_items: int  # the whole catalogue, known and new


def catalogue_split(table: EventTable, cut: float, catalogue: list[str], target: str = "purchase") -> ColdStartSplit:
    """Every shopper with a training purchase and a test-period purchase, whatever they bought,
    ranked over ``catalogue`` (item ids by model index, the training period's items first, as
    trained): :func:`cold_start_split` without its condition on new items."""
    train = train_period(table, cut)
    num_known = len(train.item_ids)
    if catalogue[:num_known] != train.item_ids or set(catalogue[num_known:]) & set(train.item_ids):
        raise ValueError("the catalogue does not start with the training period's items")
    index = {item_id: n for n, item_id in enumerate(catalogue)}
    unlisted: dict[str, int] = {}
    order, bounds = _rows_by_user(train)
    bought: dict[int, set[int]] = {}
    for user, item_id in _test_purchases(table, train, cut, target):
        item = index.get(item_id)
        if item is None:
            item = unlisted.setdefault(item_id, -1 - len(unlisted))
        bought.setdefault(user, set()).add(item)
    result = ColdStartSplit(train, [], [], [], [], num_known, len(catalogue))
    for u in sorted(bought):
        rows = order[bounds[u] : bounds[u + 1]]
        if is_target(train.kind[rows], target).any():
            result.users.append(train.user_ids[u])
            result.history.append(rows)
            result.new_targets.append({i for i in bought[u] if i < 0 or i >= num_known})
            result.all_targets.append(bought[u])
    return result


def cold_start_split(table: EventTable, cut: float, catalogue: list[str]) -> ColdStartSplit:
    """``catalogue``: item ids by model index, the training period's items first (as trained)."""
    data = catalogue_split(table, cut, catalogue)
    keep = [n for n, new in enumerate(data.new_targets) if new]
    return replace(data, users=[data.users[n] for n in keep], history=[data.history[n] for n in keep],
                   new_targets=[data.new_targets[n] for n in keep], all_targets=[data.all_targets[n] for n in keep])


def cold_start_metrics(scores: np.ndarray, data: ColdStartSplit, k: int = 20) -> dict[str, float]:
    """For a [users, whole catalogue] score matrix: Recall@k of the new items bought and of every
    item bought, and the share of top-k slots that went to new items."""
    ranked = top_k(scores, k)
    return {
        f"recall@{k} new items": recall_ndcg(ranked, data.new_targets)[f"recall@{k}"],
        f"recall@{k} all items": recall_ndcg(ranked, data.all_targets)[f"recall@{k}"],
        f"new-item share of top {k}": round(float((ranked >= data.num_known).mean()), 4),
        "users": len(data.users),
    }


def among_new_items(scores: np.ndarray, data: ColdStartSplit, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall@K when only the new items are ranked (a "new for you" shelf): which of them does
    this shopper want?"""
    new = scores[:, data.num_known :]
    ranked = top_k(new, min(max(ks), new.shape[1])) + data.num_known
    metrics = recall_ndcg(ranked, data.new_targets)
    return {f"recall@{k}": metrics[f"recall@{k}"] for k in ks}


def random_among_new_items(data: ColdStartSplit, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """The expected :func:`among_new_items` recall of a random order: for a shopper with ``t``
    rankable targets among ``m`` new items, expected hits in the top k are ``t * k / m``."""
    m = data.num_items - data.num_known
    out = {}
    for k in ks:
        values = [min(k, m) * sum(1 for i in wanted if i >= 0) / m / min(k, len(wanted)) for wanted in data.new_targets]
        out[f"recall@{k}"] = round(float(np.mean(values)), 4) if values and m else 0.0
    return out


def top_k(scores: np.ndarray, k: int, exclude: list[set[int]] | None = None) -> np.ndarray:
    """[users, k] item indices by descending score (ties: lower index first); excluded items never."""
    scores = np.array(scores, dtype=np.float64)
    if exclude is not None:
        for row, items in enumerate(exclude):
            scores[row, list(items)] = -np.inf
    part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall_ndcg(ranked: np.ndarray, targets: list[set[int]]) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the users with targets (users without any are skipped), and
    the standard error of the mean Recall@20 (``se(recall@20)``). ``ranked`` may hold -1 for
    empty places."""
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    recall_at = sorted(set(RECALL_AT) | {k for k in CURVE_AT if k <= ranked.shape[1]})
    sums = {f"recall@{k}": 0.0 for k in recall_at} | {f"ndcg@{k}": 0.0 for k in NDCG_AT}
    per_user_recall_at_20: list[float] = []
    for row, wanted in zip(ranked, targets, strict=True):
        if not wanted:
            continue
        hits = np.fromiter((int(i) in wanted for i in row), dtype=bool, count=len(row))
        for k in recall_at:
            sums[f"recall@{k}"] += hits[:k].sum() / min(k, len(wanted))
        per_user_recall_at_20.append(hits[:20].sum() / min(20, len(wanted)))
        for k in NDCG_AT:
            ideal = discounts[: min(k, len(wanted))].sum()
            sums[f"ndcg@{k}"] += (hits[:k] * discounts[:k]).sum() / ideal
    users = len(per_user_recall_at_20)
    se = float(np.std(per_user_recall_at_20, ddof=1) / np.sqrt(users)) if users > 1 else 0.0
    return ({name: round(total / users, 4) if users else 0.0 for name, total in sums.items()}
            | {"se(recall@20)": round(se, 4), "users": users})


def evaluate(scores: np.ndarray, data: Split) -> dict[str, dict[str, float]]:
    """Both modes' metrics for a [test users, items] score matrix (higher is better)."""
    k = min(max(CURVE_AT), data.num_items)
    return evaluate_ranked({mode: top_k(scores, k, data.bought_before if mode == "new" else None)
                            for mode in MODES}, data)


def evaluate_ranked(ranked: dict[str, np.ndarray], data: Split) -> dict[str, dict[str, float]]:
    """Both modes' metrics for ranked lists per mode ([test users, K] item indices, -1 for none):
    mode ``new``'s lists must leave out what each user bought before."""
    results = {}
    for mode in MODES:
        metrics = recall_ndcg(ranked[mode], data.targets[mode])
        listed = ranked[mode][:, :20]
        metrics["coverage@20"] = round(len(np.unique(listed[listed >= 0])) / data.num_items, 4)
        results[mode] = metrics
    return results


# -- baselines ---------------------------------------------------------------------------------

def _purchase_matrix(data: Split) -> np.ndarray:
    """[train users, items] 1.0 where the user bought the item in training."""
    train = data.train
    bought = is_target(train.kind, data.target)
    x = np.zeros((len(train.user_ids), data.num_items), dtype=np.float64)
    x[train.user[bought], train.item[bought]] = 1.0
    return x


def _test_rows(data: Split) -> np.ndarray:
    index = {user_id: n for n, user_id in enumerate(data.train.user_ids)}
    return np.array([index[u] for u in data.users])


def popularity_scores(data: Split) -> np.ndarray:
    """Purchases per item in training (distinct buyers), the same for every user."""
    counts = _purchase_matrix(data).sum(axis=0)
    return np.tile(counts, (len(data.users), 1))


def repeat_purchase_scores(data: Split) -> np.ndarray:
    """The user's own past purchases first (most often bought first), then popularity."""
    train = data.train
    popularity = popularity_scores(data)[0]
    scores = np.tile(popularity / (popularity.max() + 1.0), (len(data.users), 1))
    for row, rows in enumerate(data.history):
        bought = rows[is_target(train.kind[rows], data.target)]
        np.add.at(scores[row], train.item[bought], 1.0)
    return scores


def item_knn_scores(data: Split) -> np.ndarray:
    """Item-to-item cosine similarity on training purchases; a user's score sums their items' rows."""
    x = _purchase_matrix(data)
    norms = np.sqrt(x.sum(axis=0))
    norms[norms == 0] = 1.0
    similarity = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(similarity, 0.0)
    return x[_test_rows(data)] @ similarity


def ease(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE's closed form (Steck 2019): B = -P / diag(P) with P = (X'X + lam I)^-1, zero diagonal.

    The baseline below and the factorized model (:mod:`cloud_trainer.factorized`) both use it.
    """
    gram = x.T.astype(np.float64) @ x.astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights


def ease_scores(data: Split, lam: float = 200.0) -> np.ndarray:
    """EASE (Steck 2019): a closed-form item-item model with a zero diagonal."""
    x = _purchase_matrix(data)
    return x[_test_rows(data)] @ ease(x, lam)


BASELINES: dict[str, Callable[[Split], np.ndarray]] = {
    "popularity": popularity_scores,
    "repeat-purchase": repeat_purchase_scores,
    "item-kNN (cosine)": item_knn_scores,
    "EASE (lambda 200)": ease_scores,
}


@dataclass
class Report:
    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # name -> mode -> metrics
    cold_start: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> cold_start_metrics
    among_new: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> among_new_items

    def table(self) -> str:
        columns = ([f"recall@{k}" for k in RECALL_AT] + ["se(recall@20)"] + [f"ndcg@{k}" for k in NDCG_AT]
                   + ["coverage@20", "users"])
        lines = []
        for mode in MODES:
            lines.append(f"mode {mode}")
            lines.append("| " + " | ".join(["model", *columns]) + " |")
            lines.append("|" + " --- |" * (len(columns) + 1))
            for name, modes in self.rows.items():
                cells = [str(modes[mode][c]) for c in columns]
                lines.append("| " + " | ".join([name, *cells]) + " |")
            lines.append("")
        return "\n".join(lines)

    def text(self) -> str:
        """Every table: both modes, then the cold-start ones."""
        return "\n".join([self.table(), *self.cold_start_tables()]).rstrip() + "\n"

    def cold_start_tables(self) -> list[str]:
        lines = []
        for title, rows in (("new items: shoppers who bought an item without training events, whole catalogue",
                             self.cold_start),
                            ("new items ranked on their own", self.among_new)):
            if not rows:
                continue
            columns = list(next(iter(rows.values())))
            lines += [title, "| " + " | ".join(["model", *columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
            lines += ["| " + " | ".join([name, *(str(m[c]) for c in columns)]) + " |" for name, m in rows.items()]
            lines.append("")
        return lines

"""What a shopper is served, computed in process: the exported model in LiteRT behind the very
function the agent's REST route calls (:func:`shared.recommendation.recommend`), with what an
agent holds of a shopper (its event cap, purchase memory and retention age), the same
exclusions, category filter and popularity fill.

``cloud-trainer evaluate`` scores the int8 model through this (:func:`load_run`: a run's export
as ``export`` builds it, any model, the transformer too; ``bench/transformer_quality.py`` serves
through the same), so its table is the list an app gets from ``GET /v1/recommendations`` (a test
compares the two over real HTTP).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cloud_trainer.data.events_io import KIND_CODES, KINDS_BY_CODE, EventTable
from cloud_trainer.delivery.litert import LiteRTModel
from shared.catalog import Catalog, parse_catalog
from shared.events import REMEMBERED_PURCHASES_PER_USER, RETENTION_DAYS, STORED_EVENTS_PER_USER, EventKind
from shared.recommendation import Exclude, Scores, recommend

if TYPE_CHECKING:
    from cloud_trainer.delivery.run_export import Exported
    from cloud_trainer.models.dot_product import ModelWeights

log = logging.getLogger(__name__)
#: The agent's exclusion that leaves out what mode new's targets exclude, per target.
EXCLUDE_FOR = {"purchase": Exclude.PURCHASED, "any": Exclude.SEEN}
#: Shoppers between progress lines of :func:`served_rankings`.
PROGRESS_EVERY = 10_000


class HistoryEvent(NamedTuple):
    item_id: str
    kind: EventKind
    timestamp: float | None = None  # a sequence model's time gaps (shared.sequence)


class ServedModel:
    """A :class:`shared.recommendation.Scorer` over an exported model, as the agent loads a bundle."""

    def __init__(self, model_bytes: bytes, catalog: Catalog, history_length: int, version: int = 0) -> None:
        self._model = LiteRTModel(model_bytes)
        self.catalog = catalog
        self.item_index = catalog.index_of()
        self.history_length = history_length
        self.version = version
        self.takes_sequence = self._model.takes_sequence  # a transformer's export (contract version 3)

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None,
              sequence: tuple[Sequence[int], Sequence[int]] | None = None) -> Scores:
        more = {} if sequence is None else {"history_kinds": np.asarray(sequence[0], dtype=np.int32)[None],
                                            "history_gaps": np.asarray(sequence[1], dtype=np.int32)[None]}
        out = self._model(np.asarray(items, dtype=np.int32)[None], np.asarray(weights, dtype=np.float32)[None],
                          allowed, **more)
        contributions = out.get("contributions")
        return Scores(out["item_indices"][0], out["scores"][0], None if contributions is None else contributions[0])


@dataclass
class ServedRun:
    """A run's model: the float Keras model, and its export as agents run it."""

    keras: Any  # the float Keras model (a blend's: its float reference, cloud_trainer.models.blend)
    weights: ModelWeights | None  # a pooled model's weights; None for a sequence model (transformer, blend)
    exported: Exported  # the variant ``export`` bundles, with its checks
    served: ServedModel
    top_k: int  # of the exported graph


def load_run(run: Path, variant: str = "auto") -> ServedRun:
    """``run``'s export as ``export`` builds it (``variant``; ``auto``: int8, or the next variant where
    int8 fails its checks), loaded as the agent loads a bundle; any model of ``train``."""
    import keras

    from cloud_trainer.delivery.bundler import DEFAULT_TOP_K
    from cloud_trainer.delivery.run_export import SEQUENCE_MODELS, export_checked, sequence_model, served_run
    from cloud_trainer.models.dot_product import extract_weights

    run = served_run(run)  # a blend of weight 0 or 1: the model it leaves
    config = json.loads((run / "config.json").read_text())
    weights = None
    if config.get("model") in SEQUENCE_MODELS:
        model, num_items = sequence_model(run, config)
    else:
        model = keras.models.load_model(run / "model.keras")
        weights = extract_weights(model)
        num_items = weights.num_items
    catalog = parse_catalog((run / "catalog.json").read_bytes(), num_items)
    length = int(config["history_length"])
    histories = np.load(run / "histories.npz")
    top_k = min(DEFAULT_TOP_K, num_items)
    exported = export_checked(model, weights, length, top_k, variant, (histories["items"], histories["weights"]),
                              histories)
    return ServedRun(model, weights, exported, ServedModel(exported.model_bytes, catalog, length), top_k)


@dataclass
class StoredShopper:
    """What an agent holds of a shopper: the kept events (oldest first) and the purchase memory."""

    history: list[HistoryEvent]
    bought: set[str]


def kept_rows(train: EventTable, rows: np.ndarray, now: float, stored: int = STORED_EVENTS_PER_USER,
              retention_days: float = RETENTION_DAYS) -> np.ndarray:
    """Of a shopper's events (``rows``, in time order), the ones an agent still holds at ``now``:
    the last ``stored`` within the retention age."""
    return rows[train.timestamp[rows] >= now - retention_days * 86400.0][-stored:]


def remembered_purchases(train: EventTable, rows: np.ndarray, now: float,
                         remembered: int = REMEMBERED_PURCHASES_PER_USER,
                         retention_days: float = RETENTION_DAYS) -> np.ndarray:
    """The agent's purchase memory of a shopper at ``now``: the ``remembered`` items they bought
    last within the retention age (item indices)."""
    purchase = KIND_CODES[EventKind.PURCHASE]
    rows = rows[(train.timestamp[rows] >= now - retention_days * 86400.0) & (train.kind[rows] == purchase)]
    last_bought = {int(train.item[r]): n for n, r in enumerate(rows.tolist())}
    latest_last = sorted(last_bought, key=last_bought.__getitem__)
    return np.asarray(latest_last[-remembered:] if remembered else [], dtype=np.int64)


def stored_shoppers(train: EventTable, rows_per_user: Iterable[np.ndarray], now: float) -> list[StoredShopper]:
    """Each shopper as an agent with default settings holds them at time ``now`` (``rows``: their
    events in time order): :func:`kept_rows` as the history :func:`recommend` gets, and
    :func:`remembered_purchases`."""
    return [StoredShopper([HistoryEvent(train.item_ids[train.item[r]], KINDS_BY_CODE[int(train.kind[r])],
                                        float(train.timestamp[r]))
                           for r in kept_rows(train, rows, now)],
                          {train.item_ids[i] for i in remembered_purchases(train, rows, now)})
            for rows in rows_per_user]


def served_rankings(model: ServedModel, shoppers: Sequence[StoredShopper], k: int,
                    exclude: Exclude = Exclude.NONE, category: str | None = None) -> np.ndarray:
    """int [shoppers, k]: the catalogue indices each shopper is served, best first (-1 where the
    list is shorter than ``k``)."""
    ranked = np.full((len(shoppers), k), -1, dtype=np.int64)
    for row, shopper in enumerate(shoppers):
        if row and row % PROGRESS_EVERY == 0:
            log.info("served %d of %d shoppers", row, len(shoppers))
        answer = recommend(model, shopper.history, k, exclude, category, shopper.bought)
        served = [model.item_index[r.item.id] for r in answer.items]
        ranked[row, : len(served)] = served
    return ranked


def served_modes(model: ServedModel, shoppers: Sequence[StoredShopper], k: int, target: str) -> dict[str, np.ndarray]:
    """:func:`served_rankings` of both modes: all, and new (what ``target`` counts as bought excluded)."""
    return {"all": served_rankings(model, shoppers, k), "new": served_rankings(model, shoppers, k, EXCLUDE_FOR[target])}

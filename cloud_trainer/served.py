"""What a shopper is served, computed in process: the exported model in LiteRT behind the very
function the agent's REST route calls (:func:`shared.recommendation.recommend`), with the same
history cap, exclusions, category filter and popularity fill.

``cloud-trainer evaluate`` scores the int8 model through this, so its table is the list an app
gets from ``GET /v1/recommendations`` (a test compares the two over real HTTP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from cloud_trainer.events_io import KINDS_BY_CODE, EventTable
from cloud_trainer.export import LiteRTModel
from shared.catalog import Catalog
from shared.events import STORED_EVENTS_PER_USER, EventKind
from shared.recommendation import Exclude, Scores, recommend


class HistoryEvent(NamedTuple):
    item_id: str
    kind: EventKind


class ServedModel:
    """A :class:`shared.recommendation.Scorer` over an exported model, as the agent loads a bundle."""

    def __init__(self, model_bytes: bytes, catalog: Catalog, history_length: int, version: int = 0) -> None:
        self._model = LiteRTModel(model_bytes)
        self.catalog = catalog
        self.item_index = catalog.index_of()
        self.history_length = history_length
        self.version = version

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None) -> Scores:
        out = self._model(np.asarray(items, dtype=np.int32)[None], np.asarray(weights, dtype=np.float32)[None],
                          allowed)
        contributions = out.get("contributions")
        return Scores(out["item_indices"][0], out["scores"][0], None if contributions is None else contributions[0])


def stored_histories(train: EventTable, rows_per_user: Iterable[np.ndarray], history_length: int,
                     stored: int = STORED_EVENTS_PER_USER) -> list[list[HistoryEvent]]:
    """Each shopper's history as the agent hands it to :func:`recommend`, oldest first: the last
    ``stored`` events (what an agent keeps by default), or the model's history length if longer."""
    cap = max(history_length, stored)
    return [[HistoryEvent(train.item_ids[train.item[r]], KINDS_BY_CODE[int(train.kind[r])]) for r in rows[-cap:]]
            for rows in rows_per_user]


def served_rankings(model: ServedModel, histories: Sequence[Sequence[HistoryEvent]], k: int,
                    exclude: Exclude = Exclude.NONE, category: str | None = None) -> np.ndarray:
    """int [shoppers, k]: the catalogue indices each shopper is served, best first (-1 where the
    list is shorter than ``k``)."""
    ranked = np.full((len(histories), k), -1, dtype=np.int64)
    for row, history in enumerate(histories):
        served = [model.item_index[r.item.id] for r in recommend(model, history, k, exclude, category).items]
        ranked[row, : len(served)] = served
    return ranked

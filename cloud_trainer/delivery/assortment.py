"""A store's assortment: the subset of a run's items one store's bundle ranks.

A chain trains one model; each store sells a subset. ``cloud-trainer export --assortment FILE``
writes a bundle that ranks only those items (their vectors, biases and catalogue entries), so
the graph's item count, its ``item_allowed`` mask and its top K are the store's.

Shoppers' histories may hold items the store does not sell (items it stopped selling, bought in
another store of the chain). With ``history="chain"`` (the default) the bundle keeps every run
item's history embedding, so each of them still says what the shopper likes; only the sold items
are ranked. The bundle's index space puts the sold items first (in the run's order), then the
others (``history_only`` in the catalogue, :mod:`shared.catalog`): a sold item has one index as
history input and as output, so the agent maps ids to indices as before, and agents that predate
this read the sold items only. ``history="store"`` drops the others too: the smallest bundle, for
catalogues whose history table would dominate it (at 1M items and rank 256, 256 MB in int8).

This module owns the file format, the selection and what it does to the weights, the catalogue and
the histories the gates compare on; :mod:`cloud_trainer.delivery.bundler` applies it.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud_trainer.errors import AssortmentError
from shared.catalog import Catalog

if TYPE_CHECKING:
    from cloud_trainer.models.dot_product import ModelWeights

log = logging.getLogger(__name__)

#: What a store's bundle reads in histories: every item of the run, or the store's items only
#: (the same as cloud_trainer.commands.ASSORTMENT_HISTORY, which the parser reads without numpy).
HISTORY_SCOPES = ("chain", "store")
#: Popular items the catalogue of a store's bundle lists at most (as the run's does).
POPULAR_ITEMS = 500
#: Unknown ids named in a warning or an error (the count is always given).
SHOWN_IDS = 5


def read_assortment(path: Path) -> list[str]:
    """The item ids of an assortment file, in file order without repeats.

    Either one id per line (blank lines and lines starting with ``#`` are skipped), or a CSV file
    whose header has an ``item_id`` column (other columns are ignored).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AssortmentError(f"assortment {path} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise AssortmentError(f"assortment {path} lists no item ids")
    header = next(csv.reader([lines[0]]))
    if "item_id" in (cell.strip() for cell in header):
        rows = csv.DictReader(lines, fieldnames=[cell.strip() for cell in header])
        next(rows)  # the header itself
        ids = [(row.get("item_id") or "").strip() for row in rows]
    elif path.suffix.lower() == ".csv" and len(header) > 1:
        raise AssortmentError(f"assortment {path} is a CSV file without an item_id column (its header: "
                              f"{', '.join(header[:8])}); name the column item_id, or list one id per line")
    else:
        ids = lines
    unique = list(dict.fromkeys(i for i in ids if i))
    if not unique:
        raise AssortmentError(f"assortment {path} lists no item ids")
    return unique


def _shown(ids: Sequence[str]) -> str:
    return ", ".join(repr(i[:40]) for i in ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")


@dataclass(frozen=True)
class Assortment:
    """Which run items a store's bundle ranks (``sold``) and reads in histories only, in bundle order."""

    sold: np.ndarray  # int64 [M]: run indices of the items ranked
    history_only: np.ndarray  # int64 [H]: run indices of the items read in histories only
    num_run_items: int
    requested: int  # ids in the file
    unknown: tuple[str, ...]  # ids of the file the run does not know
    history: str = "chain"

    @property
    def history_index(self) -> np.ndarray:
        """int64 [run items]: each run item's index in the bundle, -1 where the bundle does not read it."""
        index = np.full(self.num_run_items, -1, dtype=np.int64)
        index[np.concatenate([self.sold, self.history_only])] = np.arange(len(self.sold) + len(self.history_only))
        return index

    def weights(self, weights: ModelWeights) -> ModelWeights:
        """The model over the bundle's items: history rows sold then history-only, columns sold."""
        rows = np.concatenate([self.sold, self.history_only])
        return replace(weights, history_embedding=weights.history_embedding[rows],
                       item_vectors=weights.item_vectors[:, self.sold], item_bias=weights.item_bias[self.sold])

    def catalog(self, catalog: Catalog, item_bias: np.ndarray) -> Catalog:
        """The store's catalogue. Popular items: the run's that the store sells, in the run's order,
        then the store's other items by the model's item bias (its popularity term), so a
        fallback list fills up even where the chain's best sellers are not sold."""
        index = self.history_index
        popular = [int(index[i]) for i in catalog.popular if 0 <= index[i] < len(self.sold)]
        limit = min(len(self.sold), max(POPULAR_ITEMS, len(popular)))
        if len(popular) < limit:
            listed = set(popular)
            by_bias = np.argsort(-item_bias[self.sold], kind="stable").tolist()
            popular += [j for j in by_bias if j not in listed][: limit - len(popular)]
        new = [int(index[i]) for i in catalog.new if 0 <= index[i] < len(self.sold)]
        return Catalog(items=tuple(catalog.items[i] for i in self.sold.tolist()), popular=tuple(popular),
                       history_only=tuple(catalog.items[i] for i in self.history_only.tolist()), new=tuple(new))

    def histories(self, items: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
        """Real histories (run indices [n, L], weights [n, L]) as the store's agent would read them.

        Returns (Keras items, Keras weights, bundle items, bundle weights, rows kept): items the
        bundle does not read are dropped, the rest move up and their weights are scaled to sum to
        1 again (as the agent ignores unknown items); rows left empty are dropped (the agent serves
        popular items there). The Keras model reads the same histories in run indices.
        """
        index = self.history_index
        marked = (items != 0) | (weights > 0)  # as dot_product.history_present reads padding
        positions = np.arange(1, items.shape[1] + 1)[None, :]
        present = positions <= np.max(np.where(marked, positions, 0), axis=1, keepdims=True)
        keep = present & (index[items] >= 0)
        order = np.argsort(~keep, axis=1, kind="stable")  # kept positions first, in their order
        keep = np.take_along_axis(keep, order, axis=1)
        run_items = np.where(keep, np.take_along_axis(items, order, axis=1), 0).astype(items.dtype)
        run_weights = np.where(keep, np.take_along_axis(weights, order, axis=1), 0).astype(weights.dtype)
        dropped = (keep.sum(axis=1) < present.sum(axis=1))[:, None]
        total = run_weights.sum(axis=1, keepdims=True)
        run_weights = np.where(dropped & (total > 0), run_weights / np.where(total > 0, total, 1), run_weights)
        rows = keep.any(axis=1)
        bundle_items = np.where(keep, index[run_items], 0).astype(items.dtype)
        return run_items[rows], run_weights[rows], bundle_items[rows], run_weights[rows], rows

    def targets(self, targets: np.ndarray) -> np.ndarray:
        """Next baskets (run indices, -1 padded) as bundle output indices; items not sold become -1."""
        index = self.history_index[np.maximum(targets, 0)]
        return np.where((targets >= 0) & (index >= 0) & (index < len(self.sold)), index, -1).astype(targets.dtype)

    def to_json(self) -> dict[str, object]:
        return {"items": len(self.sold), "history_only_items": len(self.history_only), "requested": self.requested,
                "unknown": len(self.unknown), "history": self.history}


def select(run_ids: Sequence[str], wanted: Sequence[str], history: str = "chain") -> Assortment:
    """The assortment ``wanted`` (item ids) over a run whose items are ``run_ids`` (model order).

    Ids the run does not know are left out with a warning that counts them; when none is known
    that is an error (most likely the wrong file, or ids written differently from the events').
    Items of the run that never had events but came with side features (cold items) are run items
    like any other.
    """
    if history not in HISTORY_SCOPES:
        raise AssortmentError(f"assortment history must be one of {', '.join(HISTORY_SCOPES)}, not {history!r}")
    position = {item_id: n for n, item_id in enumerate(run_ids)}
    found = sorted({position[i] for i in wanted if i in position})
    unknown = tuple(i for i in wanted if i not in position)
    if not found:
        raise AssortmentError(f"none of the assortment's {len(wanted)} item ids is an item of the run (for example "
                              f"{_shown(unknown)}); the run knows ids like {_shown(list(run_ids))}")
    if unknown:
        log.warning("%d of the assortment's %d item ids are not items of the run and are left out (%s)",
                    len(unknown), len(wanted), _shown(unknown))
    sold = np.asarray(found, dtype=np.int64)
    others = np.setdiff1d(np.arange(len(run_ids)), sold) if history == "chain" else np.zeros(0, dtype=np.int64)
    return Assortment(sold, others.astype(np.int64), len(run_ids), len(wanted), unknown, history)

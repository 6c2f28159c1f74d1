"""The inputs of a sequence model (contract version 3, :data:`shared.SEQUENCE_CONTRACT_VERSION`):
each history position's item, event kind and time-gap bucket, built alike by the trainer and the
agent from the events the agent already stores (item, kind, timestamp).

Positions are ordered as :func:`shared.events.history_inputs` orders them (most recent first,
zero-padded), so ``history_items`` is the very same list and explanations name positions alike.

* ``history_kinds``: 0 for padding, else :data:`KIND_CODES` (view 1, cart 2, purchase 3).
* ``history_gaps``: the time since the shopper's previous (older) event, in log-spaced buckets
  (:func:`gap_buckets`): 0 for padding, for the first event a shopper has and for an event whose
  time is unknown (a product page's or a basket's query); 1 under a minute (the same basket);
  then one bucket per doubling of minutes, the last one open-ended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.events import EventKind

#: Graph input names of a sequence model (besides ``item_allowed``, shared.recommendation).
SEQUENCE_INPUTS = ("history_items", "history_kinds", "history_gaps")
#: 0 is padding.
KIND_CODES: dict[EventKind, int] = {kind: code for code, kind in enumerate(EventKind, start=1)}
NUM_KIND_CODES = len(KIND_CODES) + 1
#: Buckets 0 (none), 1 (under a minute), 2.. (1-2 min, 2-4 min, ...), the last open-ended (~3 months on).
NUM_GAP_BUCKETS = 20


def gap_buckets(seconds: np.ndarray) -> np.ndarray:
    """int32 buckets (1 .. NUM_GAP_BUCKETS - 1) of gaps in seconds (>= 0; NaN: unknown -> 0)."""
    gaps = np.asarray(seconds, dtype=np.float64)
    minutes = np.maximum(np.nan_to_num(gaps, nan=0.0) / 60.0, 1.0)
    buckets = np.where(gaps < 60.0, 1, 2 + np.minimum(np.floor(np.log2(minutes)), NUM_GAP_BUCKETS - 3))
    return np.where(np.isnan(gaps), 0, buckets).astype(np.int32)


def sequence_inputs(history: Sequence[tuple[int, EventKind, float | None]],
                    length: int) -> tuple[list[int], list[int], list[int]]:
    """``(items, kinds, gaps)`` of ``length`` entries for a history of (item index, kind, timestamp
    or None) oldest first: its most recent ``length`` events, most recent first, zero-padded."""
    recent = list(history)[-(length + 1):]  # one more: the gap of the oldest position shown
    times = np.asarray([np.nan if t is None else t for _, _, t in recent], dtype=np.float64)
    gaps = gap_buckets(np.diff(times)).tolist() if len(times) > 1 else []
    if len(recent) <= length:
        gaps = [0, *gaps]  # the shopper's first event: no gap
    else:
        recent = recent[1:]
    shown = len(recent)
    pad = [0] * (length - shown)
    return ([item for item, _, _ in reversed(recent)] + pad,
            [KIND_CODES[kind] for _, kind, _ in reversed(recent)] + pad,
            [int(g) for g in reversed(gaps)] + pad)

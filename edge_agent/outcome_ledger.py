"""What recommendations earned, attributed on the device (pure: no I/O, no clock of its own).

The ledger remembers each served request for the attribution window: who it was for (the user's
keyed reference, never the id), which model version and arm served it, and its items (as 64-bit
hashes of their ids). Impressions and clicks name the request; a cart or purchase by the same
shopper of one of a request's items within the window converts that item of the most recent such
request (last touch, once per request and item). Every count lands in the request's cell
(model version x arm), which is what the agent reports (:mod:`shared.outcomes`).

Bounded: at most ``max_requests`` requests (the oldest go first, as do those past the window),
cells of the last :data:`KEPT_VERSIONS` model versions, and per cell at most ``min_shoppers``
user references (enough to know the cell may be reported). :meth:`snapshot` and :meth:`restore`
turn it into bytes and back, for :mod:`edge_agent.outcome_file` to seal on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from shared.outcomes import Arm, OutcomeCell, OutcomeKind, outcomes_status

#: Cells of this many model versions (the newest) are kept and reported.
KEPT_VERSIONS = 4

SHOWN, CLICKED, CONVERTED = 1, 2, 4  # flags of one item of a request

_COUNTS = tuple(f.name for f in fields(OutcomeCell)[2:])
_ARMS = tuple(Arm)


def item_hash(item_id: str) -> int:
    """64 bits of BLAKE2b of the item id: what the ledger keeps instead of the id."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "big")


@dataclass
class _Request:
    ref: bytes
    version: int
    arm: Arm
    at: float
    items: np.ndarray  # uint64 item hashes, in the order served
    flags: bytearray  # per item: SHOWN | CLICKED | CONVERTED
    converted: bool = False


@dataclass
class _Cell:
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    shoppers: set[bytes] | None = field(default_factory=set)  # None once min_shoppers were seen


class OutcomeLedger:
    def __init__(self, *, window_s: float, max_requests: int, min_shoppers: int, auto_impressions: bool) -> None:
        self.window_s = window_s
        self.max_requests = max_requests
        self.min_shoppers = min_shoppers
        self.auto_impressions = auto_impressions
        self._lock = threading.Lock()
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._by_user: dict[bytes, deque[str]] = {}
        self._cells: dict[tuple[int, Arm], _Cell] = {}
        self.changes = 0  # bumped on every change: the saver writes only when it moved

    # -- recording --------------------------------------------------------------------------

    def served(self, request_id: str, ref: bytes, version: int, arm: Arm, item_ids: Sequence[str], at: float) -> None:
        """A recommendation response went out (``at``: the agent's clock)."""
        items = np.fromiter((item_hash(i) for i in item_ids), dtype=np.uint64, count=len(item_ids))
        shown = SHOWN if self.auto_impressions else 0
        with self._lock:
            self._expire(at)
            cell = self._cell(version, arm)
            cell.counts["requests"] += 1
            cell.counts["impressions"] += len(item_ids) if shown else 0
            if cell.shoppers is not None:
                cell.shoppers.add(ref)
                if len(cell.shoppers) >= self.min_shoppers:
                    cell.shoppers = None
            self._requests[request_id] = _Request(ref, version, arm, at, items, bytearray([shown] * len(item_ids)))
            self._by_user.setdefault(ref, deque()).append(request_id)
            while len(self._requests) > self.max_requests:
                self._drop_oldest()
            self.changes += 1

    def outcome(self, kind: OutcomeKind, request_id: str, ref: bytes, item_id: str) -> bool:
        """An impression or click the app reports; False when the request is unknown (expired,
        evicted, never served), belongs to another shopper, or did not hold the item."""
        flag, counter = (SHOWN, "impressions") if kind is OutcomeKind.IMPRESSION else (CLICKED, "clicks")
        wanted = np.uint64(item_hash(item_id))
        with self._lock:
            request = self._requests.get(request_id)
            if request is None or request.ref != ref:
                return False
            where = np.flatnonzero(request.items == wanted)
            if not len(where):
                return False
            position = int(where[0])
            if not request.flags[position] & flag:
                request.flags[position] |= flag
                if flag == CLICKED and not request.flags[position] & SHOWN:  # a click implies it was shown
                    request.flags[position] |= SHOWN
                    self._count(request, "impressions", 1)
                self._count(request, counter, 1)
                self.changes += 1
            return True

    def shopper_event(self, ref: bytes, item_id: str, at: float, price: float | None, purchase: bool) -> bool:
        """A cart or purchase at ``at`` (the event's time): converts the item of the shopper's most
        recent request within the window that recommended it and has not converted it yet."""
        wanted = np.uint64(item_hash(item_id))
        with self._lock:
            for request_id in reversed(self._by_user.get(ref, ())):
                request = self._requests[request_id]
                if not request.at <= at <= request.at + self.window_s:
                    continue
                where = np.flatnonzero(request.items == wanted)
                if not len(where) or request.flags[int(where[0])] & CONVERTED:
                    continue
                request.flags[int(where[0])] |= CONVERTED
                self._count(request, "conversions", 1)
                if not request.converted:
                    request.converted = True
                    self._count(request, "converted_requests", 1)
                if purchase and price is not None:
                    self._count(request, "revenue", price)
                self.changes += 1
                return True
        return False

    def forget_user(self, ref: bytes) -> None:
        """An erased shopper: their requests go (what they added to the counts stays, anonymous)."""
        with self._lock:
            for request_id in self._by_user.pop(ref, ()):
                self._requests.pop(request_id, None)
            for cell in self._cells.values():
                if cell.shoppers is not None:
                    cell.shoppers.discard(ref)
            self.changes += 1

    def _cell(self, version: int, arm: Arm) -> _Cell:
        cell = self._cells.get((version, arm))
        if cell is None:
            cell = self._cells[(version, arm)] = _Cell()
            versions = sorted({v for v, _ in self._cells}, reverse=True)
            for old in versions[KEPT_VERSIONS:]:
                for a in _ARMS:
                    self._cells.pop((old, a), None)
        return cell

    def _count(self, request: _Request, counter: str, amount: float) -> None:
        cell = self._cells.get((request.version, request.arm))
        if cell is not None:  # (None: the version's cells were dropped for newer ones)
            cell.counts[counter] += amount

    def _expire(self, now: float) -> None:
        while self._requests and next(iter(self._requests.values())).at < now - self.window_s:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        request_id, request = self._requests.popitem(last=False)
        queue = self._by_user.get(request.ref)
        if queue is not None:
            if queue and queue[0] == request_id:
                queue.popleft()
            else:
                queue.remove(request_id)
            if not queue:
                del self._by_user[request.ref]

    # -- reporting --------------------------------------------------------------------------

    def cells(self) -> tuple[list[OutcomeCell], int]:
        """(the cells that may leave the box, how many were held back for too few shoppers)."""
        with self._lock:
            ready, held = [], 0
            for (version, arm), cell in sorted(self._cells.items()):
                if cell.shoppers is not None:
                    held += 1
                    continue
                counts = {name: int(value) for name, value in cell.counts.items() if name != "revenue"}
                ready.append(OutcomeCell(version, arm, **counts, revenue=float(cell.counts["revenue"])))
            return ready, held

    def status(self) -> dict[str, object]:
        ready, held = self.cells()
        return outcomes_status(ready, self.min_shoppers, held)

    def tracked_requests(self) -> int:
        return len(self._requests)

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything as bytes: a JSON header, then the requests as numpy arrays (no pickle)."""
        with self._lock:
            requests = list(self._requests.items())
            cells = [{"version": v, "arm": a.value, "counts": c.counts,
                      "shoppers": None if c.shoppers is None else [r.hex() for r in c.shoppers]}
                     for (v, a), c in self._cells.items()]
        sizes = np.array([len(r.items) for _, r in requests], dtype=np.int64)
        arrays: dict[str, Any] = {
            "ids": np.array([i.encode() for i, _ in requests], dtype="S64"),
            "refs": np.array([r.ref for _, r in requests], dtype="S32"),
            "versions": np.array([r.version for _, r in requests], dtype=np.int64),
            "arms": np.array([_ARMS.index(r.arm) for _, r in requests], dtype=np.int8),
            "at": np.array([r.at for _, r in requests], dtype=np.float64),
            "converted": np.array([r.converted for _, r in requests], dtype=bool),
            "sizes": sizes,
            "items": np.concatenate([r.items for _, r in requests]) if requests else np.zeros(0, np.uint64),
            "flags": np.frombuffer(b"".join(bytes(r.flags) for _, r in requests), dtype=np.uint8),
        }
        out = io.BytesIO()
        header = json.dumps({"cells": cells}).encode()
        out.write(len(header).to_bytes(4, "big") + header)
        np.savez(out, **arrays)
        return out.getvalue()

    def restore(self, data: bytes) -> None:
        """Take back a :meth:`snapshot` (ValueError/KeyError when it is not one)."""
        size = int.from_bytes(data[:4], "big")
        header = json.loads(data[4:4 + size])
        with np.load(io.BytesIO(data[4 + size:]), allow_pickle=False) as saved:
            a = {name: saved[name] for name in saved.files}
        cells = {}
        for raw in header["cells"]:
            shoppers = None if raw["shoppers"] is None else {bytes.fromhex(r) for r in raw["shoppers"]}
            counts = {name: raw["counts"].get(name, 0) for name in _COUNTS}
            cells[(int(raw["version"]), Arm(raw["arm"]))] = _Cell(counts, shoppers)
        bounds = np.concatenate([[0], np.cumsum(a["sizes"])])
        requests: OrderedDict[str, _Request] = OrderedDict()
        by_user: dict[bytes, deque[str]] = {}
        for n, request_id in enumerate(a["ids"].tolist()):
            ref = bytes(a["refs"][n]).ljust(32, b"\0")  # numpy trims trailing NULs of S32
            lo, hi = int(bounds[n]), int(bounds[n + 1])
            requests[request_id.decode()] = _Request(
                ref, int(a["versions"][n]), _ARMS[int(a["arms"][n])], float(a["at"][n]),
                a["items"][lo:hi].copy(), bytearray(a["flags"][lo:hi].tobytes()), bool(a["converted"][n]))
            by_user.setdefault(ref, deque()).append(request_id.decode())
        with self._lock:
            self._cells, self._requests, self._by_user = cells, requests, by_user

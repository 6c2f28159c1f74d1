"""Simulated shoppers who take recommendations by a known model of taste, for outcome-judged
rollouts (``bench/outcomes.py`` and its short version in the tests).

The shop is a generated one (:mod:`devtools.synthetic_shop`): items have a category, categories
belong to tastes, items have an appeal (Zipf). A simulated shopper is one of its shoppers, and
likes what their history shows: the model of taste, stated once here, is

    P(click item | shown) = CLICK_BASE x match x appeal_factor
        match = 1 for a category the shopper met, TASTE_MATCH for another category of a taste
                they met, NO_MATCH otherwise;
        appeal_factor = (appeal / max appeal) ** APPEAL_POWER, at least APPEAL_FLOOR
    P(cart | click) = CART_AFTER_CLICK   (a cart of a recommended item is a conversion)

so a list of the shopper's categories earns most, the popularity list (appealing items of any
taste) less, and a list of other tastes' items least. The "bad" model of the simulation is
trained on the same events after a broken join relabelled every item as another one
(:func:`write_relabelled`): it answers with confidence and without errors, and recommends
items unrelated to the shopper.

:class:`Shoppers` drives one agent over real HTTP until stopped: a shopper asks for
recommendations, clicks and carts by the model above, and the app reports the clicks (with the
request id) and the carts, as an app would.
"""

from __future__ import annotations

import csv
import gzip
import http.client
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from devtools.synthetic_shop import KINDS, Shop, ShopSpec, item_id, user_id

CLICK_BASE = 0.35
TASTE_MATCH = 0.3
NO_MATCH = 0.03
APPEAL_POWER = 0.25
APPEAL_FLOOR = 0.2
CART_AFTER_CLICK = 0.5
LIST_SIZE = 6


@dataclass
class Taste:
    """The known model of taste of a generated shop (see the module's docstring)."""

    category: np.ndarray  # [items] each item's category
    appeal: np.ndarray  # [items] the factor appeal gives a click, APPEAL_FLOOR..1
    tastes: int
    liked: dict[str, np.ndarray]  # user id -> bool [categories]: categories they met
    liked_tastes: dict[str, np.ndarray]  # user id -> bool [tastes]

    def click_probability(self, user: str, items: Iterable[str]) -> np.ndarray:
        index = np.fromiter((int(i[1:]) for i in items), dtype=np.int64)
        category = self.category[index]
        match = np.where(self.liked[user][category], 1.0,
                         np.where(self.liked_tastes[user][category % self.tastes], TASTE_MATCH, NO_MATCH))
        return CLICK_BASE * match * self.appeal[index]


def taste_of(shop: Shop, spec: ShopSpec, users: Iterable[int]) -> Taste:
    """The taste of ``users`` (shop user indices) as their events show it."""
    appeal = shop.catalogue.appeal / shop.catalogue.appeal.max()
    wanted = np.unique(np.fromiter(users, dtype=np.int64))
    mine = np.isin(shop.user, wanted)
    met = np.zeros((len(wanted), spec.categories), dtype=bool)  # shoppers x categories (not items)
    met[np.searchsorted(wanted, shop.user[mine]), shop.catalogue.category[shop.item[mine]]] = True
    met_tastes = np.zeros((len(wanted), spec.tastes), dtype=bool)
    rows, categories = np.nonzero(met)
    met_tastes[rows, categories % spec.tastes] = True
    liked = {user_id(int(u)): met[n] for n, u in enumerate(wanted)}
    liked_tastes = {user_id(int(u)): met_tastes[n] for n, u in enumerate(wanted)}
    return Taste(shop.catalogue.category, np.maximum(appeal**APPEAL_POWER, APPEAL_FLOOR), spec.tastes, liked,
                 liked_tastes)


def histories(shop: Shop, users: Iterable[int], last: int = 30) -> list[dict[str, str]]:
    """The last ``last`` events of each of ``users``, oldest first, as /v1/events bodies (stamped
    now by the agent: the generated shop's dates are older than the agent's retention)."""
    events = []
    for u in users:
        rows = np.flatnonzero(shop.user == u)[-last:]
        events += [{"user_id": user_id(u), "item_id": item_id(int(shop.item[r])), "event": KINDS[int(shop.kind[r])]}
                   for r in rows]
    return events


def write_relabelled(events: Path, out: Path, items: int, seed: int) -> None:
    """``events`` (CSV, gzipped) with every item id replaced by another by a fixed random
    permutation: the training data of a pipeline whose item join broke."""
    permutation = np.random.default_rng(seed).permutation(items)
    with gzip.open(events, "rt", newline="") as source, gzip.open(out, "wt", newline="") as target:
        reader, writer = csv.DictReader(source), None
        for row in reader:
            if writer is None:
                writer = csv.DictWriter(target, fieldnames=reader.fieldnames or [])
                writer.writeheader()
            row["item_id"] = item_id(int(permutation[int(row["item_id"][1:])]))
            writer.writerow(row)


class Shoppers(threading.Thread):
    """Drives one agent with its shoppers until :meth:`stop`; counts what it did."""

    def __init__(self, port: int, token: str, users: list[str], taste: Taste, seed: int) -> None:
        super().__init__(name=f"shoppers-{port}", daemon=True)
        self._port, self._headers = port, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._users, self._taste = users, taste
        self._rng = np.random.default_rng(seed)
        self._stopping = threading.Event()
        self.requests = self.clicks = self.carts = self.errors = 0

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
        try:
            while not self._stopping.is_set():
                self._visit(connection)
        finally:
            connection.close()

    def _call(self, connection: http.client.HTTPConnection, method: str, path: str,
              body: object = None) -> dict[str, object] | None:
        try:
            connection.request(method, path, None if body is None else json.dumps(body).encode(), self._headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # reconnects on the next request
            self.errors += 1
            return None
        if response.status != 200:
            self.errors += 1
            return None
        parsed: dict[str, object] = json.loads(answer)
        return parsed

    def _visit(self, connection: http.client.HTTPConnection) -> None:
        user = self._users[int(self._rng.integers(len(self._users)))]
        answer = self._call(connection, "GET", f"/v1/recommendations?user_id={quote(user)}&k={LIST_SIZE}&exclude=seen")
        if answer is None:
            return
        self.requests += 1
        items = [str(i["id"]) for i in answer["items"]]  # type: ignore[attr-defined]
        clicked = self._rng.random(len(items)) < self._taste.click_probability(user, items)
        carted = clicked & (self._rng.random(len(items)) < CART_AFTER_CLICK)
        events = [{"user_id": user, "item_id": i, "event": "click", "request_id": answer["request_id"]}
                  for i, c in zip(items, clicked, strict=True) if c]
        events += [{"user_id": user, "item_id": i, "event": "cart"} for i, c in zip(items, carted, strict=True) if c]
        if events and self._call(connection, "POST", "/v1/events", {"events": events}) is not None:
            self.clicks += int(clicked.sum())
            self.carts += int(carted.sum())

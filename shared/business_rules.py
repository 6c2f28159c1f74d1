"""Business rules signed by the cloud: block, boost and pin, by item or by category, optionally
time-boxed; the document's contract and how :func:`shared.recommendation.recommend` applies them.

The document (signed like a manifest, trust rules in :mod:`shared.fleet_documents`)::

    {"schema": "edge-rec.rules/1", "fleet": "default", "version": 1717000000, "created": "...",
     "expires": "...", "targets": [],
     "rules": [{"action": "block", "item": "85123A"},
               {"action": "boost", "category": "CHRISTMAS", "bias": 0.5, "from": "...", "until": "..."},
               {"action": "pin", "item": "22423", "slot": 1}]}

Each rule names exactly one of ``item`` or ``category`` (compared case-insensitively, as the
``category`` filter is); ``from``/``until`` (UTC, optional) box it in time. How they apply:

- **block**: the items join the exclusions, so they reach the graph in the same ``item_allowed``
  mask (:func:`shared.recommendation.allowed_items`): the model ranks the whole catalogue without
  them, exactly. Block wins over boost and pin.
- **boost**: ``bias`` is added to the model's score of each boosted item among the candidates the
  model returned (its top K, ``model.top_k``, usually more than ``k``), and the candidates are
  re-ranked by the sum; the score served is the sum. A boosted item outside the model's top K
  cannot be lifted (its score is not known): pin it to show it whatever its score. Biases of
  several boosts add up; a negative bias buries. Popular items filling a list have no score and
  are not boosted.
- **pin**: the item (for a category: the best-placed item of the category in the list, else its
  most popular item) is put at ``slot`` (1 = first), if the request's filters allow it (a pinned
  item the shopper bought is not shown with ``exclude=purchased``, nor one of another category
  when the app asked for a category). Pins apply in slot order; two pins for one slot: the first
  listed takes it, the next goes right after. A pinned item the model did not return has no score.

Pure (numpy over the catalogue, no I/O); the agent keeps the document (:mod:`edge_agent.rules_store`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import numpy as np

from shared.catalog import Catalog
from shared.errors import MalformedDocument
from shared.fleet_documents import Header, parse_header, parse_time
from shared.recommendation import Recommendation, Scores

SCHEMA = "edge-rec.rules/1"
ACTIONS = ("block", "boost", "pin")
MAX_RULES = 1000
MAX_BIAS = 1000.0
MAX_SLOT = 1000
MAX_NAME = 256
_KEYS = {"block": {"bias", "slot"}, "boost": {"slot"}, "pin": {"bias"}}  # keys each action must not have


@dataclass(frozen=True)
class Rule:
    action: str
    item: str | None = None
    category: str | None = None
    bias: float = 0.0
    slot: int = 0
    valid_from: str | None = None
    valid_until: str | None = None

    def active(self, now: datetime) -> bool:
        return ((self.valid_from is None or parse_time(self.valid_from, "from") <= now)
                and (self.valid_until is None or now < parse_time(self.valid_until, "until")))

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"action": self.action}
        data.update({k: v for k, v in (("item", self.item), ("category", self.category), ("from", self.valid_from),
                                       ("until", self.valid_until)) if v is not None})
        if self.action == "boost":
            data["bias"] = self.bias
        if self.action == "pin":
            data["slot"] = self.slot
        return data


@dataclass(frozen=True)
class RulesDocument:
    header: Header
    rules: tuple[Rule, ...]

    @property
    def version(self) -> int:
        return self.header.version

    def counts(self, now: datetime | None = None) -> dict[str, int]:
        """Rules by action; with ``now``, also how many are active then."""
        counts = {a: sum(r.action == a for r in self.rules) for a in ACTIONS}
        if now is not None:
            counts["active"] = sum(r.active(now) for r in self.rules)
        return counts

    def to_json(self) -> str:
        return json.dumps({**self.header.as_dict(), "rules": [r.as_dict() for r in self.rules]}, sort_keys=True)


def parse_rule(raw: object, index: int) -> Rule:
    """One rule of a document or a rules file; MalformedDocument names ``rules[index]`` and the field."""
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise MalformedDocument(f"{where} must be an object")
    action = raw.get("action")
    if action not in ACTIONS:
        raise MalformedDocument(f"{where}.action must be one of {', '.join(ACTIONS)}")
    allowed = {"action", "item", "category", "bias", "slot", "from", "until"} - _KEYS[str(action)]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise MalformedDocument(f"{where}: {unknown[0][:40]!r} is not a field of a {action} rule")
    names = [k for k in ("item", "category") if k in raw]
    if len(names) != 1:
        raise MalformedDocument(f"{where} must name exactly one of item or category")
    name = raw[names[0]]
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise MalformedDocument(f"{where}.{names[0]} must be a string of 1 to {MAX_NAME} characters")
    bias, slot = raw.get("bias", 0.0), raw.get("slot", 0)
    if action == "boost" and (not isinstance(bias, (int, float)) or isinstance(bias, bool) or not math.isfinite(bias)
                              or not 0 < abs(bias) <= MAX_BIAS):
        raise MalformedDocument(f"{where}.bias must be a non-zero number from -{MAX_BIAS:g} to {MAX_BIAS:g}")
    if action == "pin" and (not isinstance(slot, int) or isinstance(slot, bool) or not 1 <= slot <= MAX_SLOT):
        raise MalformedDocument(f"{where}.slot must be an integer from 1 (the first) to {MAX_SLOT}")
    window = [raw.get(k) for k in ("from", "until")]
    for key, value in zip(("from", "until"), window, strict=True):
        if value is not None:
            parse_time(value, f"{where}.{key}")
    if all(window) and parse_time(window[1], "until") <= parse_time(window[0], "from"):
        raise MalformedDocument(f"{where}.until must be after its from")
    return Rule(str(action), raw.get("item"), raw.get("category"), float(bias), int(slot),
                None if window[0] is None else str(window[0]), None if window[1] is None else str(window[1]))


def parse_rules_list(raw: object) -> tuple[Rule, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise MalformedDocument(f"rules must be a list of at most {MAX_RULES} rules")
    return tuple(parse_rule(r, i) for i, r in enumerate(raw))


def parse_rules(text: str) -> RulesDocument:
    """Structurally validate a rules document's signed text (signature already verified)."""
    header, data = parse_header(text, SCHEMA, frozenset({"rules"}))
    return RulesDocument(header, parse_rules_list(data.get("rules")))


@dataclass(frozen=True)
class AppliedRules:
    """A document's rules active at one moment, resolved against one catalogue (what recommend takes)."""

    catalog: Catalog
    index_of: Mapping[str, int]  # item id -> index (the catalogue's, built once)
    blocked: np.ndarray  # int64 item indices
    bias: np.ndarray | None  # float32 [ranked items], None without boosts
    pins: tuple[tuple[int, str, str], ...]  # (slot, "item" or "category", the id or casefolded category)

    def banned(self, excluded: Sequence[int]) -> Sequence[int]:
        """The exclusions plus the blocked items (what :func:`allowed_items` turns into the mask;
        an array, which it takes as it is)."""
        if not len(self.blocked):
            return excluded
        return cast(Sequence[int], np.concatenate([np.asarray(excluded, dtype=np.int64), self.blocked]))

    def rerank(self, answer: Scores) -> Scores:
        """The model's candidates re-ranked by score + bias (contributions' columns follow)."""
        if self.bias is None or not len(answer.indices):
            return answer
        indices = np.asarray(answer.indices)
        ranked = indices < len(self.bias)
        scores = np.asarray(answer.scores, dtype=np.float32) + np.where(
            ranked, self.bias[np.where(ranked, indices, 0)], 0).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        contributions = None if answer.contributions is None else answer.contributions[:, order]
        return Scores(indices[order], scores[order], contributions)

    def pin(self, chosen: list[Recommendation], k: int, allowed: np.ndarray | None) -> list[Recommendation]:
        """``chosen`` with the pinned items at their slots, cut to ``k``."""
        placed: list[tuple[int, Recommendation]] = []  # (position, item), positions never decreasing
        pinned: set[int] = set()
        same_slot: dict[int, int] = {}
        for slot, kind, name in self.pins:  # in slot order
            index = self._pinned_index(kind, name, chosen, allowed, pinned)
            if index is None:
                continue
            item = self.catalog.items[index]
            rec = next((r for r in chosen if r.item.id == item.id), None) or Recommendation(item, None)
            placed.append((slot - 1 + same_slot.get(slot, 0), rec))
            same_slot[slot] = same_slot.get(slot, 0) + 1
            pinned.add(index)
        if not placed:
            return chosen[:k]
        ids = {rec.item.id for _, rec in placed}
        result = [r for r in chosen if r.item.id not in ids]
        for position, rec in placed:  # inserting in position order never moves an earlier pin
            result.insert(min(position, len(result)), rec)
        return result[:k]

    def _pinned_index(self, kind: str, name: str, result: list[Recommendation], allowed: np.ndarray | None,
                      pinned: set[int]) -> int | None:
        items = self.catalog.items
        if kind == "item":
            index = self.index_of.get(name)
            ok = index is not None and index < len(items) and (allowed is None or bool(allowed[index]))
            return index if ok and index not in pinned else None
        for rec in result:
            index = self.index_of[rec.item.id]
            if rec.item.category.casefold() == name and index not in pinned:
                return index
        for index in self.catalog.popular:
            if (items[index].category.casefold() == name and index not in pinned
                    and (allowed is None or bool(allowed[index]))):
                return index
        return None


def apply_to(document: RulesDocument, catalog: Catalog, now: datetime) -> AppliedRules:
    """The rules of ``document`` active at ``now``, resolved against ``catalog`` (items it does not
    rank are left out)."""
    active = [r for r in document.rules if r.active(now)]
    count = len(catalog.items)
    index_of = catalog.index_of()
    names, codes = catalog.category_codes()
    item_codes = np.frombuffer(codes, dtype=np.uint32)
    folded = [n.casefold() for n in names]

    def members(rule: Rule) -> np.ndarray:
        if rule.item is not None:
            index = index_of.get(rule.item)
            return np.array([index] if index is not None and index < count else [], dtype=np.int64)
        wanted = rule.category.casefold() if rule.category else ""
        matching = np.fromiter((f == wanted for f in folded), dtype=bool, count=len(folded))
        return np.flatnonzero(matching[item_codes]).astype(np.int64)

    blocks = [members(r) for r in active if r.action == "block"]
    blocked = np.unique(np.concatenate(blocks)) if blocks else np.zeros(0, dtype=np.int64)
    bias = None
    for rule in (r for r in active if r.action == "boost"):
        bias = np.zeros(count, dtype=np.float32) if bias is None else bias
        bias[members(rule)] += np.float32(rule.bias)
    pins = sorted(((r.slot, "item" if r.item is not None else "category",
                    r.item if r.item is not None else (r.category or "").casefold()) for r in active
                   if r.action == "pin"), key=lambda p: p[0])
    return AppliedRules(catalog, index_of, blocked, bias, tuple(pins))

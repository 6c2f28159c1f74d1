"""Business rules, pure: the document's validation, and block, boost and pin applied by
:func:`shared.recommendation.recommend`, on a hand-made scorer (expected lists worked out in the
comments) and on a real int8 bundle (block is the exclusions' in-graph mask, exactly)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edge_agent.loaded_model import LoadedModel
from harness import manifest_of
from shared import scenes
from shared.bundle import CATALOG_FILE, MODEL_FILE
from shared.business_rules import SCHEMA, Rule, RulesDocument, apply_to, parse_rule, parse_rules
from shared.catalog import Catalog, CatalogItem, parse_catalog
from shared.errors import MalformedDocument
from shared.events import EventKind
from shared.fleet_documents import Header
from shared.recommendation import Exclude, Scores, recommend

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
#: items a..h; categories: a-d "toys", e-h "food"; the model scores a 8.0, b 7.0, ... h 1.0
IDS = "abcdefgh"
CATALOG = Catalog(items=tuple(CatalogItem(i, i, "toys" if i < "e" else "food") for i in IDS),
                  popular=(7, 6, 5, 4, 3, 2, 1, 0))


class FixedScorer:
    """Returns its top ``top_k`` allowed items by fixed scores (like the graph: the mask applies first)."""

    catalog, version, history_length, takes_sequence = CATALOG, 1, 10, False
    item_index = {i: n for n, i in enumerate(IDS)}

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = top_k

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None) -> Scores:
        scores = np.arange(8, 0, -1, dtype=np.float32)  # a 8 ... h 1
        order = [i for i in range(8) if allowed is None or allowed[i]][: self.top_k]
        return Scores(np.array(order), scores[order])


class Bought:
    item_id, kind, timestamp = "h", EventKind.PURCHASE, None


def served(*rules: Rule, k: int = 3, exclude: Exclude = Exclude.NONE, category: str | None = None,
           now: datetime = NOW, top_k: int = 5) -> list[str]:
    document = RulesDocument(Header(SCHEMA, "default", 1, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"), rules)
    result = recommend(FixedScorer(top_k), [Bought()], k, exclude, category, rules=apply_to(document, CATALOG, now))
    return [r.item.id for r in result.items]


def test_without_rules_the_model_order() -> None:
    assert served() == ["a", "b", "c"]


def test_block_by_item_and_by_category_in_the_mask() -> None:
    assert served(Rule("block", item="a")) == ["b", "c", "d"]
    assert served(Rule("block", category="TOYS")) == ["e", "f", "g"]  # case-insensitive, as the category filter


def test_boost_reranks_the_models_candidates_only() -> None:
    # candidates a..e (top_k 5) scored 8..4; e + 3.5 = 7.5 goes between a (8) and b (7)
    assert served(Rule("boost", item="e", bias=3.5)) == ["a", "e", "b"]
    # f (score 3) is not among the candidates: a boost cannot lift it (documented)
    assert served(Rule("boost", item="f", bias=100)) == ["a", "b", "c"]
    # a negative bias buries: a 8 - 5 = 3 drops below d (5); food boosted by 2: e 6
    assert served(Rule("boost", item="a", bias=-5), Rule("boost", category="food", bias=2), k=4) == \
        ["b", "c", "e", "d"]


def test_pin_puts_items_at_fixed_slots_within_the_filters() -> None:
    assert served(Rule("pin", item="g", slot=1)) == ["g", "a", "b"]  # g was not even a candidate
    assert served(Rule("pin", item="a", slot=3)) == ["b", "c", "a"]  # moved down to its slot
    assert served(Rule("pin", category="food", slot=2)) == ["a", "h", "b"]  # food's most popular: h
    assert served(Rule("pin", item="h", slot=1), exclude=Exclude.PURCHASED) == ["a", "b", "c"]  # bought: not shown
    assert served(Rule("pin", item="g", slot=1), category="toys") == ["a", "b", "c"]  # another category
    assert served(Rule("pin", item="g", slot=2), Rule("block", item="g")) == ["a", "b", "c"]  # block wins
    # two pins for slot 1: the first listed takes it, the next goes right after
    assert served(Rule("pin", item="f", slot=1), Rule("pin", item="g", slot=1)) == ["f", "g", "a"]
    assert served(Rule("pin", item="g", slot=3), Rule("pin", item="f", slot=1)) == ["f", "a", "g"]


def test_rules_apply_only_in_their_time_box() -> None:
    window = {"valid_from": "2025-06-01T00:00:00Z", "valid_until": "2025-06-02T00:00:00Z"}
    block = Rule("block", item="a", **window)
    assert served(block) == ["b", "c", "d"]
    assert served(block, now=NOW + timedelta(days=1)) == ["a", "b", "c"]
    assert served(block, now=NOW - timedelta(days=1)) == ["a", "b", "c"]


@pytest.mark.parametrize(("raw", "why"), [
    ({"action": "hide", "item": "a"}, "action must be one of block, boost, pin"),
    ({"action": "block", "item": "a", "category": "c"}, "exactly one of item or category"),
    ({"action": "block"}, "exactly one of item or category"),
    ({"action": "block", "item": "a", "bias": 1}, "'bias' is not a field of a block rule"),
    ({"action": "boost", "item": "a"}, "bias must be a non-zero number"),
    ({"action": "boost", "item": "a", "bias": 1e9}, "bias must be a non-zero number"),
    ({"action": "pin", "item": "a", "slot": 0}, "slot must be an integer from 1"),
    ({"action": "pin", "item": "a", "slot": 1, "until": "tomorrow"}, "until must be UTC time"),
    ({"action": "block", "item": "a", "from": "2025-06-02T00:00:00Z", "until": "2025-06-01T00:00:00Z"},
     "until must be after its from"),
])
def test_a_bad_rule_is_named_with_its_field(raw: dict, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(MalformedDocument, match=why):
        parse_rule(raw, 4)
    with pytest.raises(MalformedDocument, match=r"rules\[4\]"):
        parse_rule(raw, 4)


def test_the_document_round_trips() -> None:
    rules = (Rule("block", category="toys"), Rule("boost", item="a", bias=0.5, valid_until="2025-07-01T00:00:00Z"),
             Rule("pin", item="b", slot=2))
    document = RulesDocument(Header(SCHEMA, "default", 7, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"), rules)
    assert parse_rules(document.to_json()) == document
    assert document.counts(NOW) == {"block": 1, "boost": 1, "pin": 1, "active": 3}
    with pytest.raises(MalformedDocument, match="unknown field"):
        parse_rules(json.dumps({**json.loads(document.to_json()), "extra": 1}))


def test_block_is_the_same_in_graph_mask_as_an_exclusion(int8_bundle: Path) -> None:
    """On the real int8 graph: blocking items gives exactly the list excluding them as bought does."""
    manifest = manifest_of(int8_bundle)
    catalog = parse_catalog((int8_bundle / CATALOG_FILE).read_bytes(), manifest.model.num_items)
    model = LoadedModel(manifest, (int8_bundle / MODEL_FILE).read_bytes(), catalog)
    history = [type("E", (), {"item_id": catalog.items[i].id, "kind": EventKind.VIEW, "timestamp": None})()
               for i in (3, 5, 8)]
    plain = recommend(model, history, 10)
    blocked = [r.item.id for r in plain.items[:4]]
    document = RulesDocument(Header(SCHEMA, "default", 1, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
                             tuple(Rule("block", item=i) for i in blocked))
    with_rules = recommend(model, history, 10, rules=apply_to(document, catalog, NOW))
    as_exclusion = recommend(model, history, 10, Exclude.PURCHASED, bought=blocked)
    assert [(r.item.id, r.score) for r in with_rules.items] == [(r.item.id, r.score) for r in as_exclusion.items]
    assert not set(blocked) & {r.item.id for r in with_rules.items} and not with_rules.fallback


def test_every_page_of_the_shop_keeps_the_rules() -> None:
    document = RulesDocument(Header(SCHEMA, "default", 1, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
                             (Rule("block", item="a"), Rule("block", item="c")))
    rules = apply_to(document, CATALOG, NOW)
    pages = {
        "related": scenes.related(FixedScorer(), "b", 4, rules=rules),
        "cart": scenes.cart(FixedScorer(), ["d"], 4, rules=rules),
        "new": scenes.new_for_you(FixedScorer(), [Bought()], 4, new=np.ones(8, dtype=bool), rules=rules),
    }
    for page, result in pages.items():
        shown = [r.item.id for r in result.items]
        assert shown and not {"a", "c"} & set(shown), (page, shown)
    assert [r.item.id for r in scenes.related(FixedScorer(), "b", 2).items] == ["a", "c"]  # unblocked: the top

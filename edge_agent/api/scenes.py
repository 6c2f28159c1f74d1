"""The shop's other pages (:mod:`shared.scenes`): a product page's related items
(``GET /v1/items/<item_id>/related``), a basket's (``POST /v1/recommendations/cart``) and the
new items for a shopper (``GET /v1/recommendations/new``).

Like ``GET /v1/recommendations``: the model serving now (the control for a holdout shopper), the
store's stock in the model's mask and its local prices, a ``request_id`` recorded in the outcome
ledger when the request names a shopper (a guest's list cannot be credited to anyone).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from flask import Blueprint

from edge_agent.api.params import arg, identifier, int_arg, json_body, only_args, text_arg
from edge_agent.api.served_list import serve
from edge_agent.api.services import services
from edge_agent.errors import ApiError
from shared import scenes
from shared.business_rules import AppliedRules
from shared.openapi_scenes import MAX_BASKET
from shared.recommendation import Exclude, HistoryEvent, RecommendationResult, Scorer

log = logging.getLogger("edge_agent.api")

blueprint = Blueprint("scenes", __name__)


_new_items: weakref.WeakKeyDictionary[Scorer, np.ndarray] = weakref.WeakKeyDictionary()  # per model


def _exclude(raw: object) -> Exclude:
    try:
        return Exclude("none" if raw is None else str(raw) if isinstance(raw, str) else "?")
    except ValueError:
        raise ApiError(400, "invalid_parameter", "exclude must be none, purchased or seen") from None


def _optional_user() -> str | None:
    raw = arg("user_id")
    return None if raw is None else identifier(raw, "user_id")


@blueprint.get("/v1/items/<path:item_id>/related")
def related(item_id: str) -> Any:
    item_id = identifier(item_id, "item_id")
    only_args("user_id", "k", "exclude", "category")
    found = services()
    k = int_arg("k", 10, 1, found.max_k)
    user_id, exclude, category = _optional_user(), _exclude(arg("exclude")), text_arg("category")
    model = found.active.current
    if model is not None and item_id not in model.item_index:
        raise ApiError(404, "unknown_item", "the model does not know this item")

    def scene(scorer: Scorer, history: Sequence[HistoryEvent], bought: Sequence[str], available: np.ndarray | None,
              personalised: bool, rules: AppliedRules | None) -> RecommendationResult:
        return scenes.related(scorer, item_id, k, history, exclude, category, bought, available, personalised,
                              rules)

    return serve(user_id, exclude, scene)


@blueprint.get("/v1/recommendations/new")
def new_for_you() -> Any:
    only_args("user_id", "k", "exclude", "category")
    found = services()
    k = int_arg("k", 10, 1, found.max_k)
    user_id, exclude, category = _optional_user(), _exclude(arg("exclude")), text_arg("category")

    def scene(scorer: Scorer, history: Sequence[HistoryEvent], bought: Sequence[str], available: np.ndarray | None,
              personalised: bool, rules: AppliedRules | None) -> RecommendationResult:
        new = _new_items.get(scorer)
        if new is None:
            new = _new_items[scorer] = scenes.new_items(scorer.catalog)
        return scenes.new_for_you(scorer, history, k, exclude, category, bought, available, personalised, new,
                                  rules)

    return serve(user_id, exclude, scene)


def _cart_body() -> dict[str, Any]:
    body = json_body(4)
    if not isinstance(body, dict) or set(body) - {"user_id", "items", "k", "exclude", "category"}:
        raise ApiError(400, "invalid_body", "send an object with items and optional user_id, k, exclude, category")
    for name, value in body.items():
        if value is None:
            raise ApiError(400, "invalid_body", f"{name} is null: give a value or leave it out")
    return body


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_body", f"{name} must be a string")
    return value


@blueprint.post("/v1/recommendations/cart")
def cart() -> Any:
    only_args()
    found = services()
    body = _cart_body()
    basket = body.get("items")
    if not isinstance(basket, list) or not 1 <= len(basket) <= MAX_BASKET:
        raise ApiError(400, "invalid_body", f"items must list 1 to {MAX_BASKET} item ids")
    if not all(isinstance(item, str) for item in basket):
        raise ApiError(400, "invalid_body", "items must list item ids (strings)")
    basket = [identifier(item, "items[]") for item in basket]
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= found.max_k:
        raise ApiError(400, "invalid_parameter", f"k must be an integer from 1 to {found.max_k}")
    user_id = body.get("user_id")
    user_id = None if user_id is None else identifier(_text(user_id, "user_id"), "user_id")
    category = body.get("category")
    category = None if category is None else identifier(_text(category, "category"), "category")
    exclude = _exclude(body.get("exclude"))

    def scene(scorer: Scorer, history: Sequence[HistoryEvent], bought: Sequence[str], available: np.ndarray | None,
              personalised: bool, rules: AppliedRules | None) -> RecommendationResult:
        return scenes.cart(scorer, basket, k, history, exclude, category, bought, available, personalised, rules)

    return serve(user_id, exclude, scene)

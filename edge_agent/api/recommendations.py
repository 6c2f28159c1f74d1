"""Recommendations for a shopper (``GET /v1/recommendations``), from the model serving now."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Blueprint, Response

from edge_agent.api.params import arg, identifier, int_arg, text_arg
from edge_agent.api.services import services
from edge_agent.errors import ApiError
from shared.outcomes import Arm
from shared.recommendation import Exclude, recommend

log = logging.getLogger("edge_agent.api")

blueprint = Blueprint("recommendations", __name__)


def _exclude() -> Exclude:
    raw = arg("exclude")
    try:
        return Exclude("none" if raw is None else raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", "exclude must be none, purchased or seen") from None


@blueprint.get("/v1/recommendations")
def recommendations() -> Any:
    found = services()
    user_id = identifier(arg("user_id") or "", "user_id")
    k = int_arg("k", 10, 1, found.max_k)
    exclude = _exclude()
    category = text_arg("category")
    model = found.active.current  # one reference: a swap mid-request does not affect us
    if model is None:
        raise ApiError(503, "no_model", "no model installed yet; retry later")
    # the model reads the last history_length events; exclusions see all that is kept, and the
    # purchase memory (bought items, also those whose events the event cap has dropped)
    excluding = exclude is not Exclude.NONE
    arm = found.arm(user_id)
    control = found.active.control if arm is Arm.HOLDOUT else None
    scorer = model if control is None else control
    history = found.history.recent(user_id, found.max_history if excluding else scorer.history_length)
    bought = found.history.purchased(user_id) if excluding else ()
    # holdout shoppers: the previous version (experiment.control = "previous"), else popular items
    stock = found.stock.view(scorer) if found.stock is not None else None  # out of stock: never returned
    result = recommend(scorer, history, k, exclude, category, bought,
                       personalised=arm is Arm.MODEL or control is not None,
                       rules=found.rules.applied(scorer.catalog) if found.rules else None,
                       available=None if stock is None else stock.available)
    if stock is not None:
        result = stock.priced(result, scorer.item_index)  # local prices replace the catalogue's
    request_id = secrets.token_urlsafe(12)
    found.outcomes.served(request_id, found.user_ref(user_id), model.version, arm,
                          [r.item.id for r in result.items], time.time())
    found.metrics.count_recommendation(result.fallback)
    if result.model_failed:
        found.metrics.model_errors.inc()
        found.metrics.health.model_failed()
        log.error("model version %s answered a query with garbage; served popular items", result.model_version)
    return Response(found.bodies.render(user_id, result, request_id), mimetype="application/json")

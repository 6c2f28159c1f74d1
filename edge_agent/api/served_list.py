"""Serving one list, whatever the page: the one path every recommendation route takes.

The model serving now (the previous version for a holdout shopper with ``experiment.control =
"previous"``), the shopper's history and purchase memory when the request names a shopper, the
store's stock in the model's mask and its local prices, the business rules, a ``request_id``
recorded in the outcome ledger (a guest's list cannot be credited to anyone), the counters, and
the JSON body. A route says only what its page asks of the model (a :data:`Scene`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence

import numpy as np
from flask import Response

from edge_agent.api.services import services
from edge_agent.errors import ApiError
from shared.business_rules import AppliedRules
from shared.outcomes import Arm
from shared.recommendation import Exclude, HistoryEvent, RecommendationResult, Scorer

log = logging.getLogger("edge_agent.api")

#: A scene: (scorer, the shopper's history, bought, in stock, personalised, business rules) -> the list.
Scene = Callable[[Scorer, Sequence[HistoryEvent], Sequence[str], "np.ndarray | None", bool, "AppliedRules | None"],
                 RecommendationResult]


def serve(user_id: str | None, exclude: Exclude, scene: Scene) -> Response:
    found = services()
    model = found.active.current  # one reference: a swap mid-request does not affect us
    if model is None:
        raise ApiError(503, "no_model", "no model installed yet; retry later")
    arm = found.arm(user_id) if user_id is not None else Arm.MODEL
    control = found.active.control if arm is Arm.HOLDOUT else None
    scorer = model if control is None else control
    history: Sequence[HistoryEvent] = ()
    bought: Sequence[str] = ()
    if user_id is not None:
        excluding = exclude is not Exclude.NONE
        history = found.history.recent(user_id, found.max_history if excluding else scorer.history_length)
        bought = list(found.history.purchased(user_id)) if excluding else []
    stock = found.stock.view(scorer) if found.stock is not None else None
    result = scene(scorer, history, bought, None if stock is None else stock.available,
                   arm is Arm.MODEL or control is not None,
                   found.rules.applied(scorer.catalog) if found.rules else None)
    if stock is not None:
        result = stock.priced(result, scorer.item_index)
    request_id = secrets.token_urlsafe(12)
    if user_id is not None:
        found.outcomes.served(request_id, found.user_ref(user_id), model.version, arm,
                              [r.item.id for r in result.items], time.time())
    found.metrics.count_recommendation(result.fallback)
    if result.model_failed:
        found.metrics.model_errors.inc()
        found.metrics.health.model_failed()
        log.error("model version %s answered a query with garbage; served popular items", result.model_version)
    return Response(found.bodies.render(user_id, result, request_id), mimetype="application/json")

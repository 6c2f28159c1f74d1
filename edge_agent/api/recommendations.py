"""Recommendations for a shopper (``GET /v1/recommendations``, the home page), served like every page
by :func:`edge_agent.api.served_list.serve`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flask import Blueprint

from edge_agent.api.params import arg, identifier, int_arg, only_args, text_arg
from edge_agent.api.served_list import serve
from edge_agent.api.services import services
from edge_agent.errors import ApiError
from shared.business_rules import AppliedRules
from shared.recommendation import Exclude, HistoryEvent, RecommendationResult, Scorer, recommend

blueprint = Blueprint("recommendations", __name__)


def _exclude() -> Exclude:
    raw = arg("exclude")
    try:
        return Exclude("none" if raw is None else raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", "exclude must be none, purchased or seen") from None


@blueprint.get("/v1/recommendations")
def recommendations() -> Any:
    only_args("user_id", "k", "exclude", "category")
    found = services()
    user_id = identifier(arg("user_id") or "", "user_id")
    k = int_arg("k", 10, 1, found.max_k)
    exclude = _exclude()
    category = text_arg("category")

    # the model reads the last history_length events; exclusions see all that is kept, and the
    # purchase memory (bought items, also those whose events the event cap has dropped)
    def scene(scorer: Scorer, history: Sequence[HistoryEvent], bought: Sequence[str], available: np.ndarray | None,
              personalised: bool, rules: AppliedRules | None) -> RecommendationResult:
        return recommend(scorer, history, k, exclude, category, bought, personalised, rules, available=available)

    return serve(user_id, exclude, scene)

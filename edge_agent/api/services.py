"""What the API's routes use, kept in ``app.extensions`` and read with :func:`services`."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from edge_agent.active_model import ActiveModel
from edge_agent.history_store import HistoryStore
from edge_agent.metrics import AgentMetrics
from edge_agent.recommendation_json import RecommendationJson

EXTENSION = "edge_agent"


@dataclass
class Services:
    active: ActiveModel
    history: HistoryStore
    token: str
    metrics: AgentMetrics
    max_body_bytes: int = 1024 * 1024
    max_k: int = 100
    max_history: int = 200
    bodies: RecommendationJson = field(default_factory=RecommendationJson)  # cached JSON fragments


def services() -> Services:
    """The services of the app handling the current request."""
    found: Services = current_app.extensions[EXTENSION]
    return found

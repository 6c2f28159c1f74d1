"""What the API's routes use, kept in ``app.extensions`` and read with :func:`services`."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from edge_agent.active_model import ActiveModel
from edge_agent.api_tokens import TokenSet
from edge_agent.history_store import HistoryStore
from edge_agent.metrics import AgentMetrics
from edge_agent.outcome_ledger import OutcomeLedger
from edge_agent.recommendation_json import RecommendationJson
from edge_agent.rules_store import RulesStore
from edge_agent.stock_store import StockStore
from edge_agent.trust_store import TrustStore
from shared.outcomes import Arm, arm_of

EXTENSION = "edge_agent"


@dataclass
class Services:
    active: ActiveModel
    history: HistoryStore
    token: str
    metrics: AgentMetrics
    outcomes: OutcomeLedger
    max_body_bytes: int = 1024 * 1024
    max_k: int = 100
    max_history: int = 200
    bodies: RecommendationJson = field(default_factory=RecommendationJson)  # cached JSON fragments
    holdout_share: float = 0.0
    holdout_salt: str = "holdout-1"
    rules: RulesStore | None = None  # the signed business rules (shared.business_rules)
    tokens: TokenSet | None = None  # None: ``token`` alone, with every scope
    stock: StockStore | None = None  # the store's stock and local prices; None: everything in stock
    trust: TrustStore | None = None  # the signing keys trusted (edge_agent.trust_store)

    def user_ref(self, user_id: str) -> bytes:
        """The keyed reference of a user (what the history and the outcome ledger know them by)."""
        return self.history.ref(user_id)

    def arm(self, user_id: str) -> Arm:
        return arm_of(user_id, self.holdout_share, self.holdout_salt)


def services() -> Services:
    """The services of the app handling the current request."""
    found: Services = current_app.extensions[EXTENSION]
    return found

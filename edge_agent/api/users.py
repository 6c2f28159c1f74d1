"""A shopper's stored history: read it, or erase it (``/v1/users/<user_id>``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from edge_agent.api.params import identifier, iso_timestamp
from edge_agent.api.services import services

blueprint = Blueprint("users", __name__)


@blueprint.get("/v1/users/<user_id>/history")
def user_history(user_id: str) -> Any:
    user_id = identifier(user_id, "user_id")
    found = services()
    events = found.history.recent(user_id, found.max_history)
    return jsonify(
        {
            "user_id": user_id,
            "events": [
                {"item_id": e.item_id, "event": e.kind.value, "timestamp": iso_timestamp(e.timestamp)}
                for e in events
            ],
        }
    )


@blueprint.delete("/v1/users/<user_id>")
def delete_user(user_id: str) -> Any:
    user_id = identifier(user_id, "user_id")
    found = services()
    found.outcomes.forget_user(found.user_ref(user_id))  # their pending attributions go too
    return jsonify({"user_id": user_id, "deleted": found.history.delete_user(user_id)})

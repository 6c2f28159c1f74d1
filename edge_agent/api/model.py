"""The model serving, its manifest, and the last update (``/v1/model``)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify

from edge_agent.api.params import iso_timestamp
from edge_agent.api.services import services
from edge_agent.errors import ApiError

blueprint = Blueprint("model", __name__)


@blueprint.get("/v1/model")
def model_info() -> Any:
    found = services()
    active = found.active
    model, last = active.current, active.last_update
    if model is None:
        raise ApiError(404, "no_model", "no model installed yet")
    manifest = model.manifest
    return jsonify(
        {
            "version": model.version,
            "runtime": model.runtime,
            "loaded_at": iso_timestamp(model.loaded_at),
            "expired": manifest.expires_at.timestamp() < time.time(),
            "catalog_items": len(model.catalog.items),
            "history_items": len(model.catalog.items) + len(model.catalog.history_only),
            "explanations": model.explains,
            "manifest": manifest.as_dict(),
            "last_update": last.to_json() if last else None,
            "rules": found.rules.status() if found.rules else None,  # the business rules applied
            "keys": found.trust.status() if found.trust else None,  # key ids, never key material
        }
    )

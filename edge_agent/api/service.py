"""The agent as a service: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.api.errors import error_response
from edge_agent.api.services import services
from shared import openapi

blueprint = Blueprint("service", __name__)


@blueprint.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Any:
    model = services().active.current
    if model is None:
        return error_response(503, "no_model", "no model installed yet")
    return jsonify({"status": "ready", "model_version": model.version})


@blueprint.get("/metrics")
def prometheus_metrics() -> Any:
    return Response(generate_latest(services().metrics.registry), content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/v1/openapi.json")
def openapi_document() -> Any:
    return jsonify(openapi.document())

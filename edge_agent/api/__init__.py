"""The local REST API: a Flask app of one blueprint per resource, served by waitress from
:mod:`edge_agent.daemon`.

Every error is a JSON body ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status (the
handlers are in :mod:`edge_agent.api.errors`); no traceback ever reaches a client, and no user data
reaches the logs. The services the routes use are kept in ``app.extensions`` (see
:mod:`edge_agent.api.services`).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request

from edge_agent.api import errors, events, model, recommendations, scenes, service, stock, users
from edge_agent.api.services import EXTENSION, Services
from edge_agent.http_server import bearer_ok

__all__ = ["Services", "create_app"]

#: Paths served without the bearer token.
OPEN_PATHS = frozenset({"/healthz"})


def create_app(services: Services) -> Flask:
    app = Flask("edge_agent")
    app.config["MAX_CONTENT_LENGTH"] = services.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = services

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record_latency(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        services.metrics.observe_request(route, request.method, response.status_code,
                                         g.get("started", time.perf_counter()))
        return response

    @app.before_request
    def authenticate() -> Any:
        if request.path in OPEN_PATHS:
            return None
        if not bearer_ok(request.headers.get("Authorization", ""), services.token):
            response, status = errors.error_response(401, "unauthorized", "send Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, status
        return None

    errors.register(app)
    for blueprint in (service.blueprint, model.blueprint, events.blueprint, users.blueprint,
                      recommendations.blueprint, scenes.blueprint, stock.blueprint):
        app.register_blueprint(blueprint)
    return app

"""The local REST API: a Flask app of one blueprint per resource, behind the token gate of
:mod:`edge_agent.api.guard`, served by :mod:`edge_agent.granian_server` or :mod:`edge_agent.http_server`.

Every error is a JSON body ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status (the
handlers are in :mod:`edge_agent.api.errors`); no traceback ever reaches a client, and no user data
reaches the logs. The services the routes use are kept in ``app.extensions`` (see
:mod:`edge_agent.api.services`).
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from edge_agent.api import errors, events, model, recommendations, scenes, service, stock, users
from edge_agent.api.guard import Guard
from edge_agent.api.services import EXTENSION, Services
from edge_agent.api_tokens import TokenSet, all_scopes_token

__all__ = ["Services", "create_app"]


def create_app(services: Services) -> Flask:
    """The app, its ``wsgi_app`` wrapped in the gate (tokens: ``services.tokens``, else ``services.token``
    with every scope)."""
    app = Flask("edge_agent")
    # one byte over: the guard's CappedInput refuses a chunked body past the limit (see api.guard)
    app.config["MAX_CONTENT_LENGTH"] = services.max_body_bytes + 1
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

    errors.register(app)
    for blueprint in (service.blueprint, model.blueprint, events.blueprint, users.blueprint,
                      recommendations.blueprint, scenes.blueprint, stock.blueprint):
        app.register_blueprint(blueprint)
    tokens = services.tokens or TokenSet([all_scopes_token(services.token, 0.0, 1)])
    app.wsgi_app = Guard(app.wsgi_app, tokens, services.max_body_bytes)  # type: ignore[method-assign]
    return app

"""Which scope of API token each REST route needs: one table, read by the agent and the OpenAPI document.

Scopes are what a client of a store may do: a kiosk shows recommendations (``recommend``), a till
reports what was bought (``events``), the back office reads and erases shoppers' data, reads the
model and metrics and sets stock (``admin``). The table maps a method and a path prefix to a scope;
the first row that matches wins, and **a route no row names needs admin** (deny by default), so a
route added later is never opened to a kiosk by mistake. ``ANY`` means any valid token.

Pure data and one function: no I/O, no Flask.
"""

from __future__ import annotations

import enum


class Scope(enum.StrEnum):
    RECOMMEND = "recommend"
    EVENTS = "events"
    ADMIN = "admin"


#: A valid token of any scope will do (readiness, the API document).
ANY = "any"
#: Paths served without a token at all (liveness probes).
OPEN_PATHS = frozenset({"/healthz"})

#: (method, path prefix, scope): a prefix matches the path itself and anything below it ("/v1/items"
#: matches "/v1/items/42/related", not "/v1/itemsx"). First match wins; no match means admin.
ROUTE_SCOPES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/readyz", ANY),
    ("GET", "/v1/openapi.json", ANY),
    ("GET", "/v1/recommendations", Scope.RECOMMEND),
    ("POST", "/v1/recommendations/cart", Scope.RECOMMEND),  # a cart's recommendations: a read, not an event
    ("GET", "/v1/items", Scope.RECOMMEND),  # /v1/items/{id}/related
    ("GET", "/v1/scenes", Scope.RECOMMEND),
    ("POST", "/v1/events", Scope.EVENTS),
    # everything else, e.g. /v1/users/* (history, erasure), /v1/model, /metrics, /v1/stock, /v1/rules: admin
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def rule_for(method: str, path: str) -> tuple[str, str]:
    """(the table's path prefix, the scope) for a request; ("other", admin) when no row matches.

    The prefix is what a log line may name: the path itself can hold a user id.
    """
    method = "GET" if method == "HEAD" else method
    for row_method, prefix, scope in ROUTE_SCOPES:
        if row_method == method and _under(path, prefix):
            return prefix, scope
    return "other", Scope.ADMIN


def required_scope(method: str, path: str) -> str:
    """The scope a request needs: a :class:`Scope` value or :data:`ANY`."""
    return rule_for(method, path)[1]

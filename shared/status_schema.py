"""JSON Schemas of what an agent publishes over MQTT (pure data): its retained status, with the
outcome aggregates of :mod:`shared.outcomes`. The OpenAPI document carries them as components
(``AgentStatus``, ``Outcomes``, ``OutcomeCell``) so apps and dashboards have one contract, and
the tests validate real agents' statuses against them.
"""

from __future__ import annotations

from typing import Any

from shared.outcomes import OUTCOMES_SCHEMA, Arm

_COUNT = {"type": "integer", "minimum": 0}

OUTCOME_CELL: dict[str, Any] = {
    "type": "object",
    "description": "What one model version earned in one arm on this device, since its first request there.",
    "required": ["model_version", "arm", "requests", "impressions", "clicks", "conversions", "converted_requests",
                 "revenue"],
    "additionalProperties": False,
    "properties": {
        "model_version": {"type": "integer"},
        "arm": {"type": "string", "enum": [a.value for a in Arm],
                "description": "model: served by the model; holdout: the popularity list (the control)."},
        "requests": {**_COUNT, "description": "Recommendation responses served."},
        "impressions": {**_COUNT, "description": "Items shown (every served item with experiment.impressions=auto)."},
        "clicks": {**_COUNT, "description": "Click events quoting a request of the cell."},
        "conversions": {**_COUNT, "description": "Recommended items carted or bought within the attribution window."},
        "converted_requests": {**_COUNT, "description": "Requests with at least one conversion."},
        "revenue": {"type": "number", "minimum": 0,
                    "description": "Sum of the price sent with purchases of recommended items (0 without prices)."},
    },
}

OUTCOMES: dict[str, Any] = {
    "type": "object",
    "description": "Aggregates only: no user or item id. A cell is reported once min_shoppers distinct shoppers "
                   "were served in it; the others are only counted in suppressed_cells.",
    "required": ["schema", "min_shoppers", "suppressed_cells", "cells"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": OUTCOMES_SCHEMA},
        "min_shoppers": {"type": "integer", "minimum": 1},
        "suppressed_cells": _COUNT,
        "cells": {"type": "array", "items": {"$ref": "#/components/schemas/OutcomeCell"}},
    },
}

_LAST_RESULT: dict[str, Any] = {
    "oneOf": [{"type": "null"}, {"type": "object", "required": ["result", "version", "reason", "at"], "properties": {
        "result": {"type": "string", "enum": ["applied", "accepted", "rejected", "failed"]},
        "version": {"type": ["integer", "null"]}, "reason": {"type": "string"}, "at": {"type": "number"}}}],
    "description": "The last signed document handled: applied or accepted, or why it was refused.",
}

ERASURE_STATUS: dict[str, Any] = {
    "description": "Fleet erasure (shared.erasure): the acknowledgement of the fleet's erasure list; null when "
                   "erasure.secret_file is not configured. Counts only, never a digest or an id.",
    "oneOf": [{"type": "null"}, {"type": "object", "required": ["version", "requests", "erased", "last"],
                                 "additionalProperties": False, "properties": {
        "version": {"type": ["integer", "null"], "description": "The newest erasure list applied (its last "
                                                                   "request's sequence); null before the first."},
        "requests": {**_COUNT, "description": "Erasure requests applied, in total."},
        "erased": {**_COUNT, "description": "Of those, how many named a shopper of this device (erased)."},
        "last": _LAST_RESULT}}],
}

RULES_STATUS: dict[str, Any] = {
    "type": "object",
    "description": "Business rules (shared.business_rules): the signed rules document applied, if any.",
    "required": ["version", "expires", "stale", "counts", "last"],
    "properties": {
        "version": {"type": ["integer", "null"]},
        "expires": {"type": ["string", "null"]},
        "stale": {"type": ["boolean", "null"], "description": "The document has expired (still applied)."},
        "targeted": {"type": "boolean", "description": "The document targets this device (its own topic)."},
        "counts": {"type": "object", "description": "Rules by action (block, boost, pin), and active now.",
                   "additionalProperties": {"type": "integer", "minimum": 0}},
        "last": _LAST_RESULT,
    },
}

KEYS_STATUS: dict[str, Any] = {
    "type": "object",
    "description": "Signing keys (shared.key_rotation): the ids (fingerprints) of the keys trusted, never key "
                   "material, and the rotation version (0: the provisioned key alone).",
    "required": ["version", "trusted", "retired", "revoked", "last"],
    "additionalProperties": False,
    "properties": {
        "version": {"type": "integer", "minimum": 0},
        "trusted": {"type": "array", "items": {"type": "string"}, "description": "Keys that sign what comes now."},
        "retired": {"type": "array", "items": {"type": "string"},
                    "description": "Keys rotated out: they vouch for what was installed before, for nothing new."},
        "revoked": {"type": "array", "items": {"type": "string"}, "description": "Keys never trusted again."},
        "last": _LAST_RESULT,
    },
}

_ONLINE: dict[str, Any] = {
    "type": "object",
    "required": ["device_id", "fleet", "channel", "model_version", "state", "health", "outcomes", "at"],
    "properties": {
        "device_id": {"type": "string"},
        "fleet": {"type": "string"},
        "channel": {"type": "string"},
        "state": {"const": "online"},
        "model_version": {"type": ["integer", "null"]},
        "model_expires": {"type": ["string", "null"]},
        "model_stale": {"type": ["boolean", "null"]},
        "runtime": {"type": ["string", "null"]},
        "last_update": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/UpdateResult"}]},
        "discarded": {"type": "object"},
        "health": {"type": "object", "description": "Requests, latency percentiles, 5xx and model errors."},
        "outcomes": {"$ref": "#/components/schemas/Outcomes"},
        "erasure": ERASURE_STATUS,
        "rules": {"$ref": "#/components/schemas/RulesStatus"},
        "keys": {"$ref": "#/components/schemas/KeysStatus"},
        "at": {"type": "number", "description": "Epoch seconds."},
    },
}

AGENT_STATUS: dict[str, Any] = {
    "description": "Retained on <prefix>/<fleet>/status/<device_id> (MQTT), republished every "
                   "mqtt.status_interval_s and on each update; {\"state\": \"offline\"} is the last will.",
    "oneOf": [_ONLINE, {"type": "object", "required": ["state"], "properties": {"state": {"const": "offline"}}}],
}

SCHEMAS: dict[str, Any] = {"AgentStatus": AGENT_STATUS, "Outcomes": OUTCOMES, "OutcomeCell": OUTCOME_CELL,
                           "RulesStatus": RULES_STATUS, "KeysStatus": KEYS_STATUS}

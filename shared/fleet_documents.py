"""Signed fleet documents beside manifests: their common header and the trust rules they share.

The business rules (:mod:`shared.business_rules`) and the erasure list (:mod:`shared.erasure`) are
JSON documents signed like manifests (the envelope of :mod:`shared.signing`, by the same pinned
Ed25519 key) and checked by the same rules before an agent acts on them:

1. the envelope is signed by a key of the agent's trust store (``bad_signature``), at most ``max_bytes`` long;
2. the text is the document's schema with every field well-formed (``malformed``);
3. its ``fleet`` is the agent's (``wrong_fleet``), its ``targets`` (if any) name the device
   (``not_targeted``);
4. it has not expired (``expired``);
5. its ``version`` is above the one the agent last accepted (``rollback``: a replay).

:func:`signed_text` is step 1, each document's parser step 2 (on :func:`parse_header`),
:func:`check_header` steps 3 to 5; all pure (bytes and a clock value in, values out). The callers
keep the newest version on disk and talk MQTT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.bounded_json import loads
from shared.errors import (
    ExpiredManifest,
    JsonRejected,
    MalformedDocument,
    NotTargeted,
    RollbackRejected,
    SignatureError,
    WrongFleet,
)
from shared.manifest import MAX_VERSION
from shared.signing import TrustedKeys, verify
from shared.topics import check_name

#: Targets one document may name.
MAX_TARGETS = 1000
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Header:
    schema: str
    fleet: str
    version: int
    created: str
    expires: str
    targets: tuple[str, ...] = ()

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires, "expires")

    def as_dict(self) -> dict[str, object]:
        return {"schema": self.schema, "fleet": self.fleet, "version": self.version, "created": self.created,
                "expires": self.expires, "targets": list(self.targets)}


def parse_time(value: object, name: str) -> datetime:
    try:
        return datetime.strptime(str(value), _TIME).replace(tzinfo=UTC)
    except ValueError:
        raise MalformedDocument(f"{name} must be UTC time as YYYY-MM-DDTHH:MM:SSZ") from None


def field_of(data: Mapping[str, object], key: str, kind: type, where: str = "") -> object:
    """``data[key]`` if present and of ``kind`` (an int is no bool); MalformedDocument otherwise."""
    if key not in data:
        raise MalformedDocument(f"{where}{key} is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedDocument(f"{where}{key} must be {'an integer' if kind is int else f'a {kind.__name__}'}")
    return value


def parse_header(text: str, schema: str, known: frozenset[str]) -> tuple[Header, dict[str, object]]:
    """The header and the whole object of a document of ``schema``; ``known``: its body's keys."""
    try:
        data = loads(text)
    except JsonRejected as e:
        raise MalformedDocument(f"not acceptable JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedDocument("the document must be a JSON object")
    if data.get("schema") != schema:
        raise MalformedDocument(f"schema {str(data.get('schema'))[:40]!r} is not {schema!r}")
    unknown = sorted(set(data) - known - {"schema", "fleet", "version", "created", "expires", "targets"})
    if unknown:
        raise MalformedDocument(f"unknown field {unknown[0][:40]!r}")
    version = field_of(data, "version", int)
    assert isinstance(version, int)
    if not 1 <= version <= MAX_VERSION:
        raise MalformedDocument(f"version must be an integer from 1 to {MAX_VERSION}")
    targets = data.get("targets", [])
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS or not all(isinstance(t, str) for t in targets):
        raise MalformedDocument(f"targets must be a list of at most {MAX_TARGETS} device ids")
    try:
        fleet = check_name(str(field_of(data, "fleet", str)), "fleet")
        for target in targets:
            check_name(target, "target")
    except ValueError as e:
        raise MalformedDocument(str(e)) from None
    header = Header(schema=schema, fleet=fleet, version=version, created=str(field_of(data, "created", str)),
                    expires=str(field_of(data, "expires", str)), targets=tuple(targets))
    if parse_time(header.expires, "expires") <= parse_time(header.created, "created"):
        raise MalformedDocument("expires must be after created")
    return header, data


def check_header(header: Header, *, fleet: str, device_id: str | None, now: datetime, newest: int | None) -> None:
    """Raise the error that says why an agent must not act on a document with ``header``."""
    if header.fleet != fleet:
        raise WrongFleet(f"the document is for fleet {header.fleet!r}, this agent is in {fleet!r}")
    if header.targets and device_id not in header.targets:
        raise NotTargeted(f"version {header.version} targets {len(header.targets)} other devices")
    if header.expires_at <= now:
        raise ExpiredManifest(f"the document expired at {header.expires}")
    if newest is not None and header.version <= newest:
        raise RollbackRejected(f"version {header.version} is not newer than the accepted version {newest}")


def signed_text(envelope: bytes, trusted: Ed25519PublicKey | TrustedKeys, max_bytes: int,
                stored: bool = False) -> str:
    """Steps 1 of the module docstring: the signed text of an envelope of at most ``max_bytes``
    (``stored``: read back from disk, see :class:`shared.signing.TrustedKeys`)."""
    if len(envelope) > max_bytes:
        raise SignatureError(f"the envelope is larger than {max_bytes} bytes")
    return verify(envelope, trusted, stored)

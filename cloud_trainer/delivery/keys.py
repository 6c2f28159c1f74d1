"""Rotating the fleet's signing key: ``cloud-trainer keys rotate``.

Reads the chain of rotations retained on ``<prefix>/<fleet>/keys`` (:mod:`shared.key_rotation`),
checks that the current key is one the fleet trusts now (its newest rotation lists it and it signed
that rotation; with no chain yet, the key agents were provisioned with), appends a rotation one
version up that trusts the new key (and, with ``keep_current``, the current one too) and revokes
what is asked, signed by the current key and every key it trusts, and publishes the whole chain
retained, confirmed by the broker. Agents offline now catch up from it link by link when they
connect. Like the erasure list, the chain is the broker's state: run the broker with persistence.
The fleet's erasure list is then signed again by the new key, unchanged, so that the next ``erase``
(with the new key) reads it back and continues its sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
from cloud_trainer.errors import BadInput
from shared import topics
from shared.errors import SignatureError, UpdateRejected
from shared.fleet_documents import Header
from shared.key_rotation import (
    MAX_CHAIN,
    SCHEMA,
    Rotation,
    TrustState,
    apply,
    chain_bytes,
    parse_chain,
    sign_rotation,
    unverified,
)
from shared.manifest import iso_utc
from shared.signing import MAX_ENVELOPE_BYTES, key_id, load_private_key, sign, verify

log = logging.getLogger(__name__)

#: How long a rotation stays acceptable to an agent that has not seen it (the newest link must not
#: have expired when an agent catches up: rotate again, or re-issue, before then).
DEFAULT_VALID_DAYS = 365


@dataclass(frozen=True)
class RotationReport:
    version: int
    trusted: tuple[str, ...]
    revoked: tuple[str, ...]
    chain: int  # rotations the topic holds now
    bytes: int
    erasure_list_resigned: bool = False


def current_chain(connection: BrokerConnection, fleet: str) -> list[dict[str, object]]:
    """The chain retained for ``fleet``; empty if there is none. Junk there is an error (someone
    wrote to a topic only the trainer may write: find out who before rotating)."""
    payload = connection.retained(topics.keys_topic(connection.prefix, fleet))
    if not payload:
        return []
    try:
        return parse_chain(payload)
    except UpdateRejected as e:
        raise BadInput(f"the broker holds something that is not a key rotation chain on "
                       f"{topics.keys_topic(connection.prefix, fleet)} ({e}); clear it only once you know how it "
                       "got there") from None


def next_rotation(chain: list[dict[str, object]], fleet: str, current: Ed25519PrivateKey, new: Ed25519PrivateKey,
                  *, keep_current: bool = False, revoke: tuple[str, ...] = (), now: datetime | None = None,
                  valid_days: int = DEFAULT_VALID_DAYS) -> dict[str, object]:
    """The signed envelope of the rotation after ``chain`` (pure; checked as an agent would)."""
    current_id, new_id = key_id(current.public_key()), key_id(new.public_key())
    if current_id == new_id:
        raise BadInput("--new is the current key: make a new one with 'cloud-trainer keygen --out <folder>'")
    if len(chain) >= MAX_CHAIN:
        raise BadInput(f"the chain holds {len(chain)} rotations, the most agents accept")
    last = unverified(chain[-1]) if chain else None
    state = TrustState.root(current.public_key()) if last is None else TrustState(
        last.version, last.keys, revoked=last.revoked)
    if current_id not in state.key_ids():
        raise BadInput(f"--current is key {current_id}, but the fleet trusts {', '.join(state.key_ids())} "
                       f"(rotation {state.version})")
    if last is not None:
        try:  # every key a rotation trusts signed it: the current key signed the newest one
            apply(TrustState(last.version - 1, (current.public_key(),)), chain[-1], fleet=fleet)
        except UpdateRejected as e:
            raise BadInput(f"the newest rotation on the broker does not verify with --current: {e}") from None
    revoked = {*state.revoked, *(current_id if r == "current" else r for r in revoke)}
    if new_id in revoked or (keep_current and current_id in revoked):
        raise BadInput("a rotation cannot trust a key it revokes")
    keys = (new.public_key(), current.public_key()) if keep_current else (new.public_key(),)
    when = now or datetime.now(UTC)
    header = Header(schema=SCHEMA, fleet=fleet, version=state.version + 1, created=iso_utc(when),
                    expires=iso_utc(when + timedelta(days=valid_days)))
    envelope = sign_rotation(Rotation(header, keys, frozenset(revoked)), [current, new])
    try:
        apply(state, envelope, fleet=fleet)  # what an agent trusting the fleet's keys now will check
    except UpdateRejected as e:
        raise BadInput(f"the rotation would be refused by agents: {e}") from None
    return envelope


def rotate(connection: BrokerConnection, fleet: str, current: Ed25519PrivateKey, new: Ed25519PrivateKey,
           *, keep_current: bool = False, revoke: tuple[str, ...] = (),
           valid_days: int = DEFAULT_VALID_DAYS) -> RotationReport:
    """Publish the fleet's chain with one more rotation, to ``new``."""
    chain = current_chain(connection, fleet)
    envelope = next_rotation(chain, fleet, current, new, keep_current=keep_current, revoke=revoke,
                             valid_days=valid_days)
    payload = chain_bytes([*chain, envelope])
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise BadInput(f"the chain would be {len(payload)} bytes, above the agents' {MAX_ENVELOPE_BYTES}")
    connection.publish(topics.keys_topic(connection.prefix, fleet), payload)
    resigned = _carry_erasure_list(connection, fleet, current, new)
    rotation = unverified(envelope)
    log.info("key rotation %d published to fleet %s", rotation.version, fleet)
    return RotationReport(rotation.version, tuple(key_id(k) for k in rotation.keys), tuple(sorted(rotation.revoked)),
                          len(chain) + 1, len(payload), resigned)


def _carry_erasure_list(connection: BrokerConnection, fleet: str, current: Ed25519PrivateKey,
                        new: Ed25519PrivateKey) -> bool:
    """Sign the retained erasure list again with ``new`` (same text, same version: agents that
    applied it refuse it as a replay, which changes nothing); True if there was one."""
    topic = topics.erasure_topic(connection.prefix, fleet)
    envelope = connection.retained(topic)
    if not envelope:
        return False
    try:
        text = verify(envelope, current.public_key())
    except SignatureError as e:
        log.warning("the erasure list on %s is not signed by --current (%s); left as it is", topic, e)
        return False
    connection.publish(topic, sign(text, new))
    return True


def rotate_keys(options: BrokerOptions, fleet: str, current_path: Path, new_path: Path, *,
                keep_current: bool = False, revoke: tuple[str, ...] = (),
                valid_days: int = DEFAULT_VALID_DAYS) -> RotationReport:
    current, new = load_private_key(current_path.read_bytes()), load_private_key(new_path.read_bytes())
    with BrokerConnection(options) as connection:
        return rotate(connection, fleet, current, new, keep_current=keep_current, revoke=revoke,
                      valid_days=valid_days)

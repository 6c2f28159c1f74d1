"""Publishing fleet-wide erasure requests: ``cloud-trainer erase``.

Reads the fleet's retained erasure list back from the broker (verified with the signing key's
public half: the broker is not trusted), drops its expired entries, appends the shopper's
:func:`shared.erasure.erasure_digest` (never the id) with a sequence above every earlier one,
signs the list and publishes it retained, confirmed by the broker. Agents offline now get it when
they connect. The list is the broker's state: run the broker with persistence (as
``firmware_configs/mosquitto`` does), or requests not yet applied by offline agents are lost with it.
Two operators erasing at the same moment may overwrite each other's entry: erase from one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
from cloud_trainer.errors import BadInput
from shared import topics
from shared.erasure import DEFAULT_VALID_DAYS, ErasureList, appended, erasure_digest, parse_erasure_list, parse_secret
from shared.errors import UpdateRejected
from shared.signing import MAX_ENVELOPE_BYTES, load_private_key, sign, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErasureReport:
    version: int
    entries: int
    dropped: int  # expired entries left out
    bytes: int


def current_list(connection: BrokerConnection, fleet: str, key: Ed25519PrivateKey) -> ErasureList | None:
    """The fleet's erasure list on the broker, if there is one signed by ``key``."""
    envelope = connection.retained(topics.erasure_topic(connection.prefix, fleet))
    if envelope is None:
        return None
    try:
        found = parse_erasure_list(verify(envelope, key.public_key()))
    except UpdateRejected as e:
        log.warning("the broker holds an erasure list that is not ours (%s); starting a new one", e)
        return None
    if found.header.fleet != fleet:
        log.warning("the broker holds an erasure list of fleet %s on fleet %s's topic; starting a new one",
                    found.header.fleet, fleet)
        return None
    return found


def erase(connection: BrokerConnection, fleet: str, user_id: str, secret: bytes, key: Ed25519PrivateKey,
          valid_days: int = DEFAULT_VALID_DAYS, now: datetime | None = None) -> ErasureReport:
    """Append an erasure request for ``user_id`` to the fleet's list and publish it."""
    if not user_id or len(user_id) > 256:
        raise BadInput("--user must be a shopper id of 1 to 256 characters")
    when = now or datetime.now(UTC)
    previous = current_list(connection, fleet, key)
    updated = appended(previous, fleet, erasure_digest(secret, user_id), when, valid_days)
    envelope = sign(updated.to_json(), key)
    if len(envelope) > MAX_ENVELOPE_BYTES:  # cannot happen below MAX_ENTRIES; agents would refuse it
        raise BadInput(f"the erasure list would be {len(envelope)} bytes, above the agents' {MAX_ENVELOPE_BYTES}")
    connection.publish(topics.erasure_topic(connection.prefix, fleet), envelope)
    before = 0 if previous is None else len(previous.entries)
    return ErasureReport(updated.version, len(updated.entries), before + 1 - len(updated.entries), len(envelope))


def read_secret(path: Path) -> bytes:
    try:
        return parse_secret(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the erasure secret {path}: {e}") from None


def erase_user(options: BrokerOptions, fleet: str, user_id: str, secret_path: Path, key_path: Path,
               valid_days: int = DEFAULT_VALID_DAYS) -> ErasureReport:
    secret, key = read_secret(secret_path), load_private_key(key_path.read_bytes())
    with BrokerConnection(options) as connection:
        return erase(connection, fleet, user_id, secret, key, valid_days)

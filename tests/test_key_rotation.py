"""Key rotation without a broker: the chain rules (shared.key_rotation), the agent's trust store
(edge_agent.trust_store) and the trainer's next rotation (cloud_trainer.delivery.keys).

Keys are named by letter: A is the provisioned key, B and C its successors, X an outsider's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_trainer.delivery.keys import next_rotation
from cloud_trainer.errors import BadInput
from edge_agent.errors import StartupError
from edge_agent.trust_store import TRUST_FILE, TrustStore
from shared.errors import UpdateRejected
from shared.fleet_documents import Header
from shared.key_rotation import SCHEMA, Rotation, TrustState, apply_chain, chain_bytes, parse_chain, sign_rotation
from shared.manifest import iso_utc
from shared.signing import key_id, sign, verify

NOW = datetime(2026, 6, 1, tzinfo=UTC)
A, B, C, X = (Ed25519PrivateKey.generate() for _ in range(4))


def kid(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key())


def rotation(version: int, keys: list[Ed25519PrivateKey], signers: list[Ed25519PrivateKey],
             revoked: tuple[str, ...] = (), fleet: str = "default", days: int = 30) -> dict[str, object]:
    header = Header(schema=SCHEMA, fleet=fleet, version=version, created=iso_utc(NOW - timedelta(days=1)),
                    expires=iso_utc(NOW + timedelta(days=days)))
    return sign_rotation(Rotation(header, tuple(k.public_key() for k in keys), frozenset(revoked)), signers)


def accept(chain: list[dict[str, object]], state: TrustState | None = None) -> TrustState:
    found, _ = apply_chain(state or TrustState.root(A.public_key()), parse_chain(chain_bytes(chain)),
                           fleet="default", now=NOW)
    return found


def refusal(chain: list[dict[str, object]], state: TrustState | None = None) -> str:
    with pytest.raises(UpdateRejected) as e:
        accept(chain, state)
    return f"{e.value.reason}: {e.value}"


def test_a_rotation_signed_by_the_current_and_the_new_key_moves_trust() -> None:
    state = accept([rotation(1, [B], [A, B])])
    assert (state.version, state.key_ids(), [key_id(k) for k in state.retired]) == (1, [kid(B)], [kid(A)])


def test_signed_by_the_current_key_alone_is_refused() -> None:
    assert refusal([rotation(1, [B], [A])]).startswith(f"bad_signature: key {kid(B)} is trusted by the rotation")


def test_signed_by_the_new_key_alone_is_refused() -> None:
    """Someone who holds only a key of their own cannot make the fleet trust it."""
    assert "not signed by a key this agent trusts" in refusal([rotation(1, [X], [X])])


def test_a_forged_signature_of_the_current_key_is_refused() -> None:
    forged = rotation(1, [X], [X])
    forged["signatures"] = [{"keyid": kid(A), "signature": forged["signatures"][0]["signature"]},  # type: ignore[index]
                            *forged["signatures"]]  # type: ignore[misc]
    assert "does not verify" in refusal([forged])


def test_an_offline_agent_catches_up_through_a_chain() -> None:
    chain = [rotation(1, [B], [A, B]), rotation(2, [C], [B, C], revoked=(kid(A),))]
    state = accept(chain)
    assert (state.version, state.key_ids(), state.revoked) == (2, [kid(C)], frozenset({kid(A)}))
    assert [key_id(k) for k in state.retired] == [kid(B)]  # rotated out, not revoked


def test_a_replayed_older_chain_is_a_rollback() -> None:
    state = accept([rotation(1, [B], [A, B]), rotation(2, [C], [B, C])])
    assert refusal([rotation(1, [B], [A, B])], state).startswith("rollback: rotation 1 is not newer than")


def test_a_rotated_out_key_moves_nothing() -> None:
    state = accept([rotation(1, [B], [A, B])])
    assert "not signed by a key this agent trusts" in refusal([rotation(2, [X], [A, X])], state)


def test_a_revoked_key_is_never_trusted_again() -> None:
    state = accept([rotation(1, [B], [A, B], revoked=(kid(A),))])
    assert refusal([rotation(2, [A, B], [A, B])], state).startswith(f"revoked: the rotation trusts key {kid(A)}")


def test_the_newest_link_must_not_have_expired_older_ones_may() -> None:
    assert refusal([rotation(1, [B], [A, B], days=-1)]).startswith("malformed")  # expires before created
    old = rotation(1, [B], [A, B], days=0)
    assert refusal([old]).startswith("expired")
    assert accept([old, rotation(2, [C], [B, C])]).version == 2


@pytest.mark.parametrize("payload", [
    b"", b"junk", b"[]", b'{"rotations": []}', b'{"rotations": [1]}', b'{"rotations": "x"}',
    b'{"rotations": [{"signed": "{}", "signatures": []}]}', b"[" * 100_000, b"{" * 2_000_000,
    sign("{}", A),  # a manifest-style envelope signed by the trusted key is no rotation
])
def test_garbage_is_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(UpdateRejected):
        apply_chain(TrustState.root(A.public_key()), parse_chain(payload), fleet="default", now=NOW)


def test_another_fleets_rotation_is_refused() -> None:
    assert refusal([rotation(1, [B], [A, B], fleet="other")]).startswith("wrong_fleet")


# -- the agent's trust store ----------------------------------------------------------------------


def test_the_trust_store_persists_and_verifies_again_from_the_root(tmp_path: Path) -> None:
    store = TrustStore(tmp_path, A.public_key(), fleet="default", clock=NOW.timestamp)
    assert store.on_message(chain_bytes([rotation(1, [B], [A, B])]))
    assert [key_id(k) for k in store.trusted_keys()] == [kid(B)]
    assert [key_id(k) for k in store.trusted_keys(stored=True)] == [kid(B), kid(A)]  # installed before: still good
    with pytest.raises(UpdateRejected):
        verify(sign("manifest", A), store)
    assert verify(sign("manifest", B), store) == "manifest"
    again = TrustStore(tmp_path, A.public_key(), fleet="default", clock=NOW.timestamp)
    assert again.status() == {"version": 1, "trusted": [kid(B)], "retired": [kid(A)], "revoked": [], "last": None}
    with pytest.raises(StartupError, match="does not verify from model.trusted_public_key"):
        TrustStore(tmp_path, X.public_key(), fleet="default")  # reprovisioned with another key: says what to do


def test_a_refused_chain_changes_nothing_on_disk(tmp_path: Path) -> None:
    store = TrustStore(tmp_path, A.public_key(), fleet="default", clock=NOW.timestamp)
    assert not store.on_message(chain_bytes([rotation(1, [X], [X])]))
    assert not (tmp_path / TRUST_FILE).exists() and store.version == 0
    assert store.status()["last"]["result"] == "rejected"  # type: ignore[index]


def test_a_tampered_trust_file_stops_the_agent(tmp_path: Path) -> None:
    store = TrustStore(tmp_path, A.public_key(), fleet="default", clock=NOW.timestamp)
    store.on_message(chain_bytes([rotation(1, [B], [A, B])]))
    (tmp_path / TRUST_FILE).write_bytes(chain_bytes([rotation(1, [X], [X])]))
    with pytest.raises(StartupError):
        TrustStore(tmp_path, A.public_key(), fleet="default")


def test_no_key_material_in_the_status(tmp_path: Path) -> None:
    store = TrustStore(tmp_path, A.public_key(), fleet="default", clock=NOW.timestamp)
    envelope = rotation(1, [B], [A, B])
    store.on_message(chain_bytes([envelope]))
    raw_b = json.loads(str(envelope["signed"]))["keys"][0]["public_key"]
    assert raw_b not in json.dumps(store.status())


# -- the trainer ----------------------------------------------------------------------------------


def test_the_trainer_builds_what_agents_accept_and_refuses_a_key_the_fleet_no_longer_trusts() -> None:
    first = next_rotation([], "default", A, B, now=NOW)
    second = next_rotation([first], "default", B, C, revoke=(kid(A),), now=NOW)
    assert accept([first, second]).key_ids() == [kid(C)]
    with pytest.raises(BadInput, match="the fleet trusts"):
        next_rotation([first], "default", A, C, now=NOW)
    with pytest.raises(BadInput, match="cannot trust a key it revokes"):
        next_rotation([first], "default", B, C, keep_current=True, revoke=("current",), now=NOW)

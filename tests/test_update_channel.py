"""Attacks on the update channel, one per test, against the pure verification and state machine."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundle_factory import FILES, NOW, envelope, manifest_for
from edge_agent.errors import UpdateOrderError
from edge_agent.lifecycle import State
from edge_agent.update import UpdateSession
from shared.bundle import (
    MODEL_FILE,
    ChunkRejected,
    ExpiredManifest,
    IncompatibleContract,
    MalformedManifest,
    NotReleased,
    Revoked,
    RollbackRejected,
    TooLarge,
    WrongFleet,
    iso_utc,
    split_chunks,
)
from shared.signing import SignatureError, key_id, sign
from shared.topics import CANARY, STABLE

KEY = Ed25519PrivateKey.generate()


def session(env: bytes, active_version: int | None = None, max_bytes: int = 1 << 20) -> UpdateSession:
    return UpdateSession(env, KEY.public_key(), fleet="default", active_version=active_version, now=NOW,
                         max_bundle_bytes=max_bytes)


def test_valid_bundle_goes_through_every_step_in_order() -> None:
    s = session(envelope(KEY))
    with pytest.raises(UpdateOrderError):
        s.staged()  # chunks still missing
    for name, data in FILES.items():
        for i, chunk in enumerate(split_chunks(data, 4)):
            assert s.accept_chunk(name, i, chunk) is True
    assert s.accept_chunk(MODEL_FILE, 0, b"0123") is False  # a duplicate is harmless
    with pytest.raises(UpdateOrderError):
        s.activated()  # not staged yet
    s.staged()
    s.activated()
    assert s.step is State.ACTIVE
    with pytest.raises(UpdateOrderError):
        s.accept_chunk(MODEL_FILE, 0, b"0123")


def test_manifest_signed_by_an_unpinned_key_is_rejected() -> None:
    with pytest.raises(SignatureError, match="does not trust"):
        session(envelope(Ed25519PrivateKey.generate()))


def test_altered_manifest_fails_signature() -> None:
    env = json.loads(envelope(KEY))
    env["signed"] = env["signed"].replace('"version": 5', '"version": 6')
    with pytest.raises(SignatureError, match="does not verify"):
        session(json.dumps(env).encode())


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"[]", b'{"signed": 1}', b"x" * (2 << 20), b"[" * 100_000])
def test_garbage_envelopes_are_rejected(payload: bytes) -> None:
    with pytest.raises(SignatureError):
        session(payload)


def test_older_or_same_version_is_rollback() -> None:
    with pytest.raises(RollbackRejected):
        session(envelope(KEY), active_version=5)


def test_expired_manifest_is_refused() -> None:
    old = manifest_for(FILES, created=iso_utc(NOW - timedelta(days=60)), expires=iso_utc(NOW - timedelta(days=1)))
    with pytest.raises(ExpiredManifest):
        session(envelope(KEY, old))


def test_bundle_for_another_fleet_is_refused() -> None:
    with pytest.raises(WrongFleet):
        session(envelope(KEY, manifest_for(FILES, fleet="other")))


def test_incompatible_contract_is_refused() -> None:
    m = manifest_for(FILES)
    with pytest.raises(IncompatibleContract):
        session(envelope(KEY, replace(m, model=replace(m.model, contract_version=99))))


def test_bundle_larger_than_the_limit_is_refused() -> None:
    with pytest.raises(TooLarge):
        session(envelope(KEY), max_bytes=8)


def test_manifest_without_required_files_is_malformed() -> None:
    with pytest.raises(MalformedManifest):
        session(envelope(KEY, manifest_for({MODEL_FILE: b"x"})))


@pytest.mark.parametrize(
    ("name", "index", "data", "why"),
    [
        (MODEL_FILE, 0, b"0124", "sha256"),  # altered
        (MODEL_FILE, 0, b"012", "bytes"),  # truncated
        (MODEL_FILE, 2, b"89!", "bytes"),  # longer than declared
        (MODEL_FILE, 1, b"0123", "sha256"),  # reordered: chunk 0's bytes at index 1
        (MODEL_FILE, 3, b"x", "not part"),  # beyond the file
        ("other.bin", 0, b"0123", "not part"),  # a file of no manifest
    ],
)
def test_bad_chunks_are_rejected(name: str, index: int, data: bytes, why: str) -> None:
    s = session(envelope(KEY))
    with pytest.raises(ChunkRejected, match=why):
        s.accept_chunk(name, index, data)
    assert s.missing_count == 5  # nothing was taken


# -- issue 22: channel binding, revocation, reserved names, bounded numbers and depth ----------

def ring_session(env: bytes, channel: str, revoked: tuple[int, ...] = ()) -> UpdateSession:
    return UpdateSession(env, KEY.public_key(), fleet="default", active_version=None, now=NOW,
                         max_bundle_bytes=1 << 20, channel=channel, revoked=revoked)


def test_a_canary_version_is_refused_by_stable_agents() -> None:
    canary_only = envelope(KEY, manifest_for(FILES, channels=(CANARY,)))
    assert ring_session(canary_only, CANARY).version == 5
    with pytest.raises(NotReleased, match="released to canary, not to stable"):
        ring_session(canary_only, STABLE)
    # a stable release reaches canary agents too: they follow every later ring
    assert ring_session(envelope(KEY, manifest_for(FILES, channels=(STABLE,))), CANARY).version == 5
    with pytest.raises(NotReleased, match="no channel"):
        ring_session(envelope(KEY, manifest_for(FILES, channels=())), CANARY)


def test_a_revoked_version_is_refused() -> None:
    with pytest.raises(Revoked):
        ring_session(envelope(KEY), STABLE, revoked=(5,))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"channels": ["stable", "stable"]}, "twice"),
        ({"channels": ["beta"]}, "channels must be"),
        ({"revokes": [5]}, "earlier versions"),
        ({"revokes": [0]}, "revokes"),
        ({"version": 10**300}, "digits"),
        ({"version": 2**53}, "version must be"),
        ({"rollback_of": -1}, "rollback_of"),
        ({"files": {"manifest.envelope": {"sha256": "0" * 64, "length": 1, "chunks": ["0" * 64]}}}, "reserved"),
    ],
)
def test_signed_manifests_with_hostile_fields_are_malformed(changes: dict[str, object], why: str) -> None:
    data = json.loads(manifest_for(FILES).to_json())
    if "files" in changes:
        changes = {"files": {**data["files"], **changes["files"]}}  # type: ignore[dict-item]
    data.update(changes)
    with pytest.raises(MalformedManifest, match=why):
        session(sign(json.dumps(data), KEY))


def test_signed_manifest_nested_deep_or_with_huge_numbers_is_malformed() -> None:
    deep = manifest_for(FILES).to_json()[:-1] + ', "training": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(MalformedManifest, match="nested deeper"):
        session(sign(deep, KEY))


@pytest.mark.parametrize("payload", [b'{"signed": "x", "n": 1' + b"0" * 5000 + b"}", b'{"signed": "x", "n": 1e999}',
                                     b'{"a": NaN}', b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
def test_unsigned_envelopes_with_hostile_numbers_are_bad_signatures(payload: bytes) -> None:
    """With the trusted key's id in them (it is public), so they get past the cheap check and are parsed."""
    with pytest.raises(SignatureError, match="not JSON"):
        session(payload[:-1] + b', "keyid": "' + key_id(KEY.public_key()).encode() + b'"}')

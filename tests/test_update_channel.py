"""Attacks on the update channel, one per test, against the pure verification and state machine."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundle_factory import FILES, NOW, envelope, manifest_for
from edge_agent.update import Step, UpdateOrderError, UpdateSession
from shared.bundle import (
    MODEL_FILE,
    ChunkRejected,
    ExpiredManifest,
    IncompatibleContract,
    MalformedManifest,
    RollbackRejected,
    TooLarge,
    WrongFleet,
    iso_utc,
    split_chunks,
)
from shared.signing import SignatureError

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
    assert s.step is Step.ACTIVE
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

"""Builds signed manifests in memory for the update-channel tests (no TensorFlow needed)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.bundle import CATALOG_FILE, MODEL_FILE, Manifest, ModelContract, file_entry, iso_utc
from shared.signing import sign
from shared.topics import CHANNELS

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def manifest_for(files: dict[str, bytes], version: int = 5, chunk_size: int = 4, **changes: object) -> Manifest:
    manifest = Manifest(
        fleet="default",
        version=version,
        created=iso_utc(NOW - timedelta(hours=1)),
        expires=iso_utc(NOW + timedelta(days=30)),
        chunk_size=chunk_size,
        files={name: file_entry(data, chunk_size) for name, data in files.items()},
        model=ModelContract(variant="int8", signature="serving_default", history_length=3, top_k=2, num_items=4),
        channels=CHANNELS,
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


FILES = {MODEL_FILE: b"0123456789", CATALOG_FILE: b"abcdef"}


def envelope(key: Ed25519PrivateKey, manifest: Manifest | None = None) -> bytes:
    return sign((manifest or manifest_for(FILES)).to_json(), key)

"""The model bundle: chunking, and the checks an agent applies before trusting one.

A bundle is a few files (the .tflite model and the catalog) described by a signed manifest (see
:mod:`shared.manifest` for its schema and :mod:`shared.signing` for the envelope). The channels are
signed so that a manifest copied from one ring's topic to another's is refused. Everything here
takes and returns values; reading files, talking MQTT and loading models belong to the callers.
The manifest's names and the errors are importable from here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import datetime

from shared import SUPPORTED_CONTRACT_VERSIONS
from shared.errors import (
    BundleError,
    ChunkRejected,
    ExpiredManifest,
    IncompatibleContract,
    MalformedManifest,
    NotReleased,
    NotTargeted,
    Revoked,
    RollbackRejected,
    TooLarge,
    WrongFleet,
)
from shared.manifest import (
    CATALOG_FILE,
    CHUNK_SIZE,
    ENVELOPE_FILE,
    MAX_REVOKES,
    MAX_VERSION,
    MODEL_FILE,
    MODEL_VARIANTS,
    REQUIRED_FILES,
    RESERVED_NAMES,
    SCHEMA,
    FileEntry,
    Manifest,
    ModelContract,
    iso_utc,
    parse_manifest,
    parse_time,
)
from shared.topics import CHANNELS

__all__ = [
    "CATALOG_FILE", "CHUNK_SIZE", "ENVELOPE_FILE", "MAX_REVOKES", "MAX_VERSION", "MODEL_FILE", "MODEL_VARIANTS",
    "REQUIRED_FILES", "RESERVED_NAMES", "SCHEMA", "BundleError", "ChunkRejected", "ExpiredManifest", "FileEntry",
    "IncompatibleContract", "MalformedManifest", "Manifest", "ModelContract", "NotReleased", "NotTargeted",
    "Revoked", "RollbackRejected", "TooLarge", "WrongFleet", "check_acceptable", "check_contract", "check_file",
    "file_entry", "iso_utc", "parse_manifest", "sha256_hex", "split_chunks",
]


#: History-only items a model may declare (a chain's whole catalogue beside a store's assortment).
MAX_HISTORY_ONLY_ITEMS = 10_000_000


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_chunks(data: bytes, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """The chunks of a file; an empty file is one empty chunk."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def file_entry(data: bytes, chunk_size: int = CHUNK_SIZE) -> FileEntry:
    return FileEntry(
        sha256=sha256_hex(data),
        length=len(data),
        chunks=tuple(sha256_hex(c) for c in split_chunks(data, chunk_size)),
    )



def check_contract(model: ModelContract, supported_variants: tuple[str, ...] = MODEL_VARIANTS,
                   supported_versions: tuple[int, ...] = SUPPORTED_CONTRACT_VERSIONS) -> None:
    """``supported_versions``: the contract versions this agent drives (an older agent: fewer)."""
    if model.contract_version not in supported_versions:
        raise IncompatibleContract(
            f"model contract version {model.contract_version} is not one of {supported_versions}"
        )
    if model.variant not in supported_variants:
        raise IncompatibleContract(f"model variant {model.variant!r} is not one of {supported_variants}")
    if not (1 <= model.history_length <= 1000 and 1 <= model.top_k <= model.num_items):
        raise IncompatibleContract("history_length or top_k is out of range")
    if not 0 <= model.history_only_items <= MAX_HISTORY_ONLY_ITEMS:
        raise IncompatibleContract(f"history_only_items must be from 0 to {MAX_HISTORY_ONLY_ITEMS}")


def check_acceptable(
    manifest: Manifest,
    *,
    fleet: str,
    active_version: int | None,
    now: datetime,
    max_bundle_bytes: int,
    device_id: str | None = None,
    rings: Collection[str] = CHANNELS,
    revoked: Collection[int] = (),
) -> None:
    """Raise the BundleError that says why this agent must not install ``manifest``.

    ``rings``: the channels the agent follows (its own and every later one); the manifest must be
    released to one of them. ``revoked``: versions later releases revoked.
    """
    if manifest.fleet != fleet:
        raise WrongFleet(f"bundle is for fleet {manifest.fleet!r}, this agent is in {fleet!r}")
    if manifest.targets and device_id not in manifest.targets:
        raise NotTargeted(f"version {manifest.version} targets {len(manifest.targets)} other devices")
    check_contract(manifest.model)
    if parse_time(manifest.expires, "expires") <= now:
        raise ExpiredManifest(f"manifest expired at {manifest.expires}")
    if active_version is not None and manifest.version <= active_version:
        raise RollbackRejected(
            f"version {manifest.version} is not newer than the active version {active_version}"
        )
    if not set(manifest.channels) & set(rings):
        released = ", ".join(manifest.channels) or "no channel"
        raise NotReleased(f"version {manifest.version} is released to {released}, not to {', '.join(rings)}")
    if manifest.version in revoked:
        raise Revoked(f"version {manifest.version} was revoked by a later release")
    if manifest.total_bytes > max_bundle_bytes:
        raise TooLarge(f"bundle of {manifest.total_bytes} bytes exceeds the limit of {max_bundle_bytes}")


def check_file(manifest: Manifest, name: str, data: bytes) -> None:
    """Raise ChunkRejected unless ``data`` is exactly the file the manifest lists as ``name``."""
    entry = manifest.files.get(name)
    if entry is None:
        raise ChunkRejected(f"file {name!r} is not in the manifest")
    if len(data) != entry.length or sha256_hex(data) != entry.sha256:
        raise ChunkRejected(f"file {name!r} does not match its length and sha256 in the manifest")

"""The model bundle: manifest schema, chunking, and the checks an agent applies before trusting one.

A bundle is a few files (the .tflite model and the catalog) described by a manifest. The manifest
lists every file's length and sha256 and the sha256 of each of its chunks, carries a version, a
fleet, a validity window, the model's input/output contract, the rollout rings (channels) the
version is released to and the versions it revokes, and travels signed (see :mod:`shared.signing`).
The channels are signed so that a manifest copied from one ring's topic to another's is refused.
Everything here takes and returns values; reading files, talking MQTT and loading models belong
to the callers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from shared import CONTRACT_VERSION, SUPPORTED_CONTRACT_VERSIONS
from shared.bounded_json import JsonRejected, loads
from shared.topics import CHANNELS, check_name

SCHEMA = "edge-rec.manifest/1"
CHUNK_SIZE = 256 * 1024
MODEL_FILE = "model.tflite"
CATALOG_FILE = "catalog.json"
ENVELOPE_FILE = "manifest.envelope"  # the signed manifest, beside the files of a bundle
REQUIRED_FILES = (MODEL_FILE, CATALOG_FILE)
#: Names the bundle uses itself (beside its files on disk): no manifest may list them as files.
RESERVED_NAMES = frozenset({ENVELOPE_FILE})
#: Versions are positive and below 2**53 (exact in JSON everywhere; 16 digits as a folder name).
MAX_VERSION = 2**53 - 1
#: Versions one manifest may revoke.
MAX_REVOKES = 256
MODEL_VARIANTS = ("int8", "float16", "float32")


class BundleError(ValueError):
    """Remote data is not acceptable as a bundle. ``reason`` is a short machine-readable code."""

    reason = "invalid"


class MalformedManifest(BundleError):
    reason = "malformed_manifest"


class WrongFleet(BundleError):
    reason = "wrong_fleet"


class IncompatibleContract(BundleError):
    reason = "incompatible_contract"


class ExpiredManifest(BundleError):
    reason = "expired"


class RollbackRejected(BundleError):
    reason = "rollback"


class NotTargeted(BundleError):
    reason = "not_targeted"


class TooLarge(BundleError):
    reason = "too_large"


class ChunkRejected(BundleError):
    reason = "chunk_rejected"


class NotReleased(BundleError):
    """The version is not released to the rollout ring of this agent (a manifest copied to the
    topic of another ring, e.g. a canary version replayed to stable agents)."""

    reason = "not_released"


class Revoked(BundleError):
    """A signed, later release revoked this version (an aborted rollout)."""

    reason = "revoked"


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    length: int
    chunks: tuple[str, ...]


@dataclass(frozen=True)
class ModelContract:
    """What the .tflite graph takes and returns; the agent refuses contracts it cannot drive."""

    variant: str
    signature: str
    history_length: int
    top_k: int
    num_items: int
    contract_version: int = CONTRACT_VERSION


@dataclass(frozen=True)
class Manifest:
    fleet: str
    version: int
    created: str
    expires: str
    chunk_size: int
    files: Mapping[str, FileEntry]
    model: ModelContract
    training: Mapping[str, object] = field(default_factory=dict)
    schema: str = SCHEMA
    #: Device ids that may install this version; empty: every device of the fleet.
    targets: tuple[str, ...] = ()
    #: Set on a rollback instruction: the earlier version whose files this version re-delivers.
    rollback_of: int | None = None
    #: Rollout rings this version is released to; an agent refuses it unless it follows one of them.
    channels: tuple[str, ...] = ()
    #: Earlier versions this release withdraws (aborted rollouts): agents remember and refuse them.
    revokes: tuple[int, ...] = ()

    @property
    def expires_at(self) -> datetime:
        return _parse_time(self.expires, "expires")

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["files"] = {name: asdict(entry) for name, entry in self.files.items()}
        return data

    @property
    def total_bytes(self) -> int:
        return sum(f.length for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True)


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


def iso_utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object, name: str) -> datetime:
    try:
        parsed = datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise MalformedManifest(f"{name} must be UTC time as YYYY-MM-DDTHH:MM:SSZ") from None
    return parsed.replace(tzinfo=UTC)


def _field(data: Mapping[str, object], key: str, where: str) -> object:
    if key not in data:
        raise MalformedManifest(f"{where}{key} is missing")
    return data[key]


def _int(data: Mapping[str, object], key: str, where: str = "") -> int:
    value = _field(data, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedManifest(f"{where}{key} must be an integer")
    return value


def _version(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VERSION:
        raise MalformedManifest(f"{what} must be an integer from 1 to {MAX_VERSION}")
    return value


def _channels(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(c, str) and c in CHANNELS for c in value):
        raise MalformedManifest(f"channels must be a list of {', '.join(CHANNELS)}")
    if len(set(value)) != len(value):
        raise MalformedManifest("channels lists a channel twice")
    return tuple(value)


def _str(data: Mapping[str, object], key: str, where: str = "") -> str:
    value = _field(data, key, where)
    if not isinstance(value, str):
        raise MalformedManifest(f"{where}{key} must be a string")
    return value


def _dict(data: Mapping[str, object], key: str, where: str = "") -> dict[str, object]:
    value = _field(data, key, where)
    if not isinstance(value, dict):
        raise MalformedManifest(f"{where}{key} must be an object")
    return value


def _list(data: Mapping[str, object], key: str, where: str = "") -> list[object]:
    value = _field(data, key, where)
    if not isinstance(value, list):
        raise MalformedManifest(f"{where}{key} must be a list")
    return value


def _hex_digest(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise MalformedManifest(f"{where} must be a lowercase sha256 hex digest")
    return value


def parse_manifest(text: str) -> Manifest:
    """Parse and structurally validate manifest JSON (already signature-verified)."""
    try:
        data = loads(text)
    except JsonRejected as e:
        raise MalformedManifest(f"manifest is not acceptable JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedManifest("manifest must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise IncompatibleContract(f"manifest schema {str(data.get('schema'))[:40]!r} is not {SCHEMA!r}")
    chunk_size = _int(data, "chunk_size")
    if not 1 <= chunk_size <= CHUNK_SIZE:
        raise MalformedManifest(f"chunk_size must be between 1 and {CHUNK_SIZE}")
    files: dict[str, FileEntry] = {}
    for name, raw in _dict(data, "files").items():
        try:
            check_name(name, "file name")
        except ValueError as e:
            raise MalformedManifest(str(e)) from None
        if name in RESERVED_NAMES:
            raise MalformedManifest(f"file name {name!r} is reserved for the bundle itself")
        if not isinstance(raw, dict):
            raise MalformedManifest(f"files.{name} must be an object")
        where = f"files.{name}."
        length = _int(raw, "length", where)
        chunks = _list(raw, "chunks", where)
        expected = max(1, -(-length // chunk_size))
        if length < 0 or len(chunks) != expected:
            raise MalformedManifest(f"files.{name} lists {len(chunks)} chunks for {length} bytes")
        files[name] = FileEntry(
            sha256=_hex_digest(raw.get("sha256"), f"{where}sha256"),
            length=length,
            chunks=tuple(_hex_digest(c, f"{where}chunks[]") for c in chunks),
        )
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        raise MalformedManifest(f"manifest lacks required files: {', '.join(missing)}")
    raw_model = _dict(data, "model")
    try:
        model = ModelContract(
            variant=_str(raw_model, "variant", "model."),
            signature=_str(raw_model, "signature", "model."),
            history_length=_int(raw_model, "history_length", "model."),
            top_k=_int(raw_model, "top_k", "model."),
            num_items=_int(raw_model, "num_items", "model."),
            contract_version=_int(raw_model, "contract_version", "model."),
        )
    except MalformedManifest as e:
        raise IncompatibleContract(str(e)) from None
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise MalformedManifest("training must be an object")
    targets = data.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise MalformedManifest("targets must be a list of device ids")
    version = _version(_field(data, "version", ""), "version")
    rollback_of = data.get("rollback_of")
    if rollback_of is not None:
        _version(rollback_of, "rollback_of")
    revokes = data.get("revokes", [])
    if not isinstance(revokes, list) or len(revokes) > MAX_REVOKES:
        raise MalformedManifest(f"revokes must be a list of at most {MAX_REVOKES} versions")
    for revoked in revokes:
        if _version(revoked, "revokes[]") >= version:
            raise MalformedManifest("a version can only revoke earlier versions")
    manifest = Manifest(
        fleet=_str(data, "fleet"),
        version=version,
        created=_str(data, "created"),
        expires=_str(data, "expires"),
        chunk_size=chunk_size,
        files=files,
        model=model,
        training=training,
        targets=tuple(targets),
        rollback_of=rollback_of,
        channels=_channels(data.get("channels", [])),
        revokes=tuple(revokes),
    )
    if _parse_time(manifest.expires, "expires") <= _parse_time(manifest.created, "created"):
        raise MalformedManifest("expires must be after created")
    return manifest


def check_contract(model: ModelContract, supported_variants: tuple[str, ...] = MODEL_VARIANTS) -> None:
    if model.contract_version not in SUPPORTED_CONTRACT_VERSIONS:
        raise IncompatibleContract(
            f"model contract version {model.contract_version} is not one of {SUPPORTED_CONTRACT_VERSIONS}"
        )
    if model.variant not in supported_variants:
        raise IncompatibleContract(f"model variant {model.variant!r} is not one of {supported_variants}")
    if not (1 <= model.history_length <= 1000 and 1 <= model.top_k <= model.num_items):
        raise IncompatibleContract("history_length or top_k is out of range")


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
    if _parse_time(manifest.expires, "expires") <= now:
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

"""The signed manifest of a bundle: its schema, its data types and the parser of its JSON.

The manifest lists every file's length and sha256 and the sha256 of each of its chunks, carries a
version, a fleet, a validity window, the model's input/output contract, the rollout rings
(channels) the version is released to and the versions it revokes. :func:`parse_manifest` checks
its structure only; whether an agent may install it is :func:`shared.bundle.check_acceptable`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from shared import CONTRACT_VERSION
from shared.bounded_json import loads
from shared.errors import IncompatibleContract, JsonRejected, MalformedManifest
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


#: Origin URLs one file may list, and the longest URL.
MAX_URLS, MAX_URL_LENGTH = 8, 2048


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    length: int
    chunks: tuple[str, ...]
    #: Where the whole file may also be fetched (http(s), Range requests per chunk; an origin such
    #: as object storage or a CDN, not trusted: every chunk is still checked against ``chunks``).
    #: Left out of the JSON when empty; agents that predate it ignore the key (and use MQTT).
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelContract:
    """What the .tflite graph takes and returns; the agent refuses contracts it cannot drive."""

    variant: str
    signature: str
    history_length: int
    top_k: int
    num_items: int
    contract_version: int = CONTRACT_VERSION
    #: Items the graph reads in histories but never returns (a store's assortment bundle: items the
    #: store does not sell); their history indices follow the ``num_items`` ranked ones. Agents
    #: that predate it ignore them (they read only the ranked items in histories): no new contract.
    history_only_items: int = 0


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
        return parse_time(self.expires, "expires")

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["files"] = {name: _entry_dict(entry) for name, entry in self.files.items()}
        return data

    @property
    def total_bytes(self) -> int:
        return sum(f.length for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True)



def _entry_dict(entry: FileEntry) -> dict[str, object]:
    data = asdict(entry)
    if not entry.urls:
        del data["urls"]  # a manifest without origin is byte for byte what it was before urls existed
    return data


def iso_utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, name: str) -> datetime:
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



def check_origin_url(url: object, where: str = "url") -> str:
    """An absolute http(s) URL of a whole file: a host, no user or password, no fragment."""
    problem = f"{where} must be an absolute http:// or https:// URL of at most {MAX_URL_LENGTH} characters"
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or any(c <= " " or c == "\x7f" for c in url):
        raise MalformedManifest(problem)
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018  (a port that is no number raises)
    except ValueError:
        raise MalformedManifest(problem) from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.fragment or "@" in parsed.netloc:
        raise MalformedManifest(f"{problem}, with a host and no user or fragment")
    return url


def _urls(raw: Mapping[str, object], where: str) -> tuple[str, ...]:
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or len(urls) > MAX_URLS:
        raise MalformedManifest(f"{where}urls must be a list of at most {MAX_URLS} URLs")
    return tuple(check_origin_url(u, f"{where}urls[]") for u in urls)


def _files(raw_files: dict[str, object], chunk_size: int) -> dict[str, FileEntry]:
    files: dict[str, FileEntry] = {}
    for name, raw in raw_files.items():
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
            urls=_urls(raw, where),
        )
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        raise MalformedManifest(f"manifest lacks required files: {', '.join(missing)}")
    return files


def _model(raw_model: dict[str, object]) -> ModelContract:
    try:
        return ModelContract(
            variant=_str(raw_model, "variant", "model."),
            signature=_str(raw_model, "signature", "model."),
            history_length=_int(raw_model, "history_length", "model."),
            top_k=_int(raw_model, "top_k", "model."),
            num_items=_int(raw_model, "num_items", "model."),
            contract_version=_int(raw_model, "contract_version", "model."),
            history_only_items=_int(raw_model, "history_only_items", "model.") if "history_only_items" in raw_model
            else 0,
        )
    except MalformedManifest as e:
        raise IncompatibleContract(str(e)) from None


def _revokes(data: Mapping[str, object], version: int) -> tuple[int, ...]:
    revokes = data.get("revokes", [])
    if not isinstance(revokes, list) or len(revokes) > MAX_REVOKES:
        raise MalformedManifest(f"revokes must be a list of at most {MAX_REVOKES} versions")
    for revoked in revokes:
        if _version(revoked, "revokes[]") >= version:
            raise MalformedManifest("a version can only revoke earlier versions")
    return tuple(revokes)


def _object(text: str) -> dict[str, object]:
    try:
        data = loads(text)
    except JsonRejected as e:
        raise MalformedManifest(f"manifest is not acceptable JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedManifest("manifest must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise IncompatibleContract(f"manifest schema {str(data.get('schema'))[:40]!r} is not {SCHEMA!r}")
    return data


def parse_manifest(text: str) -> Manifest:
    """Parse and structurally validate manifest JSON (already signature-verified)."""
    data = _object(text)
    chunk_size = _int(data, "chunk_size")
    if not 1 <= chunk_size <= CHUNK_SIZE:
        raise MalformedManifest(f"chunk_size must be between 1 and {CHUNK_SIZE}")
    files = _files(_dict(data, "files"), chunk_size)
    model = _model(_dict(data, "model"))
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise MalformedManifest("training must be an object")
    targets = data.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise MalformedManifest("targets must be a list of device ids")
    version = _version(_field(data, "version", ""), "version")
    raw_rollback_of = data.get("rollback_of")
    rollback_of = None if raw_rollback_of is None else _version(raw_rollback_of, "rollback_of")
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
        revokes=_revokes(data, version),
    )
    if parse_time(manifest.expires, "expires") <= parse_time(manifest.created, "created"):
        raise MalformedManifest("expires must be after created")
    return manifest

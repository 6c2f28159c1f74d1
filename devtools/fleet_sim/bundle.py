"""A signed bundle for the simulation: random model bytes, a valid catalog, a manifest whose file
entries carry origin URLs (``urls``, absolute URLs of the whole file), signed with the shared code."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import topics
from shared.bundle import CATALOG_FILE, CHUNK_SIZE, MODEL_FILE, Manifest, ModelContract, file_entry, iso_utc
from shared.catalog import Catalog, CatalogItem
from shared.signing import sign
from shared.topics import CHANNELS

FLEET = "default"
N_ITEMS = 100


@dataclass(frozen=True)
class SimBundle:
    version: int
    files: dict[str, bytes]
    envelope: bytes
    chunk_size: int

    @property
    def total_bytes(self) -> int:
        return sum(len(data) for data in self.files.values())

    def chunk_messages(self, prefix: str = topics.DEFAULT_PREFIX, fleet: str = FLEET) -> list[tuple[str, bytes]]:
        """(topic, payload) of every retained chunk, in file order, as ``cloud-trainer publish`` sends them."""
        return [
            (topics.chunk_topic(prefix, fleet, self.version, name, i // self.chunk_size), data[i : i + self.chunk_size])
            for name, data in self.files.items() for i in range(0, max(1, len(data)), self.chunk_size)
        ]

    def write_origin(self, root: Path, fleet: str = FLEET) -> None:
        """The origin's layout: ``<root>/<fleet>/<version>/<file>``."""
        folder = root / fleet / str(self.version)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)


def catalog_bytes(n_items: int = N_ITEMS) -> bytes:
    items = tuple(CatalogItem(f"item-{i}", f"Item {i}", "sim", 1.0) for i in range(n_items))
    return Catalog(items, tuple(range(min(10, n_items)))).to_bytes()


def build_bundle(key: Ed25519PrivateKey, model_bytes: int, version: int, origin_url: str | None,
                 chunk_size: int = CHUNK_SIZE, fleet: str = FLEET) -> SimBundle:
    """A bundle of ``model_bytes`` random model bytes; with ``origin_url`` (``https://host:port``),
    each file entry lists ``<origin_url>/<fleet>/<version>/<file>`` in ``urls``."""
    files = {MODEL_FILE: os.urandom(model_bytes), CATALOG_FILE: catalog_bytes()}
    now = datetime.now(UTC)
    manifest = Manifest(
        fleet=fleet, version=version, created=iso_utc(now - timedelta(minutes=5)),
        expires=iso_utc(now + timedelta(days=30)), chunk_size=chunk_size,
        files={name: file_entry(data, chunk_size) for name, data in files.items()},
        model=ModelContract(variant="int8", signature="serving_default", history_length=20, top_k=10,
                            num_items=N_ITEMS),
        channels=CHANNELS, training={"synthetic": True},
    )
    data = manifest.as_dict()
    if origin_url is not None:
        for name, entry in data["files"].items():  # type: ignore[attr-defined]
            entry["urls"] = [f"{origin_url.rstrip('/')}/{fleet}/{version}/{name}"]
    return SimBundle(version, files, sign(json.dumps(data, indent=1, sort_keys=True), key), chunk_size)

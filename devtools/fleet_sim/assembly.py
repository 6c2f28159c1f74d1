"""What a simulated agent does with a verified manifest: checks every chunk against the sha256 the
manifest lists, and each file's length and sha256 once complete, without keeping the model bytes
(thousands of agents share one machine); the catalog is kept and parsed at activation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from shared.bounded_json import loads
from shared.bundle import CATALOG_FILE, FileEntry, Manifest, sha256_hex
from shared.catalog import parse_catalog
from shared.errors import ChunkRejected


@dataclass
class FileAssembly:
    """One file of the bundle, fed chunk by chunk in any order; chunks ahead of the next wanted one
    wait in ``pending`` (rare: retained chunks arrive in subscription order)."""

    name: str
    entry: FileEntry
    chunk_size: int
    keep: bool = False
    next_index: int = 0
    pending: dict[int, bytes] = field(default_factory=dict)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    kept: bytearray = field(default_factory=bytearray)
    length: int = 0

    def expected_length(self, index: int) -> int:
        return max(0, min(self.chunk_size, self.entry.length - index * self.chunk_size))

    def add(self, index: int, data: bytes) -> bool:
        """Take chunk ``index``; False if it was already taken. ChunkRejected if it is not the chunk
        the manifest lists (wrong length or sha256, or an index out of range)."""
        if not 0 <= index < len(self.entry.chunks):
            raise ChunkRejected(f"{self.name} has no chunk {index}")
        if index < self.next_index or index in self.pending:
            return False
        if len(data) != self.expected_length(index) or sha256_hex(data) != self.entry.chunks[index]:
            raise ChunkRejected(f"chunk {index} of {self.name} does not match its sha256 in the manifest")
        self.pending[index] = data
        while self.next_index in self.pending:
            chunk = self.pending.pop(self.next_index)
            self.hasher.update(chunk)
            self.length += len(chunk)
            if self.keep:
                self.kept += chunk
            self.next_index += 1
        return True

    @property
    def complete(self) -> bool:
        return self.next_index == len(self.entry.chunks)

    def missing(self) -> list[int]:
        return [i for i in range(self.next_index, len(self.entry.chunks)) if i not in self.pending]

    def check(self) -> None:
        if self.length != self.entry.length or self.hasher.hexdigest() != self.entry.sha256:
            raise ChunkRejected(f"file {self.name} does not match its length and sha256 in the manifest")


class BundleAssembly:
    """Every file of one manifest's bundle."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.files = {name: FileAssembly(name, entry, manifest.chunk_size, keep=name == CATALOG_FILE)
                      for name, entry in manifest.files.items()}

    @property
    def complete(self) -> bool:
        return all(f.complete for f in self.files.values())

    def missing(self) -> list[tuple[str, int]]:
        return [(name, i) for name, f in self.files.items() for i in f.missing()]

    def activate(self) -> None:
        """The agent's checks before it would load the model (the one shortcut: no interpreter):
        every file's length and sha256, and the catalog parses for the model's contract."""
        for f in self.files.values():
            f.check()
        model = self.manifest.model
        parse_catalog(bytes(self.files[CATALOG_FILE].kept), model.num_items, model.history_only_items)


def origin_urls(signed_text: str) -> dict[str, list[str]]:
    """Each file's origin URLs (``files.<name>.urls``) from the verified manifest's JSON, read here
    so the simulation works whether or not :class:`shared.manifest.FileEntry` carries them; only
    https URLs are taken."""
    data = loads(signed_text)
    files = data.get("files") if isinstance(data, dict) else None
    urls: dict[str, list[str]] = {}
    for name, raw in (files or {}).items():
        listed = raw.get("urls") if isinstance(raw, dict) else None
        if isinstance(listed, list):
            urls[name] = [u for u in listed if isinstance(u, str) and u.startswith("https://")]
    return urls

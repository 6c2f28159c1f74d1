"""Model bundles on disk: staging, verified versions, and the atomic active-version pointer.

Layout under ``<data_dir>/models``::

    staging/<version>/<file>       chunks land here, never where an active model lives
    versions/<version>/<file>      only complete, verified bundles (moved in by one rename)
    versions/<version>/manifest.envelope
    active.json                    {"version": N, "previous": M}, replaced atomically

A kill -9 at any moment leaves ``active.json`` naming a complete version (or none yet).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edge_agent.durable_files import fsync_dir, write_atomic
from shared.bundle import ENVELOPE_FILE


class ModelStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "models"
        self.staging = self.root / "staging"
        self.versions = self.root / "versions"
        for d in (self.root, self.staging, self.versions):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._pointer = self.root / "active.json"

    # -- staging ---------------------------------------------------------------------------
    def staging_dir(self, version: int) -> Path:
        return self.staging / str(int(version))

    def write_chunk(self, version: int, name: str, offset: int, data: bytes) -> None:
        path = self.staging_dir(version) / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def read_staged(self, version: int, name: str) -> bytes:
        return (self.staging_dir(version) / name).read_bytes()

    def discard_staging(self, version: int) -> None:
        shutil.rmtree(self.staging_dir(version), ignore_errors=True)

    def promote(self, version: int, envelope: bytes) -> None:
        """Move a verified staging bundle into versions/ in one rename, durably."""
        staged = self.staging_dir(version)
        write_atomic(staged / ENVELOPE_FILE, envelope)
        for f in staged.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        target = self.versions / str(int(version))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        fsync_dir(self.versions)

    # -- versions and the pointer ----------------------------------------------------------
    def read_version(self, version: int) -> tuple[bytes, dict[str, bytes]]:
        """(envelope, {file name: bytes}) of an installed version."""
        folder = self.versions / str(int(version))
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ENVELOPE_FILE}
        return (folder / ENVELOPE_FILE).read_bytes(), files

    def pointer(self) -> tuple[int | None, int | None]:
        """(active version, previous version) as last recorded."""
        try:
            data = json.loads(self._pointer.read_bytes())
            return data.get("version"), data.get("previous")
        except (FileNotFoundError, ValueError, AttributeError):
            return None, None

    def set_active(self, version: int, previous: int | None) -> None:
        write_atomic(self._pointer, json.dumps({"version": version, "previous": previous}).encode())
        self.prune(keep={version} | ({previous} if previous is not None else set()))

    def prune(self, keep: set[int]) -> None:
        for d in self.versions.iterdir():
            if d.name.isdigit() and int(d.name) not in keep:
                shutil.rmtree(d, ignore_errors=True)

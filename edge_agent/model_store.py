"""Model bundles on disk: staging, verified versions, and the atomic active-version pointer.

Layout under ``<data_dir>/models``::

    staging/<version>/<file>       chunks land here, never where an active model lives
    staging/<version>/manifest.envelope   the signed manifest being received (for resuming)
    versions/<version>/<file>      only complete, verified bundles (moved in by one rename)
    versions/<version>/manifest.envelope
    active.json                    the lifecycle journal, replaced atomically: {"version": N,
                                   "previous": M, "loading": {"version": N, "attempts": K} while a
                                   new model is loaded, "trial": {"version": N, "starts": K} until it
                                   has served its trial, "refused": [N, ...] versions that killed
                                   the agent} (see edge_agent.journal_file)
    revoked.json                   [N, ...] versions a signed later release revoked (aborted rollouts)
    trash/                         versions being deleted (renamed here first, then removed)

A kill -9 at any moment leaves ``active.json`` naming a complete version (or none yet).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from edge_agent.durable_files import fsync_dir, write_atomic
from edge_agent.journal_file import JournalFile
from shared.bundle import ENVELOPE_FILE

#: Revoked versions remembered (a revoked version is older than the release that revoked it, so
#: the oldest entries matter least: a newer model refuses them as rollbacks anyway).
MAX_REVOKED = 4096


class ModelStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "models"
        self.staging = self.root / "staging"
        self.versions = self.root / "versions"
        for d in (self.root, self.staging, self.versions):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = JournalFile(self.root)

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

    def read_staged_chunk(self, version: int, name: str, offset: int, length: int) -> bytes:
        """Bytes of a staged file at ``offset`` (fewer, or none, where nothing was written yet)."""
        try:
            fd = os.open(self.staging_dir(version) / name, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def read_staged(self, version: int, name: str) -> bytes:
        return (self.staging_dir(version) / name).read_bytes()

    def write_staged_envelope(self, version: int, envelope: bytes) -> None:
        self.staging_dir(version).mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.staging_dir(version) / ENVELOPE_FILE, envelope)

    def staged_envelopes(self) -> dict[int, bytes]:
        """{version: signed manifest} of every unfinished download (unverified: check before use)."""
        found = {}
        for d in self.staging.iterdir():
            if d.name.isdigit() and (d / ENVELOPE_FILE).is_file():
                found[int(d.name)] = (d / ENVELOPE_FILE).read_bytes()
            elif d.is_dir():
                shutil.rmtree(d, ignore_errors=True)  # from before envelopes were kept: unusable
        return found

    def installed_file(self, sha256: str, length: int) -> bytes | None:
        """The bytes of an installed file with this sha256, if any version has one (to reuse)."""
        for folder in self.versions.iterdir():
            for f in folder.iterdir():
                if f.name != ENVELOPE_FILE and f.stat().st_size == length:
                    data = f.read_bytes()
                    if hashlib.sha256(data).hexdigest() == sha256:
                        return data
        return None

    def free_bytes(self) -> int:
        """Bytes free for the agent on the disk holding the models."""
        return shutil.disk_usage(self.root).free

    def staged_bytes(self, version: int) -> int:
        """Disk space the staged files of ``version`` take now."""
        folder = self.staging_dir(version)
        return sum(f.stat().st_blocks * 512 for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0

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
        if target.exists():  # left by a kill after this rename but before active.json named it
            self.prune(keep={v for v in self._installed() if v != version})
        os.replace(staged, target)
        fsync_dir(self.versions)

    # -- versions and the pointer ----------------------------------------------------------
    def read_version(self, version: int) -> tuple[bytes, dict[str, bytes]]:
        """(envelope, {file name: bytes}) of an installed version."""
        folder = self.versions / str(int(version))
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ENVELOPE_FILE}
        return (folder / ENVELOPE_FILE).read_bytes(), files

    # -- the journal (see edge_agent.journal_file): read and written by the updater ------------
    def begin_load(self, version: int) -> int:
        """Record that ``version`` is being loaded; returns how many loads of it began so far."""
        journal = self.journal.read().begin_load(version)
        self.journal.write(journal)
        return journal.load_attempts

    def interrupted_load(self) -> tuple[int, int] | None:
        """(version, attempts) of a load the process did not live to finish, if any."""
        journal = self.journal.read()
        return None if journal.loading is None else (journal.loading, journal.load_attempts)

    def refused(self) -> set[int]:
        """Versions refused for killing the agent while loading or on trial."""
        return set(self.journal.read().refused)

    def revoked(self) -> set[int]:
        try:
            return {int(v) for v in json.loads((self.root / "revoked.json").read_bytes())}
        except (FileNotFoundError, ValueError, TypeError):
            return set()

    def revoke(self, versions: Iterable[int]) -> None:
        """Remember revoked versions for good (the most recent MAX_REVOKED of them)."""
        known = self.revoked()
        merged = known | set(versions)
        if merged != known:
            kept = sorted(merged)[-MAX_REVOKED:]
            write_atomic(self.root / "revoked.json", json.dumps(kept).encode())

    def _installed(self) -> set[int]:
        return {int(d.name) for d in self.versions.iterdir() if d.name.isdigit()}

    def prune(self, keep: set[int]) -> None:
        """Delete versions not in ``keep``: each is first renamed out of versions/ in one step, so a
        kill in the middle never leaves a half-deleted version where installed ones live."""
        trash = self.root / "trash"
        trash.mkdir(exist_ok=True, mode=0o700)
        for d in self.versions.iterdir():
            if d.name.isdigit() and int(d.name) not in keep:
                os.replace(d, trash / f"{d.name}-{os.getpid()}-{time.monotonic_ns()}")
        shutil.rmtree(trash, ignore_errors=True)

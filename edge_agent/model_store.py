"""Model bundles on disk: staging, verified versions, and the atomic active-version pointer.

Layout under ``<data_dir>/models``::

    staging/<version>/<file>       chunks land here, never where an active model lives
    staging/<version>/manifest.envelope   the signed manifest being received (for resuming)
    versions/<version>/<file>      only complete, verified bundles (moved in by one rename)
    versions/<version>/manifest.envelope
    active.json                    {"version": N, "previous": M}, replaced atomically
    loading.json                   {"version": N, "attempts": K} while a new model is loaded
    refused.json                   [N, ...] versions that killed the agent while loading or on trial
    revoked.json                   [N, ...] versions a signed later release revoked (aborted rollouts)
    trial.json                     {"version": N, "starts": K} until version N has served its trial
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

    # -- models that crash the agent while loading -------------------------------------------
    def begin_load(self, version: int) -> int:
        """Record that ``version`` is being loaded; returns how many loads of it began so far."""
        attempts = 1
        try:
            marker = json.loads((self.root / "loading.json").read_bytes())
            if marker.get("version") == version:
                attempts = int(marker.get("attempts", 0)) + 1
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            pass
        write_atomic(self.root / "loading.json", json.dumps({"version": version, "attempts": attempts}).encode())
        return attempts

    def end_load(self) -> None:
        (self.root / "loading.json").unlink(missing_ok=True)

    def interrupted_load(self) -> tuple[int, int] | None:
        """(version, attempts) of a load the process did not live to finish, if any."""
        try:
            marker = json.loads((self.root / "loading.json").read_bytes())
            return int(marker["version"]), int(marker["attempts"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def start_trial(self, version: int) -> None:
        write_atomic(self.root / "trial.json", json.dumps({"version": version, "starts": 0}).encode())

    def count_trial_start(self, version: int) -> int | None:
        """Starts of ``version`` while on trial, this one included; None when it is not on trial."""
        return self._add_trial_starts(version, +1)

    def uncount_trial_start(self, version: int) -> None:
        """The start of ``version`` on trial ended in a clean stop: it does not count against it."""
        self._add_trial_starts(version, -1)

    def _add_trial_starts(self, version: int, delta: int) -> int | None:
        """Add ``delta`` to the trial's start count (never below 0); None when ``version`` is not on trial."""
        try:
            marker = json.loads((self.root / "trial.json").read_bytes())
            if marker.get("version") != version:
                return None
            starts = max(0, int(marker.get("starts", 0)) + delta)
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            return None
        write_atomic(self.root / "trial.json", json.dumps({"version": version, "starts": starts}).encode())
        return starts

    def trial_version(self) -> int | None:
        try:
            return int(json.loads((self.root / "trial.json").read_bytes())["version"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def end_trial(self) -> None:
        (self.root / "trial.json").unlink(missing_ok=True)

    def refused(self) -> set[int]:
        try:
            return {int(v) for v in json.loads((self.root / "refused.json").read_bytes())}
        except (FileNotFoundError, ValueError, TypeError):
            return set()

    def refuse(self, version: int) -> None:
        write_atomic(self.root / "refused.json", json.dumps(sorted(self.refused() | {version})).encode())

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

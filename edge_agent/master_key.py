"""The device master key: a 32-byte file with 0600 permissions (or a systemd credential).

The key never comes from the configuration file and is never logged. Under systemd,
``LoadCredential=edge-agent-master-key:...`` puts it in ``$CREDENTIALS_DIRECTORY``; otherwise the
configured path is used; ``EDGE_AGENT_MASTER_KEY`` (hex) overrides both. During a rotation the
new key waits in ``<path>.next`` until the keyring has been re-wrapped, then replaces ``<path>``;
a reader that finds the keyring re-wrapped before the rename looks in ``<path>.next`` (see
:mod:`edge_agent.key_rotation`).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from edge_agent.crypto_envelope import MASTER_KEY_BYTES
from edge_agent.durable_files import fsync_dir
from edge_agent.errors import MasterKeyError

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "edge-agent-master-key"
ENVIRONMENT_VARIABLE = "EDGE_AGENT_MASTER_KEY"


def resolve_path(configured: Path) -> Path:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        return Path(credentials) / CREDENTIAL_NAME
    return configured


def from_environment() -> bytes | None:
    """The key from ``EDGE_AGENT_MASTER_KEY`` (64 hex digits), if set."""
    text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"{ENVIRONMENT_VARIABLE} must be {2 * MASTER_KEY_BYTES} hex digits")
    return key


def next_path(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def write_new(path: Path) -> bytes:
    """Write a new random key to ``path`` (which must not exist) with mode 0600, durably."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = os.urandom(MASTER_KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)
    return key


def read(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MasterKeyError(f"master key file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(
            f"master key file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"master key file {path} must hold exactly {MASTER_KEY_BYTES} bytes")
    return key


def candidates(path: Path) -> list[bytes]:
    """The keys a reader may need: the current file, then a rotation's pending ``.next`` file."""
    found = []
    for candidate in (path, next_path(path)):
        if candidate.exists():
            found.append(read(candidate))
    return found

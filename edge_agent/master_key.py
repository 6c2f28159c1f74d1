"""Loading (or creating, on first start) the device master key from a 0600 file.

The key never comes from the configuration file. Under systemd, ``LoadCredential=`` puts it in
``$CREDENTIALS_DIRECTORY``; the configured path is used otherwise. The key is never logged.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from edge_agent.crypto_envelope import MASTER_KEY_BYTES

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "edge-agent-master-key"


class MasterKeyError(RuntimeError):
    """The master key file is unusable; the message says what to do."""


def resolve_path(configured: Path) -> Path:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        return Path(credentials) / CREDENTIAL_NAME
    return configured


def load_or_create(path: Path, *, create: bool = True) -> bytes:
    """The 32-byte master key at ``path``; a new random one is written (0600) if it is absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            raise MasterKeyError(f"master key file {path} does not exist") from None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = os.urandom(MASTER_KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        log.info("created a new master key at %s", path)
        return key
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(
            f"master key file {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"master key file {path} must hold exactly {MASTER_KEY_BYTES} bytes")
    return key

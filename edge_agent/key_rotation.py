"""Opening the device master key for the history store, and rotating it without downtime.

Rotation, crash-safe at every step::

    1. write a new random key to <key>.next (0600)
    2. re-wrap every data key and the lookup secret under it, in one keyring transaction
    3. rename <key>.next over <key>

A running agent that meets the re-wrapped keyring between 2 and 3 finds the new key in
<key>.next. After a crash, :func:`finish_pending` completes step 3 (the keyring was re-wrapped)
or discards <key>.next (it was not).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from edge_agent import master_key
from edge_agent.crypto_envelope import MasterKey
from edge_agent.durable_files import fsync_dir
from edge_agent.errors import MasterKeyError
from edge_agent.history_store import KEYRING_FILE, stores_exist
from edge_agent.keyring import Keyring

log = logging.getLogger(__name__)


def key_loader(data_dir: Path, key_path: Path) -> Callable[[], list[bytes]]:
    """Loader of candidate master keys; a key is created only for a device with no history yet."""
    from_env = master_key.from_environment()
    if from_env is not None:
        return lambda: [from_env]
    pending = master_key.next_path(key_path)
    if not key_path.exists() and not pending.exists():
        if stores_exist(data_dir):
            raise MasterKeyError(
                f"master key file {key_path} is missing, but {data_dir} holds encrypted history: "
                "restore the key file (the history cannot be read without it)"
            )
        master_key.write_new(key_path)
        log.info("created a new master key at %s", key_path)
    return lambda: master_key.candidates(key_path)


def finish_pending(keyring: Keyring, key_path: Path) -> None:
    pending = master_key.next_path(key_path)
    if not pending.exists():
        return
    if MasterKey(master_key.read(pending)).check == keyring.master_check:
        os.replace(pending, key_path)
        log.info("completed an interrupted master-key rotation")
    else:
        pending.unlink()
        log.info("discarded the key of an interrupted master-key rotation (the keyring was not re-wrapped)")
    fsync_dir(key_path.parent)


def rotate(data_dir: Path, key_path: Path) -> int:
    """Rotate the master key of the store in ``data_dir``; returns how many user keys were re-wrapped."""
    if master_key.from_environment() is not None or master_key.resolve_path(key_path) != key_path:
        raise MasterKeyError(
            "the master key comes from the environment or a systemd credential; rotate it there instead"
        )
    keyring = Keyring(data_dir / KEYRING_FILE, key_loader(data_dir, key_path))
    try:
        finish_pending(keyring, key_path)
        new_key = master_key.write_new(master_key.next_path(key_path))
        count = keyring.rotate(new_key)
        finish_pending(keyring, key_path)
    finally:
        keyring.close()
    return count

"""The full-disk policy of model updates: a download starts only if the bundle fits with room to
spare for shoppers' events; one that runs out of space is freed and waits for room."""

from __future__ import annotations

import errno

from edge_agent.lifecycle import WaitingForSpace
from edge_agent.model_store import ModelStore
from edge_agent.update import UpdateSession
from shared.bundle import Manifest

#: Space a model download leaves free on the data disk, so shoppers' events can still be stored.
STAGING_HEADROOM_BYTES = 16 * 1024 * 1024


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def needed_bytes(manifest: Manifest) -> int:
    """Free bytes that staging ``manifest`` from scratch takes, headroom included."""
    return manifest.total_bytes + STAGING_HEADROOM_BYTES


def check_room(store: ModelStore, session: UpdateSession) -> None:
    """Refuse to start staging a bundle that would leave less than the headroom free."""
    free = store.free_bytes() + store.staged_bytes(session.version)
    if free < needed_bytes(session.manifest):
        raise OSError(errno.ENOSPC, f"{free} bytes free")


def waiting_for_space(session: UpdateSession) -> WaitingForSpace:
    return WaitingForSpace(session.envelope, session.version, needed_bytes(session.manifest))


def no_room_reason(waiting: WaitingForSpace, total_bytes: int, free: int) -> str:
    return (
        f"disk_full: version {waiting.version} needs {waiting.needed // 2**20} MiB free to stage "
        f"({total_bytes} bytes plus {STAGING_HEADROOM_BYTES // 2**20} MiB left for history), "
        f"{free // 2**20} MiB are; the active model keeps serving and the update is retried once there is room"
    )

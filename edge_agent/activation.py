"""Activating a staged bundle: load it (the journal knows, should the interpreter kill the
process), install it, point the journal to it and start its trial in one write, swap it in."""

from __future__ import annotations

import logging
import time

from edge_agent.bundle_loader import load_bundle
from edge_agent.disk_space import is_disk_full, no_room_reason, waiting_for_space
from edge_agent.errors import ModelLoadError
from edge_agent.loaded_model import LoadedModel
from edge_agent.update import UpdateSession
from edge_agent.update_context import UpdateContext
from edge_agent.update_report import Outcome
from shared.errors import BundleError

log = logging.getLogger("edge_agent.updater")


def out_of_space(ctx: UpdateContext, session: UpdateSession, error: OSError) -> None:
    """Give up an update the disk has no room for: free what it staged, keep serving the active
    model, and wait for space (see ``Updater.retry_when_room``). Other I/O errors propagate."""
    if not is_disk_full(error):
        raise error
    ctx.store.discard_staging(session.version)
    waiting = waiting_for_space(session)
    ctx.lifecycle.wait_for_space(waiting)
    free = ctx.store.free_bytes()
    ctx.reporter.report(session.version, Outcome.FAILED, no_room_reason(waiting, session.manifest.total_bytes, free))


def _end_load(ctx: UpdateContext) -> None:
    """Clear the load marker after a failed load (the staging is freed first: there is room)."""
    try:
        ctx.persist(ctx.lifecycle.journal.end_load())
    except OSError as e:
        log.warning("could not clear the load marker (a restart will try the model again): %s", e)


def _give_up_for_space(ctx: UpdateContext, session: UpdateSession, error: OSError) -> None:
    if not is_disk_full(error):
        _end_load(ctx)
        raise error
    out_of_space(ctx, session, error)
    _end_load(ctx)


def _load(ctx: UpdateContext, session: UpdateSession) -> LoadedModel | None:
    """The staged bundle loaded and self-tested, or None (reported) if it cannot be."""
    lifecycle, version = ctx.lifecycle, session.version
    try:
        ctx.persist(lifecycle.begin_load())  # if the interpreter kills the process, boot() will know
        files = {name: ctx.store.read_staged(version, name) for name in session.manifest.files}
        return load_bundle(session.manifest, files, ctx.policy.num_threads)  # verify, load, self-test
    except (OSError, BundleError, ModelLoadError) as e:
        if isinstance(e, OSError) and is_disk_full(e):
            _give_up_for_space(ctx, session, e)
            return None
        journal = lifecycle.load_failed()
        ctx.store.discard_staging(version)
        ctx.persist(journal)
        ctx.reporter.report(version, Outcome.FAILED, f"{getattr(e, 'reason', 'load_failed')}: {e}")
        return None


def activate(ctx: UpdateContext) -> None:
    """Activate the download whose chunks are all in."""
    session = ctx.lifecycle.staged()
    model = _load(ctx, session)
    if model is None:
        return
    version, previous = session.version, ctx.active.version
    try:
        ctx.store.promote(version, session.envelope)
        with ctx.lock:  # one write: pointer, trial begun, load ended
            ctx.persist(ctx.lifecycle.journal.activated(version, previous))
            ctx.lifecycle.activated(time.monotonic())
        ctx.keep_pointed()
    except OSError as e:
        _give_up_for_space(ctx, session, e)
        return
    ctx.active.replace(model, ctx.store.revoked())
    origin = (f" ({session.from_origin} from the origin, {session.received - session.from_origin} over MQTT)"
              if any(entry.urls for entry in session.manifest.files.values()) else "")
    ctx.reporter.report(version, Outcome.ACTIVATED, f"verified, loaded and self-tested; {session.received} "
                                                    f"chunks received{origin}, {session.reused} reused from disk")

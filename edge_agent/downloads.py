"""Driving downloads: a signed manifest opens one, verified chunks fill it (from the broker, or
reused from disk: staged before a restart, or in an installed version), a complete one activates.

Called from one worker thread (see :mod:`edge_agent.mqtt_link`), never concurrently.
"""

from __future__ import annotations

import logging

from edge_agent.activation import activate, out_of_space
from edge_agent.disk_space import check_room
from edge_agent.errors import ModelCrashed
from edge_agent.model_store import ModelStore
from edge_agent.update import UpdateSession
from edge_agent.update_context import UpdateContext
from edge_agent.update_report import Outcome
from shared.errors import BundleError, SignatureError, UpdateRejected

log = logging.getLogger("edge_agent.updater")


def open_session(ctx: UpdateContext, envelope: bytes) -> UpdateSession:
    """A download of the bundle ``envelope`` announces; raises UpdateRejected if it must not be."""
    policy, lifecycle = ctx.policy, ctx.lifecycle
    session = UpdateSession(
        envelope,
        policy.trusted_key,
        fleet=policy.fleet,
        active_version=ctx.active.version,
        now=policy.clock(),
        max_bundle_bytes=policy.max_bundle_bytes,
        device_id=policy.device_id,
        channel=policy.channel,
        revoked=ctx.store.revoked(),
    )
    if lifecycle.is_refused(session.version):
        raise ModelCrashed(f"version {session.version} crashed the agent while loading before; refused")
    if session.manifest.revokes:
        # remembered before anything else can fail: a replay of a revoked version is refused
        # even if this release never activates (disk full, bad model)
        ctx.store.revoke(session.manifest.revokes)
        if lifecycle.session is not None and lifecycle.session.version in session.manifest.revokes:
            ctx.store.discard_staging(lifecycle.session.version)
            lifecycle.drop()
    return session


def reuse_from_disk(store: ModelStore, session: UpdateSession) -> None:
    """Take every chunk already on disk that verifies: staged earlier, or in an installed version."""
    version, size = session.version, session.manifest.chunk_size
    for name, index in session.missing():
        data = store.read_staged_chunk(version, name, index * size, session.chunk_length(name, index))
        if session.reuse(name, index, data):
            session.reused += 1
    for name, entry in session.manifest.files.items():
        if not any(n == name for n, _ in session.missing()):
            continue
        installed = store.installed_file(entry.sha256, entry.length)
        if installed is None:
            continue
        for index in range(len(entry.chunks)):
            chunk = installed[index * size : index * size + session.chunk_length(name, index)]
            if session.reuse(name, index, chunk):
                store.write_chunk(version, name, index * size, chunk)
                session.reused += 1


def resume_staged(ctx: UpdateContext) -> None:
    """At boot: go on with the newest unfinished download from what is already staged."""
    staged = ctx.store.staged_envelopes()
    for version in sorted(staged):
        if version != max(staged):
            ctx.store.discard_staging(version)
            continue
        try:
            session = open_session(ctx, staged[version])
        except UpdateRejected as e:
            log.info("dropping the staged download of version %s: %s", version, e)
            ctx.store.discard_staging(version)
            continue
        reuse_from_disk(ctx.store, session)
        ctx.lifecycle.receive(session)
        reason = (f"resumed: {session.reused} of {session.chunk_count} chunks verified from disk, "
                  f"{session.missing_count} to fetch")
        ctx.reporter.report(version, Outcome.RECEIVING, reason)
        if session.complete:
            activate(ctx)


def _active_envelope(ctx: UpdateContext) -> bytes | None:
    version = ctx.active.version
    if version is None:
        return None
    try:
        return ctx.store.read_version(version)[0]
    except OSError:
        return None


def _rejected(ctx: UpdateContext, envelope: bytes, error: UpdateRejected, later_ring: bool,
              device_topic: bool) -> None:
    current = ctx.active.current
    if current is not None and error.reason == "rollback" and (
        later_ring or envelope == _active_envelope(ctx) or device_topic != bool(current.manifest.targets)
    ):
        # the retained manifest of the model we already run, of a later ring, or of the other
        # kind of topic than the one the running model came from (the fleet's channel while a
        # version targeted at this device runs, or the reverse): the newest of them runs
        return
    reason = f"{error.reason}: {error}"
    if ctx.reporter.repeats_rejection(reason):
        ctx.reporter.discard(f"repeated: {reason}")  # a replayed signed manifest, again and again
    else:
        ctx.reporter.report(None, Outcome.REJECTED, reason)  # signed by the fleet key


def on_manifest(ctx: UpdateContext, envelope: bytes, later_ring: bool = False,
                device_topic: bool = False) -> int | None:
    """Start receiving the bundle a manifest announces; returns its version, or None if refused.

    ``later_ring``: the manifest comes from a ring after the agent's own (a canary agent reading
    the stable channel), where an older version is normal and not worth reporting.
    ``device_topic``: it comes from this device's own topic of the ring (see :mod:`shared.topics`),
    not the fleet's; an older version there while a fleet-wide one runs (or the reverse) is normal too.
    """
    lifecycle = ctx.lifecycle
    current = lifecycle.session
    if current is not None and envelope == current.envelope:
        return current.version  # already receiving it (a reconnect, or resumed after a restart)
    try:
        session = open_session(ctx, envelope)
    except SignatureError as e:
        ctx.reporter.discard(f"{e.reason}: {e}")
        return None
    except UpdateRejected as e:
        _rejected(ctx, envelope, e, later_ring, device_topic)
        return None
    current = lifecycle.session
    if current is not None and current.version > session.version:
        return None  # already receiving a newer version (announced on another ring)
    if current is not None and current.version != session.version:
        ctx.store.discard_staging(current.version)
        lifecycle.drop()
    try:
        check_room(ctx.store, session)
        ctx.store.write_staged_envelope(session.version, envelope)
        reuse_from_disk(ctx.store, session)
    except OSError as e:
        out_of_space(ctx, session, e)
        return None
    lifecycle.receive(session)
    reused = f", {session.reused} reused from disk" if session.reused else ""
    ctx.reporter.report(session.version, Outcome.RECEIVING,
                        f"{session.missing_count} of {session.chunk_count} chunks to fetch{reused}")
    if session.complete:
        activate(ctx)
        return None
    return session.version


def on_chunk(ctx: UpdateContext, version: int, name: str, index: int, data: bytes, from_origin: bool = False) -> bool:
    """Take one chunk (over MQTT, or ``from_origin``); True when the bundle it belongs to was
    completed and handled."""
    session = ctx.lifecycle.session
    if session is None or ctx.lifecycle.receiving() != version:
        return False
    try:
        if session.accept_chunk(name, index, data):
            ctx.store.write_chunk(version, name, session.offset(name, index), data)
            session.received += 1
            session.from_origin += from_origin
    except BundleError as e:
        ctx.reporter.discard(f"{e.reason}: version {version}: {e}")
        return False
    except OSError as e:
        out_of_space(ctx, session, e)
        return True
    if not session.complete:
        return False
    activate(ctx)
    return True

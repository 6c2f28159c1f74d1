"""Applies model updates: drives the update state machine with the model store and the interpreter.

Called from one worker thread (see :mod:`edge_agent.mqtt_link`), never concurrently. The active
model is swapped by replacing one reference in :class:`ActiveModel`; requests in flight keep the
model object they started with.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.loaded_model import LoadedModel, ModelLoadError
from edge_agent.model_store import ModelStore
from edge_agent.update import UpdateSession
from shared.bundle import CATALOG_FILE, MODEL_FILE, BundleError, Manifest, check_file, parse_manifest
from shared.catalog import parse_catalog
from shared.signing import SignatureError, verify
from shared.topics import STABLE

log = logging.getLogger(__name__)

#: A model whose loading was interrupted this many times (the process died: a crash in the
#: interpreter, the OOM killer, power) is refused from then on, so the agent cannot crash-loop.
MAX_LOAD_ATTEMPTS = 2
#: A newly activated model is on trial until it has served ``trial_s`` seconds. If the agent starts
#: this many times while it is on trial after dying (a crash in the interpreter while serving, the
#: OOM killer; a clean stop does not count), the model is refused and the previous one takes over:
#: an automatic rollback.
MAX_TRIAL_STARTS = 3
#: Space a model download leaves free on the data disk, so shoppers' events can still be stored.
STAGING_HEADROOM_BYTES = 16 * 1024 * 1024


def is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


#: Log lines about discarded messages (see :class:`Discarded`): at most one per this many seconds.
DISCARD_LOG_INTERVAL_S = 10.0


@dataclass
class UpdateResult:
    version: int | None
    result: str  # "activated", "rejected", "failed", "receiving"; "discarded" (see Discarded)
    reason: str
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "result": self.result, "reason": self.reason, "at": self.at}


@dataclass
class Discarded:
    """Messages no signature vouched for (unsigned or foreign-signed manifests, chunks that do not
    match the manifest) and errors in handling a message. Anyone with write access to the broker
    can send these, so they are counted and the last one kept here, apart from ``last_update``:
    junk never erases the record of the last genuine update (rollout verdicts read it), and a flood
    of junk costs a counter, not a log line or a status message each."""

    count: int = 0
    reason: str = ""
    at: float = 0.0
    logged_at: float = -DISCARD_LOG_INTERVAL_S  # monotonic
    unlogged: int = 0

    def to_json(self) -> dict[str, object]:
        return {"count": self.count, "reason": self.reason, "at": self.at}


class ModelCrashed(BundleError):
    reason = "crashed"


@dataclass(frozen=True)
class WaitingForSpace:
    """An update that failed for lack of disk space, to be tried again once there is room."""

    envelope: bytes
    version: int
    needed: int  # free bytes that staging it from scratch takes, headroom included


class ActiveModel:
    """Holds the model serving requests; reading ``current`` is one atomic reference load."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.last_update: UpdateResult | None = None  # genuine updates only (see Discarded)
        self.discarded = Discarded()


def load_bundle(manifest: Manifest, files: dict[str, bytes], num_threads: int) -> LoadedModel:
    for name in manifest.files:
        check_file(manifest, name, files.get(name, b""))
    catalog = parse_catalog(files[CATALOG_FILE], manifest.model.num_items)
    return LoadedModel(manifest, files[MODEL_FILE], catalog, num_threads=num_threads)


class Updater:
    def __init__(
        self,
        store: ModelStore,
        active: ActiveModel,
        trusted_key: Ed25519PublicKey,
        *,
        fleet: str,
        max_bundle_bytes: int,
        num_threads: int,
        device_id: str | None = None,
        channel: str = STABLE,
        on_report: Callable[[UpdateResult], None] = lambda result: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        trial_s: float = 300.0,
    ) -> None:
        self.store = store
        self.active = active
        self.trusted_key = trusted_key
        self.fleet = fleet
        self.device_id = device_id
        self.channel = channel
        self.max_bundle_bytes = max_bundle_bytes
        self.num_threads = num_threads
        self.on_report = on_report
        self.clock = clock
        self.session: UpdateSession | None = None
        self.trial_s = trial_s
        self._trial_since: float | None = None  # monotonic start of the current model's trial
        self.waiting_for_space: WaitingForSpace | None = None
        self._lock = threading.Lock()  # guards the trial marker (the daemon commits from its own thread)

    def _report(self, result: UpdateResult) -> None:
        self.active.last_update = result
        log.info("model update %s: version %s: %s", result.result, result.version, result.reason)
        self.on_report(result)

    def discard(self, reason: str) -> None:
        """Count a message no signature vouched for (see :class:`Discarded`); logged at most every
        DISCARD_LOG_INTERVAL_S seconds, the status republished by the caller's throttle."""
        discarded = self.active.discarded
        discarded.count += 1
        discarded.reason, discarded.at = reason[:300], time.time()
        discarded.unlogged += 1
        now = time.monotonic()
        if now - discarded.logged_at >= DISCARD_LOG_INTERVAL_S:
            log.warning("discarded %d unverified update message(s) since the last such line; the last: %s",
                        discarded.unlogged, discarded.reason)
            discarded.logged_at, discarded.unlogged = now, 0
        self.on_report(UpdateResult(None, "discarded", discarded.reason))

    def _installed(self, version: int) -> LoadedModel:
        envelope, files = self.store.read_version(version)
        manifest = parse_manifest(verify(envelope, self.trusted_key))
        if manifest.version != version:
            raise BundleError(f"installed folder {version} holds version {manifest.version}")
        return load_bundle(manifest, files, self.num_threads)

    def boot(self) -> None:
        """Load the last good model from disk (the active version, else the previous one), then
        resume an unfinished download from what is already staged."""
        self._judge_interrupted_load()
        self._boot_installed()
        self._resume_staged()

    def _judge_interrupted_load(self) -> None:
        interrupted = self.store.interrupted_load()
        if interrupted is None:
            return
        version, attempts = interrupted
        if attempts < MAX_LOAD_ATTEMPTS:
            log.warning("the agent stopped while loading model version %s; it will be tried again", version)
            return
        self.store.refuse(version)
        self.store.end_load()
        self.store.discard_staging(version)
        self._report(UpdateResult(version, "failed", f"crashed: the agent died {attempts} times while loading "
                                                     "this model; it is refused"))

    def _boot_installed(self) -> None:
        version, previous = self.store.pointer()
        starts = self.store.count_trial_start(version) if version is not None else None
        if version is not None and starts is not None and starts >= MAX_TRIAL_STARTS:
            self.store.refuse(version)
            self.store.end_trial()
            if previous is not None:
                self.store.set_active(previous, None)
            self._report(UpdateResult(version, "failed", f"crashed: the agent stopped {starts} times while "
                                                         f"version {version} was on trial; rolled back to {previous}"))
            version, previous = previous, None
        elif starts is not None:
            self._trial_since = time.monotonic()
        for candidate in (version, previous):
            if candidate is None:
                continue
            try:
                self.active.current = self._installed(candidate)
                if candidate != version:
                    self.store.set_active(candidate, None)
                log.info("serving installed model version %s", candidate)
                return
            except (OSError, BundleError, SignatureError, ModelLoadError) as e:
                log.error("installed model version %s is unusable: %s", candidate, e)
        log.info("no installed model yet; waiting for the first bundle")

    def stopped_cleanly(self) -> None:
        """The agent is stopping on request: this run of a model on trial was no crash."""
        with self._lock:
            current = self.active.current
            if self._trial_since is not None and current is not None and self.store.trial_version() == current.version:
                self.store.uncount_trial_start(current.version)

    def commit_if_due(self) -> bool:
        """End the trial of the serving model once it has served ``trial_s`` seconds; True if it did."""
        with self._lock:
            current = self.active.current
            if self._trial_since is None or current is None or time.monotonic() - self._trial_since < self.trial_s:
                return False
            if self.store.trial_version() == current.version:
                self.store.end_trial()
                log.info("model version %s passed its %gs trial", current.version, self.trial_s)
            self._trial_since = None
            return True

    def _new_session(self, envelope: bytes) -> UpdateSession:
        current = self.active.current
        session = UpdateSession(
            envelope,
            self.trusted_key,
            fleet=self.fleet,
            active_version=current.version if current else None,
            now=self.clock(),
            max_bundle_bytes=self.max_bundle_bytes,
            device_id=self.device_id,
            channel=self.channel,
            revoked=self.store.revoked(),
        )
        if session.version in self.store.refused():
            raise ModelCrashed(f"version {session.version} crashed the agent while loading before; refused")
        if session.manifest.revokes:
            # remembered before anything else can fail: a replay of a revoked version is refused
            # even if this release never activates (disk full, bad model)
            self.store.revoke(session.manifest.revokes)
            if self.session is not None and self.session.version in session.manifest.revokes:
                self.store.discard_staging(self.session.version)
                self.session = None
        return session

    def _resume_staged(self) -> None:
        staged = self.store.staged_envelopes()
        for version in sorted(staged):
            if version != max(staged):
                self.store.discard_staging(version)
                continue
            try:
                session = self._new_session(staged[version])
            except (BundleError, SignatureError) as e:
                log.info("dropping the staged download of version %s: %s", version, e)
                self.store.discard_staging(version)
                continue
            self._reuse_from_disk(session)
            self.session = session
            reason = (f"resumed: {session.reused} of {session.chunk_count} chunks verified from disk, "
                      f"{session.missing_count} to fetch")
            self._report(UpdateResult(version, "receiving", reason))
            if session.complete:
                self._activate(session)

    def _reuse_from_disk(self, session: UpdateSession) -> None:
        """Take every chunk already on disk that verifies: staged earlier, or in an installed version."""
        version, size = session.version, session.manifest.chunk_size
        for name, index in session.missing():
            data = self.store.read_staged_chunk(version, name, index * size, session.chunk_length(name, index))
            if session.reuse(name, index, data):
                session.reused += 1
        for name, entry in session.manifest.files.items():
            if not any(n == name for n, _ in session.missing()):
                continue
            installed = self.store.installed_file(entry.sha256, entry.length)
            if installed is None:
                continue
            for index in range(len(entry.chunks)):
                chunk = installed[index * size : index * size + session.chunk_length(name, index)]
                if session.reuse(name, index, chunk):
                    self.store.write_chunk(version, name, index * size, chunk)
                    session.reused += 1

    def on_manifest(self, envelope: bytes, later_ring: bool = False) -> int | None:
        """Start receiving the bundle a manifest announces; returns its version, or None if refused.

        ``later_ring``: the manifest comes from a ring after the agent's own (a canary agent reading
        the stable channel), where an older version is normal and not worth reporting.
        """
        if self.session is not None and envelope == self.session.envelope:
            return self.session.version  # already receiving it (a reconnect, or resumed after a restart)
        try:
            session = self._new_session(envelope)
        except SignatureError as e:
            self.discard(f"{e.reason}: {e}")
            return None
        except BundleError as e:
            if self.active.current is not None and isinstance(e, BundleError) and e.reason == "rollback" and (
                later_ring or envelope == self._active_envelope()
            ):
                return None  # the retained manifest of the model we already run, or of a later ring
            reason = f"{e.reason}: {e}"
            last = self.active.last_update
            if last is not None and last.result == "rejected" and last.reason == reason:
                self.discard(f"repeated: {reason}")  # a replayed signed manifest, again and again
            else:
                self._report(UpdateResult(None, "rejected", reason))  # signed by the fleet key
            return None
        if self.session is not None and self.session.version > session.version:
            return None  # already receiving a newer version (announced on another ring)
        if self.session is not None and self.session.version != session.version:
            self.store.discard_staging(self.session.version)
            self.session = None
        try:
            self._check_room(session)
            self.store.write_staged_envelope(session.version, envelope)
            self._reuse_from_disk(session)
        except OSError as e:
            self._out_of_space(session, e)
            return None
        self.waiting_for_space = None
        self.session = session
        reused = f", {session.reused} reused from disk" if session.reused else ""
        self._report(UpdateResult(session.version, "receiving", f"{session.missing_count} of "
                                                                f"{session.chunk_count} chunks to fetch{reused}"))
        if session.complete:
            self._activate(session)
            return None
        return session.version

    def _active_envelope(self) -> bytes | None:
        current = self.active.current
        if current is None:
            return None
        try:
            return self.store.read_version(current.version)[0]
        except OSError:
            return None

    def on_chunk(self, version: int, name: str, index: int, data: bytes) -> bool:
        """Take one chunk; True when the bundle it belongs to was completed and handled."""
        session = self.session
        if session is None or session.version != version:
            return False
        try:
            if session.accept_chunk(name, index, data):
                self.store.write_chunk(version, name, session.offset(name, index), data)
                session.received += 1
        except BundleError as e:
            self.discard(f"{e.reason}: version {version}: {e}")
            return False
        except OSError as e:
            self._out_of_space(session, e)
            return True
        if not session.complete:
            return False
        self._activate(session)
        return True

    def _activate(self, session: UpdateSession) -> None:
        version = session.version
        self.session = None
        try:
            self.store.begin_load(version)  # if the interpreter kills the process, boot() will know
            files = {name: self.store.read_staged(version, name) for name in session.manifest.files}
            model = load_bundle(session.manifest, files, self.num_threads)  # verify, load, self-test
            session.staged()
        except (OSError, BundleError, ModelLoadError) as e:
            self.store.end_load()
            if isinstance(e, OSError) and is_disk_full(e):
                self._out_of_space(session, e)
                return
            self.store.discard_staging(version)
            self._report(UpdateResult(version, "failed", f"{getattr(e, 'reason', 'load_failed')}: {e}"))
            return
        previous = self.active.current.version if self.active.current else None
        try:
            self.store.promote(version, session.envelope)
            with self._lock:
                self.store.set_active(version, previous)
                self.store.start_trial(version)
                self._trial_since = time.monotonic()
        except OSError as e:
            self.store.end_load()
            self._out_of_space(session, e)
            return
        self.store.end_load()
        self.active.current = model
        session.activated()
        self._report(UpdateResult(version, "activated", f"verified, loaded and self-tested; {session.received} "
                                                        f"chunks received, {session.reused} reused from disk"))

    # -- a full disk ---------------------------------------------------------------------------
    def _needed_bytes(self, session: UpdateSession) -> int:
        return session.manifest.total_bytes + STAGING_HEADROOM_BYTES

    def _check_room(self, session: UpdateSession) -> None:
        """Refuse to start staging a bundle that would leave less than the headroom free."""
        free = self.store.free_bytes() + self.store.staged_bytes(session.version)
        if free < self._needed_bytes(session):
            raise OSError(errno.ENOSPC, f"{free} bytes free")

    def _out_of_space(self, session: UpdateSession, error: OSError) -> None:
        """Give up an update the disk has no room for: free what it staged, keep serving the active
        model, and wait for space (see :meth:`retry_when_room`). Other I/O errors propagate."""
        if not is_disk_full(error):
            raise error
        self.store.discard_staging(session.version)
        self.session = None
        needed = self._needed_bytes(session)
        self.waiting_for_space = WaitingForSpace(session.envelope, session.version, needed)
        free = self.store.free_bytes()
        self._report(UpdateResult(
            session.version, "failed",
            f"disk_full: version {session.version} needs {needed // 2**20} MiB free to stage "
            f"({session.manifest.total_bytes} bytes plus {STAGING_HEADROOM_BYTES // 2**20} MiB left for history), "
            f"{free // 2**20} MiB are; the active model keeps serving and the update is retried once there is room",
        ))

    def retry_when_room(self) -> bool:
        """Start again an update that failed for lack of space, if there is room now; True if it did."""
        waiting = self.waiting_for_space
        if waiting is None or self.session is not None or self.store.free_bytes() < waiting.needed:
            return False
        self.waiting_for_space = None
        log.info("disk space freed: retrying the update to version %s", waiting.version)
        self.on_manifest(waiting.envelope)
        return True

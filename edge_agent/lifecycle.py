"""The model-update lifecycle as pure logic: its states, its transitions, the one journal record
that survives restarts, and the decisions taken at boot. No I/O here: :mod:`edge_agent.updater`
and its helpers do what these functions decide, and persist the journal they return.

Two regions, each in one state at a time::

    download   idle/refused --manifest--> receiving --last chunk--> staged --> loading --loaded--> idle
               receiving | loading --disk full--> waiting_for_space --room--> idle (then the manifest again)
               loading --does not load--> refused
    serving    idle (no model) --boot--> active | on_trial
               active | on_trial --activated--> on_trial --served trial_s--> active

``refused`` is ``idle`` after an update came to nothing (it did not load, or it killed the agent).
At boot, :func:`plan_boot` reads the journal: a load the process did not survive twice refuses
that version; a version on trial the agent died under three times is refused and rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from edge_agent.errors import UpdateOrderError
from edge_agent.journal import Journal

if TYPE_CHECKING:
    from edge_agent.update import UpdateSession

#: A model whose loading was interrupted this many times (the process died: a crash in the
#: interpreter, the OOM killer, power) is refused from then on, so the agent cannot crash-loop.
MAX_LOAD_ATTEMPTS = 2
#: A newly activated model is on trial until it has served ``trial_s`` seconds. If the agent starts
#: this many times while it is on trial after dying (a crash in the interpreter while serving, the
#: OOM killer; a clean stop does not count), the model is refused and the previous one takes over:
#: an automatic rollback.
MAX_TRIAL_STARTS = 3


class State(StrEnum):
    IDLE = "idle"
    RECEIVING = "receiving"
    STAGED = "staged"
    LOADING = "loading"
    ON_TRIAL = "on_trial"
    ACTIVE = "active"
    REFUSED = "refused"
    WAITING_FOR_SPACE = "waiting_for_space"


_AT_REST = frozenset({State.RECEIVING, State.WAITING_FOR_SPACE, State.IDLE})
#: Allowed moves of the download region (a state may also stay what it is where listed).
DOWNLOAD_MOVES: Mapping[State, frozenset[State]] = {
    State.IDLE: _AT_REST,
    State.REFUSED: _AT_REST,
    State.RECEIVING: _AT_REST | {State.STAGED},
    State.STAGED: frozenset({State.LOADING}),
    State.LOADING: frozenset({State.IDLE, State.REFUSED, State.WAITING_FOR_SPACE}),
    State.WAITING_FOR_SPACE: _AT_REST,
}
SERVING_MOVES: Mapping[State, frozenset[State]] = {
    State.IDLE: frozenset({State.ACTIVE, State.ON_TRIAL}),
    State.ACTIVE: frozenset({State.ON_TRIAL}),
    State.ON_TRIAL: frozenset({State.ON_TRIAL, State.ACTIVE}),
}


@dataclass(frozen=True)
class BootPlan:
    """What to do at boot, in order: persist ``journal``; drop the staging of ``discard_staging``;
    keep only the pointed versions if ``repointed``; report each of ``failures`` (version, reason);
    then serve the first of ``candidates`` that loads (``trial``: the version whose trial goes on)."""

    journal: Journal
    failures: tuple[tuple[int, str], ...] = ()
    retried_load: int | None = None  # a load interrupted once: tried again (one death may be bad luck)
    discard_staging: int | None = None
    repointed: bool = False
    candidates: tuple[int, ...] = ()
    trial: int | None = None


def _judge_interrupted_load(journal: Journal) -> BootPlan:
    """A load the process did not survive: tried again once, refused the second time."""
    loading, attempts = journal.loading, journal.load_attempts
    if loading is None:
        return BootPlan(journal)
    if attempts < MAX_LOAD_ATTEMPTS:
        return BootPlan(journal, retried_load=loading)
    reason = f"crashed: the agent died {attempts} times while loading this model; it is refused"
    return BootPlan(journal.refuse(loading).end_load(), ((loading, reason),), discard_staging=loading)


def _judge_trial(plan: BootPlan) -> BootPlan:
    """Count this start against the version on trial; the third refuses it and rolls back."""
    journal = plan.journal
    active, previous = journal.active, journal.previous
    if active is None:
        return replace(plan, candidates=() if previous is None else (previous,))
    journal, starts = journal.add_trial_starts(active, +1)
    if starts is None or starts < MAX_TRIAL_STARTS:
        candidates = tuple(v for v in (active, previous) if v is not None)
        return replace(plan, journal=journal, candidates=candidates, trial=None if starts is None else active)
    journal = journal.refuse(active).end_trial()
    if previous is not None:
        journal = journal.point(previous, None)
    reason = f"crashed: the agent stopped {starts} times while version {active} was on trial; rolled back to {previous}"
    return replace(plan, journal=journal, failures=(*plan.failures, (active, reason)), repointed=previous is not None,
                   candidates=() if previous is None else (previous,))


def plan_boot(journal: Journal) -> BootPlan:
    """Crash recovery, trial and rollback, decided from the journal alone."""
    return _judge_trial(_judge_interrupted_load(journal))


@dataclass(frozen=True)
class WaitingForSpace:
    """An update that failed for lack of disk space, to be tried again once there is room."""

    envelope: bytes
    version: int
    needed: int  # free bytes that staging it from scratch takes, headroom included


@dataclass(frozen=True)
class Fetch:
    """What the transport should fetch: the chunks of ``version`` still missing, in file order."""

    version: int
    chunks: tuple[tuple[str, int], ...]


class Lifecycle:
    """The states of both regions, the download in flight, and the journal last persisted. A
    transition that changes the journal returns the new one: the caller persists it (which sets
    ``journal``) before acting on it."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.download = State.IDLE
        self.serving = State.IDLE
        self.session: UpdateSession | None = None
        self.waiting: WaitingForSpace | None = None
        self.trial_since: float | None = None  # monotonic start of the serving model's trial

    def _move(self, region: str, to: State) -> None:
        moves = DOWNLOAD_MOVES if region == "download" else SERVING_MOVES
        now = getattr(self, region)
        if to not in moves[now]:
            raise UpdateOrderError(f"the {region} is {now.value}; it cannot become {to.value}")
        setattr(self, region, to)

    # -- what the transport asks ----------------------------------------------------------------
    def receiving(self) -> int | None:
        """The version whose chunks are wanted, if any."""
        return self.session.version if self.session is not None and self.download is State.RECEIVING else None

    def to_fetch(self) -> Fetch | None:
        session = self.session
        if session is None or self.download is not State.RECEIVING:
            return None
        return Fetch(session.version, tuple(session.missing()))

    def is_refused(self, version: int) -> bool:
        return version in self.journal.refused

    # -- the download ---------------------------------------------------------------------------
    def receive(self, session: UpdateSession) -> None:
        self._move("download", State.RECEIVING)
        self.session, self.waiting = session, None

    def drop(self) -> int | None:
        """Give up the download in flight (a newer version, a revocation); its version, to unstage."""
        dropped = self.session.version if self.session is not None else None
        if self.session is not None:
            self._move("download", State.IDLE)
        self.session = None
        return dropped

    def staged(self) -> UpdateSession:
        """Every chunk of the download is in: it is staged, and the next step is loading it."""
        session = self.session
        assert session is not None, "nothing is being received"
        self._move("download", State.STAGED)
        session.staged()
        return session

    def begin_load(self) -> Journal:
        assert self.session is not None
        self._move("download", State.LOADING)
        return self.journal.begin_load(self.session.version)

    def load_failed(self) -> Journal:
        self._move("download", State.REFUSED)
        self.session = None
        return self.journal.end_load()

    def activated(self, now: float) -> None:
        """The loaded model serves now, on trial from ``now`` (monotonic); the caller has persisted
        ``journal.activated(...)`` first."""
        session = self.session
        assert session is not None
        self._move("download", State.IDLE)
        self._move("serving", State.ON_TRIAL)
        session.activated()
        self.session, self.trial_since = None, now

    def wait_for_space(self, waiting: WaitingForSpace) -> None:
        self._move("download", State.WAITING_FOR_SPACE)
        self.session, self.waiting = None, waiting

    def room_found(self, free_bytes: int) -> WaitingForSpace | None:
        """The update that waited for space, if there is room for it now (and nothing is in flight)."""
        waiting = self.waiting
        if waiting is None or self.session is not None or free_bytes < waiting.needed:
            return None
        self._move("download", State.IDLE)
        self.waiting = None
        return waiting

    # -- the serving model ----------------------------------------------------------------------
    def booted(self, version: int, trial: int | None, now: float) -> None:
        """Serving ``version`` after a start; on trial (from ``now``) if it is the plan's trial."""
        self._move("serving", State.ON_TRIAL if version == trial else State.ACTIVE)
        self.trial_since = now if version == trial else None

    def trial_due(self, serving: int | None, now: float, trial_s: float) -> bool:
        return self.trial_since is not None and serving is not None and now - self.trial_since >= trial_s

    def commit(self) -> None:
        """The serving model passed its trial (the caller persisted ``journal.end_trial()`` if the
        journal had it on trial)."""
        self.trial_since = None
        self._move("serving", State.ACTIVE)

    def stopped_cleanly(self, serving: int | None) -> Journal | None:
        """A clean stop while on trial is no crash: the journal with that start uncounted."""
        if self.trial_since is None or serving is None or self.journal.trial != serving:
            return None
        return self.journal.add_trial_starts(serving, -1)[0]

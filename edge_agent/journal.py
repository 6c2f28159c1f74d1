"""The journal: what the update lifecycle keeps across restarts, as one pure record.

Persisted by :mod:`edge_agent.journal_file` (one file, replaced atomically); every change is a new
record made by one of the methods below, so a kill -9 leaves either the old record or the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Marks the journal record (a record without it is the pointer of an agent from before the journal).
JOURNAL_SCHEMA = "edge-rec.journal/1"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _marker(value: object, count_key: str) -> tuple[int | None, int]:
    """(version, count) of a {"version": N, <count_key>: K} marker; (None, 0) if it is not one."""
    if not isinstance(value, dict) or _int(value.get("version")) is None:
        return None, 0
    return _int(value.get("version")), max(0, _int(value.get(count_key, 0)) or 0)


@dataclass(frozen=True)
class Journal:
    """What the lifecycle keeps across restarts, persisted as one record replaced atomically."""

    active: int | None = None  # the version serving
    previous: int | None = None  # the version to fall back on
    loading: int | None = None  # a load began and did not end (the process may have died in it)
    load_attempts: int = 0
    trial: int | None = None  # the version on trial until it has served trial_s
    trial_starts: int = 0  # starts of that version on trial that did not end in a clean stop
    refused: frozenset[int] = field(default_factory=frozenset)  # versions that killed the agent

    def point(self, active: int, previous: int | None) -> Journal:
        return replace(self, active=active, previous=previous)

    def begin_load(self, version: int) -> Journal:
        attempts = self.load_attempts + 1 if self.loading == version else 1
        return replace(self, loading=version, load_attempts=attempts)

    def end_load(self) -> Journal:
        return replace(self, loading=None, load_attempts=0)

    def activated(self, version: int, previous: int | None) -> Journal:
        """One record for what took four writes: the pointer, the trial begun, the load ended."""
        return replace(self.end_load().point(version, previous), trial=version, trial_starts=0)

    def add_trial_starts(self, version: int, delta: int) -> tuple[Journal, int | None]:
        """Count a start (+1) or a clean stop (-1) of ``version`` on trial; None if it is not on trial."""
        if self.trial != version:
            return self, None
        starts = max(0, self.trial_starts + delta)
        return replace(self, trial_starts=starts), starts

    def end_trial(self) -> Journal:
        return replace(self, trial=None, trial_starts=0)

    def refuse(self, version: int) -> Journal:
        return replace(self, refused=self.refused | {version})

    def to_json(self) -> dict[str, object]:
        """``version`` and ``previous`` stay at the top, as in the pointer file before the journal."""
        return {
            "version": self.active,
            "previous": self.previous,
            "loading": None if self.loading is None else {"version": self.loading, "attempts": self.load_attempts},
            "trial": None if self.trial is None else {"version": self.trial, "starts": self.trial_starts},
            "refused": sorted(self.refused),
            "schema": JOURNAL_SCHEMA,
        }

    @classmethod
    def from_json(cls, record: object) -> Journal:
        """The journal a record holds; what is missing or unreadable in it counts as absent."""
        if not isinstance(record, dict):
            return cls()
        return cls.from_parts(record, record.get("loading"), record.get("trial"), record.get("refused"))

    @classmethod
    def from_parts(cls, pointer: object, loading: object, trial: object, refused: object) -> Journal:
        """From the journal's parts, or from the four files an agent kept before the journal:
        active.json (the pointer), loading.json, trial.json and refused.json (``None``: absent)."""
        pointer = pointer if isinstance(pointer, dict) else {}
        loading_version, attempts = _marker(loading, "attempts")
        trial_version, starts = _marker(trial, "starts")
        kept = refused if isinstance(refused, list) else []
        return cls(
            active=_int(pointer.get("version")),
            previous=_int(pointer.get("previous")),
            loading=loading_version,
            load_attempts=attempts if loading_version is not None else 0,
            trial=trial_version,
            trial_starts=starts if trial_version is not None else 0,
            refused=frozenset(v for v in kept if _int(v) is not None),
        )


def is_journal(record: object) -> bool:
    return isinstance(record, dict) and record.get("schema") == JOURNAL_SCHEMA

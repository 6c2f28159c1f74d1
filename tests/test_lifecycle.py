"""The update lifecycle as pure logic (states, transitions, boot decisions) and its journal on disk,
including the migration of the four files an agent kept before the journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundle_factory import FILES, NOW, envelope
from edge_agent.errors import UpdateOrderError
from edge_agent.journal import Journal
from edge_agent.journal_file import JournalFile
from edge_agent.lifecycle import Lifecycle, State, WaitingForSpace, plan_boot
from edge_agent.update import UpdateSession
from shared.bundle import split_chunks

KEY = Ed25519PrivateKey.generate()


def session() -> UpdateSession:
    return UpdateSession(envelope(KEY), KEY.public_key(), fleet="default", active_version=None, now=NOW,
                         max_bundle_bytes=1 << 20)


def test_a_download_walks_receiving_staged_loading_then_serves_on_trial_then_active() -> None:
    lifecycle = Lifecycle(Journal())
    s = session()
    lifecycle.receive(s)
    assert lifecycle.download is State.RECEIVING and lifecycle.receiving() == 5
    fetch = lifecycle.to_fetch()
    assert fetch is not None and fetch.version == 5 and len(fetch.chunks) == s.chunk_count
    with pytest.raises(UpdateOrderError):
        lifecycle.begin_load()  # not staged yet
    for name, data in FILES.items():
        for i, chunk in enumerate(split_chunks(data, 4)):
            s.accept_chunk(name, i, chunk)
    lifecycle.staged()
    journal = lifecycle.begin_load()
    assert lifecycle.download is State.LOADING and lifecycle.receiving() is None and lifecycle.to_fetch() is None
    assert (journal.loading, journal.load_attempts) == (5, 1)
    lifecycle.journal = journal.activated(5, None)
    lifecycle.activated(now=100.0)
    assert (lifecycle.download, lifecycle.serving) == (State.IDLE, State.ON_TRIAL)
    assert lifecycle.journal == Journal(active=5, trial=5)
    assert not lifecycle.trial_due(5, 399.0, 300.0) and lifecycle.trial_due(5, 400.0, 300.0)
    lifecycle.commit()
    assert lifecycle.serving is State.ACTIVE


def test_a_failed_load_is_refused_and_a_full_disk_waits_for_room() -> None:
    lifecycle = Lifecycle(Journal())
    lifecycle.receive(session())
    lifecycle.wait_for_space(WaitingForSpace(b"envelope", 5, 1000))
    assert lifecycle.download is State.WAITING_FOR_SPACE and lifecycle.receiving() is None
    assert lifecycle.room_found(999) is None
    assert lifecycle.room_found(1000) == WaitingForSpace(b"envelope", 5, 1000)
    assert lifecycle.download is State.IDLE
    s = session()
    lifecycle.receive(s)
    s.accept_chunk("model.tflite", 0, b"0123")  # not all: the download cannot be staged
    with pytest.raises(UpdateOrderError):
        lifecycle.staged()


def test_boot_retries_an_interrupted_load_once_then_refuses_it() -> None:
    once = plan_boot(Journal(active=4).begin_load(5))
    assert once.retried_load == 5 and once.failures == () and once.candidates == (4,)
    twice = plan_boot(Journal(active=4).begin_load(5).begin_load(5))
    assert twice.journal.refused == {5} and twice.journal.loading is None and twice.discard_staging == 5
    assert twice.failures[0][1].startswith("crashed: the agent died 2 times while loading")


def test_boot_counts_starts_on_trial_and_rolls_back_on_the_third() -> None:
    journal = Journal().activated(5, 4)
    for starts in (1, 2):
        plan = plan_boot(journal)
        assert plan.trial == 5 and plan.candidates == (5, 4) and plan.journal.trial_starts == starts
        journal = plan.journal
    plan = plan_boot(journal)
    assert plan.journal == Journal(active=4, previous=None, refused=frozenset({5}))
    assert plan.repointed and plan.candidates == (4,) and plan.trial is None
    assert plan.failures == ((5, "crashed: the agent stopped 3 times while version 5 was on trial; rolled back to 4"),)
    clean = Lifecycle(Journal().activated(5, 4))
    clean.booted(5, trial=5, now=0.0)
    stopped = clean.stopped_cleanly(5)
    assert stopped is not None and stopped.trial_starts == 0


def test_the_journal_is_one_record_and_keeps_the_pointer_where_it_was(tmp_path: Path) -> None:
    journal = Journal(active=7, previous=6, trial=7, trial_starts=1, refused=frozenset({3})).begin_load(8)
    JournalFile(tmp_path).write(journal)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active.json"]
    record = json.loads((tmp_path / "active.json").read_text())
    assert (record["version"], record["previous"]) == (7, 6)
    assert JournalFile(tmp_path).read() == journal


def test_an_upgraded_agent_keeps_its_state_from_the_four_files_of_before(tmp_path: Path) -> None:
    (tmp_path / "active.json").write_text(json.dumps({"version": 7, "previous": 6}))
    (tmp_path / "loading.json").write_text(json.dumps({"version": 8, "attempts": 1}))
    (tmp_path / "trial.json").write_text(json.dumps({"version": 7, "starts": 2}))
    (tmp_path / "refused.json").write_text(json.dumps([3, 4]))
    journal = JournalFile(tmp_path).read()
    assert journal == Journal(active=7, previous=6, loading=8, load_attempts=1, trial=7, trial_starts=2,
                              refused=frozenset({3, 4}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active.json"]  # migrated once
    assert JournalFile(tmp_path).read() == journal
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "active.json").write_text(json.dumps({"version": 2, "previous": None}))
    (torn / "trial.json").write_text("{not json")
    assert JournalFile(torn).read() == Journal(active=2)

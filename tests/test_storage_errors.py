"""Storage errors and hostile input through a real agent (issue 22): a damaged database page is a
documented error without ids in the log, an erasure whose key is destroyed is an erasure, bad
input is a 400 and never a 500, and the stores' files are private whatever the umask."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import AgentProcess
from edge_agent.history_store import HISTORY_FILE, KEYRING_FILE, HistoryStore
from harness import post_events, start_agent
from shared.events import parse_event

NO_BROKER = "mqtt://127.0.0.1:9"  # nothing listens there: these tests need no model
USER = "shopper-4711-secret"


def history(agent: AgentProcess, user: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status, raw = agent.request("GET", f"/v1/users/{urllib.parse.quote(user, safe='')}/history")
    return status, json.loads(raw)


def damage_events_page(db: Path) -> None:
    """Overwrite the b-tree page holding the events table (its root: a few events fit in one page)."""
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='events'").fetchone()[0]
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)


def test_a_damaged_page_is_503_without_ids_in_the_log_and_erasure_still_erases(keys: Path, tmp_path: Path) -> None:
    agent = start_agent(NO_BROKER, keys, tmp_path)
    try:
        assert post_events(agent, [{"user_id": USER, "item_id": "85123A", "event": "purchase"}])[0] == 200
        assert history(agent, USER)[0] == 200
    finally:
        assert agent.stop() == 0
    damage_events_page(tmp_path / "agent" / HISTORY_FILE)
    agent = start_agent(NO_BROKER, keys, tmp_path, "history.cache_users=0")
    try:
        status, body = history(agent, USER)
        assert status == 503 and body["error"]["code"] == "storage_unavailable", body
        status, raw = agent.request("POST", "/v1/events",
                                    json.dumps({"user_id": USER, "item_id": "x", "event": "view"}).encode())
        assert status in (503, 507), raw
        status, raw = agent.request("DELETE", f"/v1/users/{USER}")
        assert status == 200 and json.loads(raw) == {"user_id": USER, "deleted": True}  # the key is destroyed
        assert history(agent, USER) == (200, {"user_id": USER, "events": []})  # nothing can be read any more
    finally:
        agent.stop()
    log = agent.log()
    assert "corrupt" in log and "could not be deleted" in log
    assert USER not in log and "Traceback" not in log.split("retention sweep failed")[0]


@pytest.fixture(scope="module")
def agent(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = start_agent(NO_BROKER, keys, tmp_path_factory.mktemp("bad-input"))
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/events", b'{"user_id": "\\ud800", "item_id": "x", "event": "view"}'),
        ("POST", "/v1/events", b'{"user_id": "u", "item_id": "a\\udfffb", "event": "view"}'),
        ("POST", "/v1/events", b"[" * 100_000 + b"]" * 100_000),
        ("POST", "/v1/events", b'{"user_id": "u", "item_id": "x", "event": "view", "timestamp": 1' + b"0" * 5000
         + b"}"),
        ("POST", "/v1/events", b'{"user_id": "u", "item_id": "x", "event": "view", "timestamp": 1e999}'),
        ("GET", "/v1/recommendations?user_id=u&k=1_0", None),
        ("GET", "/v1/recommendations?user_id=u&k=" + urllib.parse.quote("٥"), None),
        ("GET", "/v1/recommendations?user_id=u&k=%2B5", None),
        ("GET", "/v1/recommendations?user_id=u&k=%205", None),
    ],
)
def test_bad_input_is_400(agent: AgentProcess, method: str, path: str, body: bytes | None) -> None:
    status, raw = agent.request(method, path, body)
    assert status == 400, (path, body and body[:80], status, raw[:200])
    assert "message" in json.loads(raw)["error"]
    assert "Traceback" not in agent.log() and "unhandled" not in agent.log()


def test_sqlite_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        store = HistoryStore(tmp_path, lambda: [b"k" * 32])
        store.append([parse_event(USER, "85123A", "view", 1.7e9)])
        names = [n + s for n in (HISTORY_FILE, KEYRING_FILE) for s in ("", "-wal", "-shm")]
        present = [n for n in names if (tmp_path / n).exists()]
        assert {f"{HISTORY_FILE}-wal", f"{HISTORY_FILE}-shm"} <= set(present)  # the WAL is live
        modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in present}
        assert all(mode == 0o600 for mode in modes.values()), modes
        store.close()
    finally:
        os.umask(previous)

"""The agent process and its history: kill -9 mid-burst, data access, erasure, live key rotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from devtools.processes import AgentProcess

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "firmware_configs" / "dev.toml"
NO_BROKER = "mqtt://127.0.0.1:9"  # the history needs no model and no broker


def start(work: Path, keys: Path) -> AgentProcess:
    return AgentProcess(
        PROFILE,
        [f'mqtt.url="{NO_BROKER}"', f'agent.data_dir="{work / "agent"}"',
         f'model.trusted_public_key="{keys / "signing.pub"}"', "history.max_events_per_user=100000"],
        work,
    )


def history(agent: AgentProcess, user: str) -> list[dict]:  # type: ignore[type-arg]
    status, body = agent.request("GET", f"/v1/users/{urllib.parse.quote(user, safe='')}/history")
    assert status == 200, body
    return json.loads(body)["events"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_every_acknowledged_event_survives_a_stop_mid_burst(
    tmp_path: Path, keys: Path, stop_signal: signal.Signals
) -> None:
    agent = start(tmp_path, keys)
    acknowledged: dict[str, list[str]] = {f"shopper-{n}": [] for n in range(4)}
    stop = threading.Event()

    def burst(user: str) -> None:
        n = 0
        while not stop.is_set():
            item = f"sku-{n}"
            body = json.dumps({"user_id": user, "item_id": item, "event": "cart"}).encode()
            try:
                status, _ = agent.request("POST", "/v1/events", body)
            except OSError:
                return  # the agent is gone
            if status == 200:
                acknowledged[user].append(item)
            n += 1

    writers = [threading.Thread(target=burst, args=(u,)) for u in acknowledged]
    for w in writers:
        w.start()
    deadline = time.monotonic() + 30
    while sum(map(len, acknowledged.values())) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(agent.proc.pid, stop_signal)  # in the middle of the burst
    code = agent.proc.wait(30)
    stop.set()
    for w in writers:
        w.join()
    agent.stop()
    if stop_signal == signal.SIGTERM:
        assert code == 0, agent.log()  # a clean shutdown, in-flight requests finished first

    agent = start(tmp_path, keys)
    try:
        acked = sum(map(len, acknowledged.values()))
        assert acked >= 300
        lost = []
        for user, items in acknowledged.items():
            stored = {e["item_id"] for e in history(agent, user)}
            lost += [(user, i) for i in items if i not in stored]
        how = stop_signal.name
        assert not lost, f"{len(lost)} of {acked} acknowledged events lost after {how}: {lost[:5]}"
        print(f"{how} mid-burst: {acked} events acknowledged, {acked - len(lost)} found after restart")
    finally:
        agent.stop()


def test_history_access_erasure_and_nothing_readable(tmp_path: Path, keys: Path) -> None:
    agent = start(tmp_path, keys)
    user, item = "jane.doe@example.com", "GIFT-BOX-7731"
    try:
        events = [{"user_id": user, "item_id": item, "event": "view", "timestamp": "2026-11-20T10:00:00Z"},
                  {"user_id": user, "item_id": item, "event": "purchase", "timestamp": 1795341600}]
        assert agent.request("POST", "/v1/events", json.dumps(events).encode())[0] == 200
        got = history(agent, user)
        assert got == [
            {"item_id": item, "event": "view", "timestamp": "2026-11-20T10:00:00.000Z"},
            {"item_id": item, "event": "purchase", "timestamp": "2026-11-22T10:00:00.000Z"},
        ]
        for path in (tmp_path / "agent").rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                assert user.encode() not in blob and item.encode() not in blob, path
        assert user not in agent.log() and item not in agent.log()  # no user data in logs

        status, body = agent.request("DELETE", f"/v1/users/{urllib.parse.quote(user)}")
        assert status == 200 and json.loads(body)["deleted"] is True
        assert history(agent, user) == []
        assert json.loads(agent.request("DELETE", f"/v1/users/{urllib.parse.quote(user)}")[1])["deleted"] is False
    finally:
        agent.stop()


def test_rotate_key_while_the_agent_serves(tmp_path: Path, keys: Path) -> None:
    agent = start(tmp_path, keys)
    try:
        post = json.dumps({"user_id": "u1", "item_id": "i1", "event": "view"}).encode()
        assert agent.request("POST", "/v1/events", post)[0] == 200
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "rotate-key", "--config", str(PROFILE),
             "--set", f'agent.data_dir="{tmp_path / "agent"}"'],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "1 user keys re-wrapped" in result.stdout
        # the running agent, never restarted, reads old users and creates new ones under the new key
        assert [e["item_id"] for e in history(agent, "u1")] == ["i1"]
        post = json.dumps({"user_id": "u2", "item_id": "i2", "event": "view"}).encode()
        assert agent.request("POST", "/v1/events", post)[0] == 200
    finally:
        agent.stop()
    agent = start(tmp_path, keys)
    try:
        assert [e["item_id"] for e in history(agent, "u2")] == ["i2"]
    finally:
        agent.stop()


def _start_fails(work: Path, keys: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(PROFILE),
         "--set", f'agent.data_dir="{work / "agent"}"', "--set", f'model.trusted_public_key="{keys / "signing.pub"}"',
         "--set", f'mqtt.url="{NO_BROKER}"'],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_bad_key_or_storage_stops_the_agent_with_a_clear_message(tmp_path: Path, keys: Path) -> None:
    agent = start(tmp_path, keys)
    assert agent.request("POST", "/v1/events", b'{"user_id": "u", "item_id": "i", "event": "view"}')[0] == 200
    agent.stop()
    key_file = tmp_path / "agent" / "master.key"
    original = key_file.read_bytes()
    key_file.write_bytes(os.urandom(32))
    assert "does not match this device's keyring" in _start_fails(tmp_path, keys)
    key_file.unlink()
    assert "restore the key file" in _start_fails(tmp_path, keys)  # never a new key over old history
    key_file.write_bytes(original)
    key_file.chmod(0o600)
    (tmp_path / "agent" / "history.sqlite3").write_bytes(b"garbage" * 1000)
    assert "corrupt" in _start_fails(tmp_path, keys)

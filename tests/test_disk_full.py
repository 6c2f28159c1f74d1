"""A really full disk under a running agent: its data directory is a small tmpfs that the test fills.

Staging a model and writing history fail with a clear error; the active model keeps serving, every
acknowledged event stays readable, and the refused update completes by itself once space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import AgentProcess, Broker
from harness import RawClient, chunk_messages, fresh_bundle, get_json, post_events, publish, start_agent, wait_for
from shared.bundle import ENVELOPE_FILE, MODEL_FILE
from shared.topics import DEFAULT_PREFIX, STABLE, manifest_topic

DISK_BYTES = 48 * 1024 * 1024


@contextlib.contextmanager
def small_disk(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``where``: a real file system that really fills up."""
    where.mkdir()
    if os.geteuid() != 0:
        message = "mounting a small tmpfs (a real full disk) needs root, as in CI"
        if os.environ.get("EDGE_REC_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "edge-rec-test", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False, capture_output=True)


def fill(disk: Path, name: str, leave: int = 0) -> Path:
    """Take the disk's free space, all but about ``leave`` bytes, with the file ``name``."""
    filler = disk / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(1, shutil.disk_usage(disk).free - leave))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    try:
        if leave == 0:  # then whatever blocks are left, one by one
            os.lseek(fd, 0, os.SEEK_END)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free <= leave + 4096, shutil.disk_usage(disk)
    return filler


def last_update(agent: AgentProcess) -> dict:  # type: ignore[type-arg]
    return get_json(agent, "/v1/model")[1]["last_update"] or {}


def serves(agent: AgentProcess, version: int, user: str) -> bool:
    status, body = get_json(agent, f"/v1/recommendations?user_id={user}&k=3")
    return status == 200 and body["model_version"] == version and len(body["items"]) == 3


def history_of(agent: AgentProcess, user: str) -> list[str]:
    status, body = get_json(agent, f"/v1/users/{user}/history")
    assert status == 200, body
    return sorted(e["item_id"] for e in body["events"])


def test_a_full_disk_refuses_history_and_model_updates_clearly_and_loses_nothing(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    publish(int8_bundle, broker)
    with small_disk(tmp_path / "disk", DISK_BYTES) as disk:
        agent = start_agent(broker.url, keys, tmp_path, f'agent.data_dir="{disk / "agent"}"',
                            "mqtt.status_interval_s=1")
        try:
            agent.wait_ready(60)
            items = [e["id"] for e in get_json(agent, "/v1/recommendations?user_id=probe&k=20")[1]["items"]]
            acknowledged: dict[str, list[str]] = {}

            def post(user: str, count: int) -> tuple[int, dict]:  # type: ignore[type-arg]
                events = [{"user_id": user, "item_id": items[i % len(items)], "event": "view"} for i in range(count)]
                status, body = post_events(agent, events)
                if status == 200:
                    acknowledged[user] = sorted(e["item_id"] for e in events)
                return status, body

            assert post("before-0", 5)[0] == 200

            # 1. Too little room for a new bundle: refused before a byte is staged.
            bundle = fresh_bundle(int8_bundle, keys, tmp_path, 1001)
            catalog_chunks = [c for c in chunk_messages(bundle) if c[0] != MODEL_FILE]
            fill(disk, "filler-1", leave=2 * 1024 * 1024)
            trainer = RawClient(broker, "trainer")
            trainer.publish(manifest_topic(DEFAULT_PREFIX, "default", STABLE), (bundle / ENVELOPE_FILE).read_bytes())
            assert wait_for(lambda: last_update(agent).get("version") == 1001, 20), agent.log()
            update = last_update(agent)
            assert update["result"] == "failed" and update["reason"].startswith("disk_full: version 1001 needs")
            assert not (disk / "agent" / "models" / "staging" / "1001").exists()
            assert serves(agent, 1000, "before-0")

            # 2. History on a disk with no byte left: 507 with a JSON error, nothing acknowledged lost.
            fill(disk, "filler-2")
            refused = None
            for n in range(200):
                status, body = post(f"full-{n}", 50)
                if status != 200:
                    refused = (status, body)
                    break
            assert refused is not None and refused[0] == 507, refused
            assert refused[1]["error"]["code"] == "storage_full"
            assert get_json(agent, "/readyz")[0] == 200 and serves(agent, 1000, "before-0")
            for user, events in acknowledged.items():
                assert history_of(agent, user) == events, user

            # 3. Space freed: the update is retried by itself, and staging runs out of space mid-transfer.
            (disk / "filler-1").unlink()
            (disk / "filler-2").unlink()
            assert wait_for(lambda: last_update(agent).get("result") == "receiving", 20), last_update(agent)
            fill(disk, "filler-3")
            for _, _, topic, data in catalog_chunks:
                trainer.publish(topic, data)
            assert wait_for(lambda: last_update(agent).get("result") == "failed", 20), last_update(agent)
            assert last_update(agent)["reason"].startswith("disk_full"), last_update(agent)
            assert not (disk / "agent" / "models" / "staging" / "1001").exists()  # the partial download is freed
            assert serves(agent, 1000, "before-0")

            # 4. Space freed again: the update completes from the broker's retained chunks.
            (disk / "filler-3").unlink()
            assert wait_for(lambda: serves(agent, 1001, "before-0"), 30), (last_update(agent), agent.log())
            assert post("after", 5)[0] == 200
            for user, events in acknowledged.items():
                assert history_of(agent, user) == events, user
            assert "Traceback" not in agent.log()
            trainer.close()
        finally:
            agent.stop()


def test_fill_really_fills(tmp_path: Path) -> None:
    """The helper above is what makes the other test meaningful: after it, a write fails with ENOSPC."""
    with small_disk(tmp_path / "disk", 4 * 1024 * 1024) as disk:
        fill(disk, "filler")
        with pytest.raises(OSError) as raised, open(disk / "more", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
        assert raised.value.errno == errno.ENOSPC

"""Helpers of the origin-delivery tests: a broker that logs what it sends, bundles published with
origin URLs through the real CLI, an agent tuned to give up on a bad origin quickly."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.origin_server import Nginx
from devtools.processes import AgentProcess, Broker, free_port
from harness import ROOT, StatusWatcher, get_json, manifest_of, resigned, start_agent, wait_for
from shared.bundle import ENVELOPE_FILE, MODEL_FILE

SMALL_CHUNKS = 8 * 1024  # several chunks per file, several requests per file
#: The agent gives up on a bad origin within seconds in these tests (production defaults are longer).
FAST_ORIGIN = ("origin.timeout_s=2", "origin.min_rate_bytes_per_s=65536", "origin.chunks_per_request=4",
               "origin.retries=1", "origin.retry_after_s=0.5", "mqtt.status_interval_s=1")


@contextlib.contextmanager
def logging_broker(work: Path) -> Iterator[Broker]:
    """A Mosquitto that logs every PUBLISH it sends (to count the chunks an agent got over MQTT)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      f"log_dest file {work / 'mosquitto.log'}\nlog_type all\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    broker = Broker(work, port, config)
    try:
        yield broker
    finally:
        broker.stop()


def chunks_sent(broker: Broker, client_id: str = "dev-1") -> int:
    """Chunk messages the broker sent to ``client_id`` (from its own log)."""
    text = broker.log.read_text(errors="replace") if broker.log.exists() else ""
    return len(re.findall(rf"Sending PUBLISH to {re.escape(client_id)} \([^)]*'[^']*/bundle/", text))


def publish_with_origin(bundle: Path, broker: Broker, keys: Path, origin_dir: Path, origin_url: str) -> None:
    """``cloud-trainer publish --origin DIR --origin-url BASE --key``: files to the origin, URLs signed in."""
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(bundle), "--broker", broker.url,
         "--origin", str(origin_dir), "--origin-url", origin_url, "--key", str(keys / "signing.key")],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def small_chunked(bundle: Path, keys: Path, out: Path, version: int) -> Path:
    return resigned(bundle, keys, out, chunk_size=SMALL_CHUNKS, version=version)


def plant(root: Path, bundle: Path, **replaced: bytes) -> None:
    """Lay ``bundle``'s files out under ``root`` as ``publish --origin`` would, with some replaced by
    an attacker's bytes (before the manifest is published, so no agent ever saw the genuine ones)."""
    manifest = manifest_of(bundle)
    folder = root / manifest.fleet / str(manifest.version)
    folder.mkdir(parents=True, exist_ok=True)
    for name in manifest.files:
        (folder / name).write_bytes(replaced.get(name.replace(".", "_"), (bundle / name).read_bytes()))


def origin_file(origin_dir: Path, bundle: Path, name: str = MODEL_FILE) -> Path:
    manifest = manifest_of(bundle)
    return origin_dir / manifest.fleet / str(manifest.version) / name


@dataclass
class Delivery:
    broker: Broker
    agent: AgentProcess
    status: StatusWatcher
    keys: Path
    work: Path

    def serving(self) -> int | None:
        code, body = get_json(self.agent, "/readyz")
        return int(body["model_version"]) if code == 200 else None

    def wait_serving(self, version: int, timeout: float = 60) -> str:
        """Wait until ``version`` serves; the reason of its activation."""
        assert wait_for(lambda: self.serving() == version, timeout), (self.status.latest, self.agent.log()[-3000:])
        assert wait_for(lambda: (self.status.latest.get("last_update") or {}).get("result") == "activated"
                        and self.status.latest["last_update"].get("version") == version, 15), self.status.latest
        return str(self.status.latest["last_update"]["reason"])

    def installed(self, version: int) -> dict[str, bytes]:
        folder = self.work / "agent" / "models" / "versions" / str(version)
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ENVELOPE_FILE}


@contextlib.contextmanager
def delivery(work: Path, keys: Path, *overrides: str) -> Iterator[Delivery]:
    """A logging broker and an agent with no model yet (so nothing can be reused from disk)."""
    with logging_broker(work / "broker") as broker:
        agent = start_agent(broker.url, keys, work, *FAST_ORIGIN, *overrides)
        status = StatusWatcher(broker)
        try:
            yield Delivery(broker, agent, status, keys, work)
        finally:
            status.close()
            agent.stop()


def served_ranges(server: Nginx, name: str = MODEL_FILE) -> list[tuple[int, str, int]]:
    """(status, Range header, bytes sent) of each request for ``name`` the origin answered."""
    return [(status, header, sent) for uri, status, header, sent in server.requests() if uri.endswith("/" + name)]


def same_files(bundle: Path, files: dict[str, bytes]) -> bool:
    manifest = manifest_of(bundle)
    return sorted(files) == sorted(manifest.files) and all(
        (bundle / name).read_bytes() == data for name, data in files.items())


def signed_urls(bundle_envelope: bytes) -> dict[str, list[str]]:
    signed = json.loads(json.loads(bundle_envelope)["signed"])
    return {name: entry.get("urls", []) for name, entry in signed["files"].items()}

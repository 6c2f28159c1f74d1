"""Helpers the process-level tests share: publishing bundles, starting agents, talking to them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from devtools.processes import AgentProcess, Broker
from shared import topics
from shared.bundle import (
    CATALOG_FILE,
    ENVELOPE_FILE,
    Manifest,
    file_entry,
    parse_manifest,
    sha256_hex,
    split_chunks,
)
from shared.signing import load_private_key, sign, verify

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "firmware_configs" / "dev.toml"


def publish(bundle: Path, broker: Broker) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(bundle), "--broker", broker.url],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def manifest_of(bundle: Path) -> Manifest:
    return parse_manifest(json.loads((bundle / ENVELOPE_FILE).read_bytes())["signed"])


def resigned(bundle: Path, keys: Path, out: Path, chunk_size: int | None = None, **changes: object) -> Path:
    """A copy of ``bundle`` whose manifest is changed and signed again with the fleet key.

    File entries are recomputed from the copied files (edit them first via ``bundle`` copies),
    with ``chunk_size`` if given.
    """
    shutil.copytree(bundle, out)
    manifest = manifest_of(bundle)
    size = chunk_size or manifest.chunk_size
    files = {name: file_entry((out / name).read_bytes(), size) for name in manifest.files}
    key = load_private_key((keys / "signing.key").read_bytes())
    changed = replace(manifest, chunk_size=size, files=files, **changes)  # type: ignore[arg-type]
    (out / ENVELOPE_FILE).write_bytes(sign(changed.to_json(), key))
    return out


def verify_installed(folder: Path, trusted: Ed25519PublicKey) -> Manifest:
    """The manifest of an installed version folder, after checking that it is genuine and complete:
    signed by ``trusted``, named after its version, every file of the length and sha256 it lists."""
    verify((folder / ENVELOPE_FILE).read_bytes(), trusted)
    manifest = manifest_of(folder)
    assert str(manifest.version) == folder.name
    for name, entry in manifest.files.items():
        data = (folder / name).read_bytes()
        assert len(data) == entry.length and sha256_hex(data) == entry.sha256, (folder, name)
    return manifest


def fresh_bundle(bundle: Path, keys: Path, where: Path, version: int, chunk_size: int = 16 * 1024) -> Path:
    """A genuine bundle of ``version`` whose catalog no installed version has (so its chunks must
    come over MQTT; the unchanged model file is reused from disk), in small chunks."""
    source = where / f"source-{version}"
    shutil.copytree(bundle, source)
    catalog = json.loads((source / CATALOG_FILE).read_bytes())
    catalog["items"][0]["title"] = f"Renamed in v{version}"
    (source / CATALOG_FILE).write_bytes(json.dumps(catalog).encode())
    return resigned(source, keys, where / f"v{version}", chunk_size=chunk_size, version=version)


def chunk_messages(bundle: Path, prefix: str = topics.DEFAULT_PREFIX) -> list[tuple[str, int, str, bytes]]:
    """(file, index, topic, data) of every chunk of ``bundle``, as the publisher sends them."""
    manifest = manifest_of(bundle)
    return [
        (name, index, topics.chunk_topic(prefix, manifest.fleet, manifest.version, name, index), data)
        for name in manifest.files
        for index, data in enumerate(split_chunks((bundle / name).read_bytes(), manifest.chunk_size))
    ]


def start_agent(broker_url: str, keys: Path, work: Path, *overrides: str) -> AgentProcess:
    return AgentProcess(
        PROFILE,
        [f'mqtt.url="{broker_url}"', f'agent.data_dir="{work / "agent"}"',
         f'model.trusted_public_key="{keys / "signing.pub"}"', *overrides],
        work,
    )


def get_json(agent: AgentProcess, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status, body = agent.request("GET", path)
    return status, json.loads(body)


def post_events(agent: AgentProcess, events: list[dict]) -> tuple[int, dict]:  # type: ignore[type-arg]
    status, body = agent.request("POST", "/v1/events", json.dumps({"events": events}).encode())
    return status, json.loads(body)


def wait_for(predicate, timeout: float = 30) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


class StatusWatcher:
    """Subscribes to an agent's retained status topic like an operator's dashboard would."""

    def __init__(self, broker: Broker, device_id: str = "dev-1") -> None:
        self.latest: dict = {}  # type: ignore[type-arg]
        self.seen: list[dict] = []  # type: ignore[type-arg]
        self._got = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topics.status_topic(topics.DEFAULT_PREFIX, "default", device_id), qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        self.latest = json.loads(message.payload)
        self.seen.append(self.latest)

    def update_reason(self) -> str:
        return str((self.latest.get("last_update") or {}).get("reason", ""))

    def mark(self) -> int:
        """Where the statuses received from now on start (take it before acting, then wait_update)."""
        return len(self.seen)

    def wait_update(self, fragment: str, start: int, timeout: float = 15) -> dict:  # type: ignore[type-arg]
        """The first status since ``start`` whose last update's reason contains ``fragment``."""

        def found() -> bool:
            return any(fragment in str((s.get("last_update") or {}).get("reason", "")) for s in self.seen[start:])

        assert wait_for(found, timeout), f"no update reason with {fragment!r}; latest: {self.latest}"
        return next(s for s in self.seen[start:] if fragment in str((s.get("last_update") or {}).get("reason")))

    def wait_discarded(self, fragment: str, start: int, timeout: float = 15) -> dict:  # type: ignore[type-arg]
        """The first status since ``start`` whose last discarded message's reason contains ``fragment``."""

        def reason(s: dict) -> str:  # type: ignore[type-arg]
            return str((s.get("discarded") or {}).get("reason", ""))

        assert wait_for(lambda: any(fragment in reason(s) for s in self.seen[start:]), timeout), \
            f"no discarded message with {fragment!r}; latest: {self.latest}"
        return next(s for s in self.seen[start:] if fragment in reason(s))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class RawClient:
    """A plain MQTT client on the broker: what an attacker with broker access could send."""

    def __init__(self, broker: Broker, client_id: str = "attacker") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), topic

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def serving_agent(bundle: Path, broker: Broker, keys: Path, work: Path) -> Iterator[AgentProcess]:
    """An agent that got ``bundle`` from the broker's retained messages (published before it started)."""
    publish(bundle, broker)
    agent = start_agent(broker.url, keys, work)
    try:
        agent.wait_ready(60)
        yield agent
    finally:
        agent.stop()


PKI_SCRIPT = ROOT / "firmware_configs" / "mosquitto" / "fleet_pki.py"


@dataclass
class SecureBroker:
    broker: Broker
    pki: Path

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker.port}"

    def tls_args(self, name: str) -> list[str]:
        return ["--broker", self.url, "--client-id", name, "--ca-file", str(self.pki / "ca.pem"),
                "--cert-file", str(self.pki / "clients" / f"{name}.pem"),
                "--key-file", str(self.pki / "clients" / f"{name}.key")]

    def agent_overrides(self, device: str) -> list[str]:
        return [f'mqtt.url="{self.url}"', f'agent.device_id="{device}"', f'mqtt.ca_file="{self.pki / "ca.pem"}"',
                f'mqtt.cert_file="{self.pki / "clients" / f"{device}.pem"}"',
                f'mqtt.key_file="{self.pki / "clients" / f"{device}.key"}"']


def make_pki(out: Path, port: int, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, str(PKI_SCRIPT), "--out", str(out), "--port", str(port), "--bind", "127.0.0.1",
         "--device", "dev-1", "--device", "dev-2", "--no-persistence",
         *(["--run-as", "root"] if os.geteuid() == 0 else []), *extra],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

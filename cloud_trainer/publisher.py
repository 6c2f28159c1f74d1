"""Publishes signed bundles over MQTT so that every agent, including late joiners, receives them.

Chunks go first, then the manifest on a channel's topic, all retained with QoS 1 and each
confirmed by the broker, so an agent never sees a manifest whose chunks are not there yet. Once
no channel names a version any more, its chunks are cleared from the broker (empty retained
messages). Promoting a version to another channel publishes only its manifest there.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.bundle import ENVELOPE_FILE, Manifest, check_file, iso_utc, parse_manifest, split_chunks
from shared.signing import load_private_key, sign

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    pass


@dataclass
class PublishReport:
    version: int
    channel: str
    chunks: int
    bytes: int
    replaced_version: int | None
    seconds: float


def manifest_of(envelope: bytes) -> Manifest:
    return parse_manifest(json.loads(envelope)["signed"])


@dataclass(frozen=True)
class BrokerOptions:
    url: str
    prefix: str = topics.DEFAULT_PREFIX
    client_id: str = "cloud-trainer"
    tls_files: tuple[str, str, str] = ("", "", "")  # CA, client certificate, client key
    timeout: float = 30.0


class BrokerConnection:
    """One MQTT connection of the trainer: confirmed publishes, retained reads, subscriptions."""

    def __init__(self, options: BrokerOptions) -> None:
        host, port, tls = topics.parse_broker_url(options.url)
        self.options = options
        self.timeout = options.timeout
        self.connected = threading.Event()
        self.refused: str | None = None
        self.messages: dict[str, bytes] = {}
        self._listeners: list[Callable[[str, bytes], None]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=options.client_id, protocol=mqtt.MQTTv5)
        if tls:
            ca, cert, key = options.tls_files
            self.client.tls_set(ca_certs=ca or None, certfile=cert or None, keyfile=key or None,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        try:
            self.client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise PublishError(f"cannot reach the broker at {options.url}: {e}") from None
        self.client.loop_start()
        if not self.connected.wait(self.timeout) or self.refused:
            self.close()
            raise PublishError(f"broker at {options.url} did not accept the connection: {self.refused or 'timeout'}")

    def __enter__(self) -> BrokerConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        self.messages[message.topic] = payload
        for listener in self._listeners:
            listener(message.topic, payload)

    def listen(self, subscription: str, listener: Callable[[str, bytes], None]) -> None:
        """Call ``listener(topic, payload)`` for every message on ``subscription`` (network thread)."""
        self._listeners.append(listener)
        self.client.subscribe(subscription, qos=1)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=self.timeout)
        if not info.is_published():
            raise PublishError(f"broker did not confirm the message on {topic} within {self.timeout}s")

    def retained(self, topic: str, wait: float = 1.0) -> bytes | None:
        self.messages.pop(topic, None)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and topic not in self.messages:
            time.sleep(0.02)
        self.client.unsubscribe(topic)
        return self.messages.get(topic) or None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- releases --------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return self.options.prefix

    def channel_manifest(self, fleet: str, channel: str) -> Manifest | None:
        envelope = self.retained(topics.manifest_topic(self.prefix, fleet, channel))
        if envelope is None:
            return None
        try:
            return manifest_of(envelope)
        except (ValueError, KeyError, TypeError):
            log.warning("the broker holds an unreadable %s manifest for fleet %s", channel, fleet)
            return None

    def release(self, envelope: bytes, channel: str, files: dict[str, bytes] | None) -> PublishReport:
        """Put ``envelope`` on ``channel``, after its chunks when ``files`` are given; then clear
        the chunks of the version it replaces if no channel names that version any more."""
        started = time.monotonic()
        manifest = manifest_of(envelope)
        fleet, version = manifest.fleet, manifest.version
        replaced = self.channel_manifest(fleet, channel)
        chunks = total = 0
        for name, data in (files or {}).items():
            check_file(manifest, name, data)
            for index, chunk in enumerate(split_chunks(data, manifest.chunk_size)):
                self.publish(topics.chunk_topic(self.prefix, fleet, version, name, index), chunk)
                chunks += 1
                total += len(chunk)
            log.info("published %s of version %d (%d bytes)", name, version, len(data))
        self.publish(topics.manifest_topic(self.prefix, fleet, channel), envelope)
        if replaced is not None and replaced.version != version:
            in_use = {m.version for c in topics.CHANNELS if (m := self.channel_manifest(fleet, c)) is not None}
            if replaced.version not in in_use:
                for name, entry in replaced.files.items():
                    for index in range(len(entry.chunks)):
                        self.publish(topics.chunk_topic(self.prefix, fleet, replaced.version, name, index), b"")
                log.info("cleared the chunks of superseded version %d", replaced.version)
        return PublishReport(version, channel, chunks, total, replaced.version if replaced else None,
                             round(time.monotonic() - started, 2))

    def fetch_files(self, manifest: Manifest) -> dict[str, bytes]:
        """The files of ``manifest`` from its retained chunks on the broker, verified."""
        base = topics.bundle_topic(self.prefix, manifest.fleet, manifest.version)
        wanted = {topics.chunk_topic(self.prefix, manifest.fleet, manifest.version, name, i): (name, i)
                  for name, entry in manifest.files.items() for i in range(len(entry.chunks))}
        got: dict[tuple[str, int], bytes] = {}
        done = threading.Event()

        def collect(topic: str, payload: bytes) -> None:
            if topic in wanted and payload:
                got[wanted[topic]] = payload
                if len(got) == len(wanted):
                    done.set()

        self.listen(base + "/#", collect)
        if not done.wait(self.timeout):
            raise PublishError(f"the broker does not hold every chunk of version {manifest.version} "
                               f"({len(got)} of {len(wanted)})")
        self.client.unsubscribe(base + "/#")
        files = {name: b"".join(got[(name, i)] for i in range(len(entry.chunks)))
                 for name, entry in manifest.files.items()}
        for name, data in files.items():
            check_file(manifest, name, data)
        return files


def rollback_instruction(earlier: Manifest, version: int, key_path: Path, valid_days: int = 90) -> bytes:
    """A signed manifest of a new, higher ``version`` that re-delivers ``earlier``'s files.

    Agents never install an older version (that is what stops replay and rollback attacks), so
    going back is an explicit, signed, newer release; agents that kept ``earlier`` reuse its files.
    """
    if version <= earlier.version:
        raise PublishError(f"a rollback needs a version above {earlier.version}")
    now = datetime.now(UTC)
    manifest = replace(earlier, version=version, created=iso_utc(now),
                       expires=iso_utc(now + timedelta(days=valid_days)), rollback_of=earlier.version)
    return sign(manifest.to_json(), load_private_key(key_path.read_bytes()))


def read_bundle(bundle_dir: Path) -> tuple[bytes, dict[str, bytes]]:
    envelope = (bundle_dir / ENVELOPE_FILE).read_bytes()
    manifest = manifest_of(envelope)
    return envelope, {name: (bundle_dir / name).read_bytes() for name in manifest.files}


def publish_bundle(bundle_dir: Path, options: BrokerOptions, channel: str = topics.STABLE) -> PublishReport:
    envelope, files = read_bundle(bundle_dir)
    with BrokerConnection(options) as connection:
        return connection.release(envelope, channel, files)

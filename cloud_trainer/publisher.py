"""Publishes a signed bundle over MQTT so that every agent, including late joiners, receives it.

Chunks go first, then the manifest, all retained with QoS 1 and each confirmed by the broker, so
an agent never sees a manifest whose chunks are not there yet. Chunks of the version the new one
replaces are then cleared from the broker (empty retained messages).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.bundle import ENVELOPE_FILE, Manifest, parse_manifest, split_chunks

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    pass


@dataclass
class PublishReport:
    version: int
    chunks: int
    bytes: int
    replaced_version: int | None
    seconds: float


def _manifest_of(envelope: bytes) -> Manifest:
    return parse_manifest(json.loads(envelope)["signed"])


class _Connection:
    def __init__(self, url: str, client_id: str, tls_files: tuple[str, str, str], timeout: float) -> None:
        host, port, tls = topics.parse_broker_url(url)
        self.timeout = timeout
        self.connected = threading.Event()
        self.refused: str | None = None
        self.messages: dict[str, bytes] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if tls:
            ca, cert, key = tls_files
            self.client.tls_set(ca_certs=ca or None, certfile=cert or None, keyfile=key or None,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.__setitem__(m.topic, bytes(m.payload))
        try:
            self.client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise PublishError(f"cannot reach the broker at {url}: {e}") from None
        self.client.loop_start()
        if not self.connected.wait(timeout) or self.refused:
            self.close()
            raise PublishError(f"broker at {url} did not accept the connection: {self.refused or 'timeout'}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
        self.connected.set()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=self.timeout)
        if not info.is_published():
            raise PublishError(f"broker did not confirm the message on {topic} within {self.timeout}s")

    def retained(self, topic: str, wait: float = 1.0) -> bytes | None:
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and topic not in self.messages:
            time.sleep(0.02)
        self.client.unsubscribe(topic)
        return self.messages.get(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_bundle(
    bundle_dir: Path,
    broker_url: str,
    *,
    prefix: str = topics.DEFAULT_PREFIX,
    client_id: str = "cloud-trainer",
    tls_files: tuple[str, str, str] = ("", "", ""),
    timeout: float = 30.0,
) -> PublishReport:
    started = time.monotonic()
    envelope = (bundle_dir / ENVELOPE_FILE).read_bytes()
    manifest = _manifest_of(envelope)
    fleet, version = manifest.fleet, manifest.version
    connection = _Connection(broker_url, client_id, tls_files, timeout)
    try:
        previous_envelope = connection.retained(topics.manifest_topic(prefix, fleet))
        previous: Manifest | None = None
        if previous_envelope:
            try:
                previous = _manifest_of(previous_envelope)
            except (ValueError, KeyError, TypeError):
                log.warning("the broker holds an unreadable manifest for fleet %s; replacing it", fleet)
        chunks = total = 0
        for name in manifest.files:
            data = (bundle_dir / name).read_bytes()
            for index, chunk in enumerate(split_chunks(data, manifest.chunk_size)):
                connection.publish(topics.chunk_topic(prefix, fleet, version, name, index), chunk)
                chunks += 1
                total += len(chunk)
            log.info("published %s (%d bytes)", name, len(data))
        connection.publish(topics.manifest_topic(prefix, fleet), envelope)
        if previous is not None and previous.version != version:
            for name, entry in previous.files.items():
                for index in range(len(entry.chunks)):
                    connection.publish(topics.chunk_topic(prefix, fleet, previous.version, name, index), b"")
            log.info("cleared the chunks of superseded version %d", previous.version)
    finally:
        connection.close()
    return PublishReport(version, chunks, total, previous.version if previous else None,
                         round(time.monotonic() - started, 2))

"""Publishes signed bundles over MQTT so that every agent, including late joiners, receives them.

Chunks go first, then the manifest on a channel's topic, all retained with QoS 1 and each
confirmed by the broker, so an agent never sees a manifest whose chunks are not there yet. Once
no channel names a version any more, its chunks are cleared from the broker (empty retained
messages). Promoting a version to another channel publishes only its manifest there.

Releasing is signing: with the signing key, the manifest is signed again naming the channels the
version is released to (agents refuse a version not released to their ring, so a canary manifest
copied to the stable topic installs nowhere). Manifests read back from the broker are verified
before anything is built on them (the broker is not trusted).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.bounded_json import JsonRejected, loads
from shared.bundle import ENVELOPE_FILE, BundleError, Manifest, check_file, iso_utc, parse_manifest, split_chunks
from shared.signing import SignatureError, load_private_key, sign, verify

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
    envelope: bytes = field(default=b"", repr=False)  # the signed manifest as published


def manifest_of(envelope: bytes, trusted: Ed25519PublicKey | None = None) -> Manifest:
    """The manifest in ``envelope``; verified against ``trusted`` when given."""
    if trusted is not None:
        return parse_manifest(verify(envelope, trusted))
    try:
        data = loads(envelope)
    except JsonRejected as e:
        raise PublishError(f"not a signed manifest: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("signed"), str):
        raise PublishError("not a signed manifest: no signed text")
    return parse_manifest(data["signed"])


def released_to(manifest: Manifest, channels: tuple[str, ...]) -> Manifest:
    """``manifest`` naming exactly ``channels`` (in ring order) as the channels it is released to."""
    return replace(manifest, channels=tuple(c for c in topics.CHANNELS if c in channels))


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

    def channel_manifest(self, fleet: str, channel: str, trusted: Ed25519PublicKey | None = None) -> Manifest | None:
        """The manifest retained on ``channel``; None if there is none, or (with ``trusted``) if it
        does not verify: someone with write access to the broker put it there."""
        envelope = self.retained(topics.manifest_topic(self.prefix, fleet, channel))
        if envelope is None:
            return None
        try:
            return manifest_of(envelope, trusted)
        except (PublishError, BundleError, SignatureError) as e:
            log.warning("the broker holds an unusable %s manifest for fleet %s: %s", channel, fleet, e)
            return None

    def release(self, envelope: bytes, channel: str, files: dict[str, bytes] | None,
                key: Ed25519PrivateKey | None = None, channels: tuple[str, ...] | None = None) -> PublishReport:
        """Put ``envelope`` on ``channel``, after its chunks when ``files`` are given; then clear
        the chunks of the version it replaces if no channel names that version any more.

        With ``key``, the manifest is signed again as released to ``channels`` (default: the
        channels it names plus ``channel``); without, it must already name ``channel``.
        """
        started = time.monotonic()
        trusted = key.public_key() if key is not None else None
        manifest = manifest_of(envelope, trusted)
        fleet, version = manifest.fleet, manifest.version
        if key is not None:
            manifest = released_to(manifest, channels if channels is not None else (*manifest.channels, channel))
            envelope = sign(manifest.to_json(), key)
        if channel not in manifest.channels:
            named = ", ".join(manifest.channels) or "no channel"
            raise PublishError(f"version {version} is signed as released to {named}, not {channel}: "
                               f"pass the signing key (--key) to sign its release to {channel}")
        replaced = self.channel_manifest(fleet, channel, trusted)
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
            in_use = {m.version for c in topics.CHANNELS
                      if (m := self.channel_manifest(fleet, c, trusted)) is not None}
            if replaced.version not in in_use:
                for name, entry in replaced.files.items():
                    for index in range(len(entry.chunks)):
                        self.publish(topics.chunk_topic(self.prefix, fleet, replaced.version, name, index), b"")
                log.info("cleared the chunks of superseded version %d", replaced.version)
        return PublishReport(version, channel, chunks, total, replaced.version if replaced else None,
                             round(time.monotonic() - started, 2), envelope)

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


def rollback_instruction(earlier: Manifest, version: int, key: Ed25519PrivateKey, revokes: tuple[int, ...] = (),
                         valid_days: int = 90) -> bytes:
    """A signed manifest of a new, higher ``version`` that re-delivers ``earlier``'s files and
    revokes the versions in ``revokes`` (the rollout it aborts), besides those ``earlier`` revoked.

    Agents never install an older version (that is what stops replay and rollback attacks), so
    going back is an explicit, signed, newer release; agents that kept ``earlier`` reuse its files.
    Agents remember revoked versions, so a replay of one is refused even where the instruction
    has not activated. Its channels are set when it is released (see :meth:`BrokerConnection.release`).
    """
    if version <= earlier.version:
        raise PublishError(f"a rollback needs a version above {earlier.version}")
    now = datetime.now(UTC)
    revoked = tuple(sorted(set(earlier.revokes) | {v for v in revokes if v < version}))
    manifest = replace(earlier, version=version, created=iso_utc(now),
                       expires=iso_utc(now + timedelta(days=valid_days)),
                       rollback_of=earlier.version, channels=(), revokes=revoked)
    return sign(manifest.to_json(), key)


def read_bundle(bundle_dir: Path) -> tuple[bytes, dict[str, bytes]]:
    envelope = (bundle_dir / ENVELOPE_FILE).read_bytes()
    manifest = manifest_of(envelope)
    return envelope, {name: (bundle_dir / name).read_bytes() for name in manifest.files}


def publish_bundle(bundle_dir: Path, options: BrokerOptions, channel: str = topics.STABLE,
                   key_path: Path | None = None) -> PublishReport:
    envelope, files = read_bundle(bundle_dir)
    key = None if key_path is None else load_private_key(key_path.read_bytes())
    with BrokerConnection(options) as connection:
        return connection.release(envelope, channel, files, key)

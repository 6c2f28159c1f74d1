"""The agent's MQTT adapter: subscribes to its fleet's model topics and publishes its status.

paho-mqtt 2.x with VERSION2 callbacks. Messages are handed to one worker thread so model loading
never blocks the network loop; the updater is only ever called from that thread. Connection is
asynchronous with backoff, so the agent serves with its last good model while the broker is away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.origin_fetch import OriginSettings
from edge_agent.origin_link import OriginChunk, OriginDone, OriginDownload, origin_chunks
from edge_agent.updater import Updater
from shared import topics
from shared.bundle import CHUNK_SIZE
from shared.signing import MAX_ENVELOPE_BYTES
from shared.topics import parse_broker_url

log = logging.getLogger(__name__)

#: Largest MQTT packet the agent accepts (MQTT 5 Maximum Packet Size, enforced by the broker: it
#: drops bigger messages instead of sending them). A chunk or an envelope plus topic and headers.
MAX_PACKET_BYTES = max(CHUNK_SIZE, MAX_ENVELOPE_BYTES) + 4096
#: Messages waiting for the update worker; when full, the network thread waits (TCP backpressure),
#: so a flood of chunks costs at most this many times MAX_PACKET_BYTES of memory.
INBOX_MESSAGES = 16
#: Statuses asked for by discarded messages are published at most this often (the last one wins).
THROTTLED_STATUS_S = 1.0
#: Topics per SUBSCRIBE/UNSUBSCRIBE packet, by default (``mqtt.subscribe_batch``; AWS IoT Core takes 8).
SUBSCRIBE_BATCH = 64
#: The heartbeat's message to the worker (no MQTT topic is empty).
_TICK = ("", b"")


@dataclass(frozen=True)
class BrokerSettings:
    url: str
    topic_prefix: str
    fleet: str
    device_id: str
    channel: str = topics.STABLE
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive: int = 30
    status_interval_s: float = 60.0
    subscribe_batch: int = SUBSCRIBE_BATCH
    origin: OriginSettings | None = None  # None: bundle files over MQTT only


class MqttLink:
    def __init__(
        self, settings: BrokerSettings, updater: Updater, status: Callable[[], dict[str, Any]],
        handlers: Mapping[str, Callable[[bytes], None]] | None = None,
    ) -> None:
        """``handlers``: other topics to follow (the business rules, the erasure list), each with
        the function the worker thread calls with a message's payload."""
        self.settings = settings
        self._handlers = dict(handlers or {})
        self.updater = updater
        self.status = status
        self.connected = threading.Event()
        self._inbox: queue.Queue[tuple[str, bytes] | OriginChunk | OriginDone | None] = queue.Queue(
            maxsize=INBOX_MESSAGES)
        self._stopping = threading.Event()
        self._status_lock = threading.Lock()
        self._status_pending = False
        self._status_at = 0.0  # monotonic time of the last throttled status
        self._chunk_subs: list[str] = []  # one subscription per missing chunk of the bundle being received
        self._chunk_version: int | None = None  # the version those subscriptions belong to
        self._origin: OriginDownload | None = None  # the origin thread of the download in flight
        self._origin_failed: set[int] = set()  # versions whose origin gave up: MQTT chunks only
        self._follow_lock = threading.Lock()  # the network thread follows the bundle too (on connect)
        prefix, fleet = settings.topic_prefix, settings.fleet
        rings = topics.followed_channels(settings.channel)
        self._manifest_topics = {  # topic -> where it is: (a later ring than our own?, our device's topic?)
            topics.manifest_topic(prefix, fleet, ring, device): (ring != settings.channel, device is not None)
            for ring in rings for device in (None, settings.device_id)
        }
        self._status_topic = topics.status_topic(prefix, fleet, settings.device_id)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=settings.device_id, protocol=mqtt.MQTTv5
        )
        host, port, tls = parse_broker_url(settings.url)
        self._host, self._port = host, port
        if tls:
            client.tls_set(
                ca_certs=settings.ca_file or None,
                certfile=settings.cert_file or None,
                keyfile=settings.key_file or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.will_set(self._status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self._worker = threading.Thread(target=self._work, name="model-updates", daemon=True)
        self._heartbeat = threading.Thread(target=self._beat, name="status-heartbeat", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.MaximumPacketSize = MAX_PACKET_BYTES
        self.client.connect_async(self._host, self._port, keepalive=self.settings.keepalive, properties=connect)
        self.client.loop_start()
        self._heartbeat.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.connected.is_set():
            info = self.client.publish(self._status_topic, json.dumps({"state": "offline"}), 1, True)
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
        if self._origin is not None:
            self._origin.cancel(wait_s=2)
        self._inbox.put(None)
        self._worker.join(timeout=10)
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=5)

    def publish_status(self) -> None:
        if not self.connected.is_set():
            return
        payload = {"state": "online", **self.status()}
        self.client.publish(self._status_topic, json.dumps(payload), qos=1, retain=True)

    def publish_aggregate(self, payload: bytes) -> bool:
        """Publish this device's fleet aggregate (retained, replacing the last); False when offline."""
        if not self.connected.is_set():
            return False
        topic = topics.aggregates_topic(self.settings.topic_prefix, self.settings.fleet, self.settings.device_id)
        self.client.publish(topic, payload, qos=1, retain=True)
        return True

    def request_status(self) -> None:
        """Publish the status now, or (if a throttled one went out less than THROTTLED_STATUS_S ago)
        once that time has passed: the worker flushes it."""
        with self._status_lock:
            self._status_pending = True
        self._flush_status()

    def _flush_status(self) -> None:
        with self._status_lock:
            if not self._status_pending or time.monotonic() - self._status_at < THROTTLED_STATUS_S:
                return
            self._status_pending, self._status_at = False, time.monotonic()
        self.publish_status()

    def refetch(self) -> None:
        """Subscribe again to every followed topic: the broker sends the retained messages once more
        (after a key rotation, those refused as signed by a key not yet trusted)."""
        if self.connected.is_set():
            self.client.subscribe([(topic, 1) for topic in [*self._manifest_topics, *self._handlers]])

    def _beat(self) -> None:
        while not self._stopping.wait(self.settings.status_interval_s):
            try:
                self.publish_status()
            except Exception:  # a status is not worth a dead heartbeat thread
                log.exception("could not publish the status")
            # the worker, the only caller of the updater, sees whether a deferred update has room
            # now; when it is busy with messages, the next beat will do
            with contextlib.suppress(queue.Full):
                self._inbox.put_nowait(_TICK)

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        log.info("connected to broker %s:%s", self._host, self._port)
        self.connected.set()
        client.subscribe([(topic, 1) for topic in [*self._manifest_topics, *self._handlers]])
        self._chunk_subs, self._chunk_version = [], None  # a new connection has no subscriptions
        self._follow_bundle()  # after a reconnect: what is still missing
        self.publish_status()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        self.connected.clear()
        if reason_code.is_failure:
            log.warning("lost the broker (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._post((message.topic, bytes(message.payload)))

    def _post(self, item: tuple[str, bytes] | OriginChunk | OriginDone) -> bool:
        """Hand ``item`` to the worker, waiting while its inbox is full; False once stopping."""
        while not self._stopping.is_set():
            try:
                self._inbox.put(item, timeout=1)
                return True
            except queue.Full:
                continue
        return False

    # -- worker thread ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=THROTTLED_STATUS_S if self._status_pending else None)
            except queue.Empty:
                self._flush_status()
                continue
            if item is None:
                return
            try:
                if isinstance(item, OriginChunk | OriginDone):
                    self._from_origin(item)
                else:
                    self._handle(*item)
            except Exception as e:  # whatever one message does, the worker lives and the status says so
                log.debug("error while handling an update message", exc_info=True)
                try:
                    self.updater.discard(f"internal_error: {type(e).__name__}: {str(e)[:200]}")
                except Exception:
                    log.exception("could not report an error of the update worker")
            self._flush_status()

    def _handle(self, topic: str, payload: bytes) -> None:
        if (topic, payload) == _TICK:
            if self.updater.retry_when_room():
                self._follow_bundle()
                self.publish_status()
            return
        if topic in self._handlers:
            self._handlers[topic](payload)
            return
        if topic in self._manifest_topics:
            if not payload:
                return  # retained manifest cleared
            later_ring, device_topic = self._manifest_topics[topic]
            self.updater.on_manifest(payload, later_ring=later_ring, device_topic=device_topic)
            self._follow_bundle()  # the status went out with the updater's report (throttled for junk)
            return
        version = self.updater.receiving()
        if version is None:
            return
        parsed = topics.parse_chunk_topic(self.settings.topic_prefix, self.settings.fleet, version, topic)
        if parsed is None or not payload:
            return
        if self.updater.on_chunk(version, parsed[0], parsed[1], payload):
            self._follow_bundle()

    def _from_origin(self, item: OriginChunk | OriginDone) -> None:
        if isinstance(item, OriginChunk):
            if self.updater.on_chunk(item.version, item.name, item.index, item.data, from_origin=True):
                self._follow_bundle()
            return
        if self.updater.receiving() != item.version:
            return  # completed (activated), or replaced by a newer version
        # gave up, or done while chunks are still missing (one the worker refused): the broker's turn
        log.warning("origin of version %s: %s; taking the missing chunks from the broker", item.version,
                    item.reason or "chunks still missing")
        self._origin_failed.add(item.version)
        self._chunk_version = None
        self._follow_bundle()

    def _follow_bundle(self) -> None:
        """Fetch exactly the chunks the current download still misses, so a resumed or partly reused
        download fetches only those: from the origin when the manifest lists URLs for their files
        (and it has not given up on this version), else by subscribing to their retained topics (the
        broker sends each at once)."""
        with self._follow_lock:
            version = self.updater.receiving()
            if version is not None and version == self._chunk_version:
                return  # still the same bundle: its subscriptions (or origin thread) stand
            fetch, manifest = self.updater.to_fetch(), self.updater.download_manifest()
            missing = [] if fetch is None else list(fetch.chunks)
            origin = self.settings.origin
            if self._origin is not None and self._origin.version != version:
                self._origin.cancel()
                self._origin = None
            if (origin is not None and manifest is not None and version not in self._origin_failed
                    and origin_chunks(manifest, missing)):
                if self._origin is None or not self._origin.alive():
                    self._origin = OriginDownload(manifest, missing, origin, self._post)
                    self._origin.start()
                over_origin = set(origin_chunks(manifest, missing))
                missing = [chunk for chunk in missing if chunk not in over_origin]
            self._subscribe_chunks(version, missing)

    def _subscribe_chunks(self, version: int | None, chunks: list[tuple[str, int]]) -> None:
        wanted = [] if version is None else [
            topics.chunk_topic(self.settings.topic_prefix, self.settings.fleet, version, name, index)
            for name, index in chunks
        ]
        old, self._chunk_subs, self._chunk_version = self._chunk_subs, wanted, version
        batch_size = self.settings.subscribe_batch
        for batch in range(0, len(old), batch_size):
            self.client.unsubscribe(old[batch : batch + batch_size])
        for batch in range(0, len(wanted), batch_size):
            self.client.subscribe([(t, 1) for t in wanted[batch : batch + batch_size]])

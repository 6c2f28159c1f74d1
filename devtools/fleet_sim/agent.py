"""One simulated agent: an asyncio MQTT client (aiomqtt, over paho) speaking the agent's protocol.

It connects with the agent's last will (retained ``{"state": "offline"}`` on its status topic),
follows the manifest topics of its ring (channel and device topics), verifies the envelope's
Ed25519 signature and the manifest's acceptability with the shared code, then fetches the bundle:
as retained MQTT chunks, subscribing in batches of ``SUBSCRIBE_BATCH`` topics like the agent, or in
origin mode over HTTPS from the manifest's ``urls`` with one HTTP Range request per chunk (a chunk
the origin gets wrong is refused and fetched as its MQTT chunk instead). Every chunk is checked
against its sha256, each file against its length and sha256, the catalog is parsed; then it
"activates" (the one shortcut: no interpreter is loaded) and publishes its status, as the agent
does, on connect, after each update and every ``status_interval_s``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.fleet_sim.assembly import BundleAssembly, FileAssembly, origin_urls
from devtools.fleet_sim.status import OFFLINE, StatusState
from shared import topics
from shared.bundle import check_acceptable, parse_manifest
from shared.errors import BundleError, ChunkRejected, RollbackRejected, SignatureError
from shared.signing import key_id, verify

#: As edge_agent.mqtt_link: topics per SUBSCRIBE, the largest packet accepted, the status throttle.
SUBSCRIBE_BATCH = 64
MAX_PACKET_BYTES = (1 << 20) + 4096
THROTTLED_STATUS_S = 1.0
MAX_BUNDLE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class AgentSettings:
    host: str
    port: int
    public_key: Ed25519PublicKey
    mode: str = "mqtt"  # "mqtt": chunks over MQTT; "origin": HTTPS from the manifest's urls
    prefix: str = topics.DEFAULT_PREFIX
    fleet: str = "default"
    channel: str = topics.STABLE
    keepalive: int = 30  # the agent's defaults (mqtt.keepalive, mqtt.status_interval_s)
    status_interval_s: float = 60.0
    #: MQTT 5 Receive Maximum announced at CONNECT (the agent announces none: the broker's
    #: max_inflight_messages, 20 by default, is the window); bench/README.md measures both.
    receive_maximum: int | None = None


@dataclass
class Counters:
    mqtt_chunks: int = 0
    origin_chunks: int = 0
    origin_bytes: int = 0
    statuses: int = 0
    max_backlog: int = 0  # most messages waiting in the agent's inbox at once
    activated_at: float | None = None  # epoch seconds


@dataclass
class Context:
    """What the agents of one process share: the origin's TLS context and the HTTP threads."""

    tls: ssl.SSLContext | None
    http_pool: ThreadPoolExecutor
    connect_slots: asyncio.Semaphore
    counters: dict[str, Counters] = field(default_factory=dict)


def fetch_files(tls: ssl.SSLContext | None, files: list[tuple[str, FileAssembly]]) -> tuple[dict[str, int], int]:
    """Fetch each file's missing chunks from its URL, one Range request per chunk, on one keep-alive
    HTTPS connection per origin (blocking: runs on a worker thread). (chunks refused per file, bytes
    received)."""
    conns: dict[tuple[str, int], http.client.HTTPSConnection] = {}
    refused: dict[str, int] = {}
    received = 0
    try:
        for url, assembly in files:
            parts = urlsplit(url)
            where = (parts.hostname or "", parts.port or 443)
            conn = conns.get(where) or conns.setdefault(
                where, http.client.HTTPSConnection(where[0], where[1], context=tls, timeout=30))
            for index in assembly.missing():
                start = index * assembly.chunk_size
                end = start + assembly.expected_length(index) - 1
                try:
                    conn.request("GET", parts.path, headers={"Range": f"bytes={start}-{end}"})
                    response = conn.getresponse()
                    body = response.read()
                    received += len(body)
                    if response.status != 206:
                        raise ChunkRejected(f"origin answered {response.status} to a range request")
                    assembly.add(index, body)
                except (OSError, http.client.HTTPException, ChunkRejected) as e:
                    if not isinstance(e, ChunkRejected):
                        conn.close()  # the next request reconnects
                    refused[assembly.name] = refused.get(assembly.name, 0) + 1
    finally:
        for conn in conns.values():
            conn.close()
    return refused, received


class SimAgent:
    def __init__(self, device_id: str, settings: AgentSettings, ctx: Context) -> None:
        self.settings, self.ctx, self.device_id = settings, ctx, device_id
        s = settings
        self.state = StatusState(device_id, s.fleet, s.channel, key_id(s.public_key))
        self.counters = ctx.counters.setdefault(device_id, Counters())
        self.status_topic = topics.status_topic(s.prefix, s.fleet, device_id)
        self.manifest_topics = [topics.manifest_topic(s.prefix, s.fleet, ring, device)
                                for ring in topics.followed_channels(s.channel) for device in (None, device_id)]
        self.assembly: BundleAssembly | None = None
        self.chunk_subs: list[str] = []
        self.connected = asyncio.Event()
        self._status_at = 0.0
        self._flush: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # origin downloads (asyncio keeps weak references)

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = MAX_PACKET_BYTES
        if s.receive_maximum is not None:
            props.ReceiveMaximum = s.receive_maximum
        will = aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True)
        client = aiomqtt.Client(s.host, s.port, identifier=self.device_id, protocol=aiomqtt.ProtocolVersion.V5,
                                will=will, keepalive=s.keepalive, properties=props, timeout=120)
        # Acknowledged once handled: the broker holds back more than max_inflight_messages (20) unacknowledged
        # messages, so an agent holds at most that many (the agent's paho thread stops reading when its inbox of
        # 16 is full). One asyncio loop cannot stop reading one socket: without this, thousands of agents'
        # chunks pile up in the simulator's memory. aiomqtt has no public switch for paho's manual acks.
        client._client.manual_ack_set(True)
        async with self.ctx.connect_slots:
            await client.__aenter__()
            await client.subscribe([(t, 1) for t in self.manifest_topics])
            await self.publish_status(client)
        self.connected.set()
        tasks = [asyncio.create_task(self._messages(client)), asyncio.create_task(self._heartbeat(client))]
        try:
            await stop.wait()
        finally:
            tasks += [*self._background, *([self._flush] if self._flush else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # a clean stop, as edge_agent.mqtt_link.MqttLink.stop
                await client.publish(self.status_topic, OFFLINE, qos=1, retain=True, timeout=5)
            finally:
                await client.__aexit__(None, None, None)

    async def publish_status(self, client: aiomqtt.Client) -> None:
        self._status_at = time.monotonic()
        self.counters.statuses += 1
        await client.publish(self.status_topic, json.dumps(self.state.online()), qos=1, retain=True)

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            await self.publish_status(client)

    async def _messages(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.counters.max_backlog = max(self.counters.max_backlog, len(client.messages) + 1)
            topic, payload = message.topic.value, message.payload
            if isinstance(payload, bytes | bytearray) and payload:
                if topic in self.manifest_topics:
                    await self._on_manifest(client, bytes(payload))
                else:
                    await self._on_chunk(client, topic, bytes(payload))
            if message.qos:
                client._client.ack(message.mid, message.qos)

    async def _discard(self, client: aiomqtt.Client, reason: str) -> None:
        """Count a refused message; the status says so at most every THROTTLED_STATUS_S (the last wins)."""
        self.state.discard(reason)
        wait = THROTTLED_STATUS_S - (time.monotonic() - self._status_at)
        if wait <= 0:
            await self.publish_status(client)
        elif self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._publish_later(client, wait))

    async def _publish_later(self, client: aiomqtt.Client, wait: float) -> None:
        await asyncio.sleep(wait)
        await self.publish_status(client)

    async def _on_manifest(self, client: aiomqtt.Client, envelope: bytes) -> None:
        s = self.settings
        try:
            signed = verify(envelope, s.public_key)
        except SignatureError as e:
            await self._discard(client, f"{e.reason}: {e}")
            return
        try:
            manifest = parse_manifest(signed)
            check_acceptable(manifest, fleet=s.fleet, active_version=self.state.model_version,
                             now=datetime.now(UTC), max_bundle_bytes=MAX_BUNDLE_BYTES, device_id=self.device_id,
                             rings=topics.followed_channels(s.channel))
        except BundleError as e:
            if not isinstance(e, RollbackRejected):  # the retained manifest of the version it runs
                self.state.report(None, "rejected", f"{e.reason}: {e}")
                await self.publish_status(client)
            return
        self.assembly = BundleAssembly(manifest)
        urls = origin_urls(signed) if s.mode == "origin" else {}
        if urls:
            task = asyncio.create_task(self._fetch_origin(client, self.assembly, urls))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            await self._follow(client, self.assembly.missing())

    async def _fetch_origin(self, client: aiomqtt.Client, assembly: BundleAssembly,
                            urls: dict[str, list[str]]) -> None:
        files = [(urls[name][0], file) for name, file in assembly.files.items() if urls.get(name)]
        loop = asyncio.get_running_loop()
        refused, received = await loop.run_in_executor(self.ctx.http_pool, fetch_files, self.ctx.tls, files)
        self.counters.origin_bytes += received
        self.counters.origin_chunks += sum(len(f.entry.chunks) - len(f.missing()) for _, f in files)
        for name, count in refused.items():
            await self._discard(client, f"chunk_rejected: {count} chunks of {name} from the origin")
        if assembly.complete:
            await self._activate(client, assembly)
        else:  # fall back to the MQTT chunks of what the origin did not deliver
            await self._follow(client, assembly.missing())

    async def _follow(self, client: aiomqtt.Client, wanted: list[tuple[str, int]]) -> None:
        assert self.assembly is not None
        s, version = self.settings, self.assembly.manifest.version
        await self._unfollow(client)
        self.chunk_subs = [topics.chunk_topic(s.prefix, s.fleet, version, name, i) for name, i in wanted]
        for batch in range(0, len(self.chunk_subs), SUBSCRIBE_BATCH):
            await client.subscribe([(t, 1) for t in self.chunk_subs[batch : batch + SUBSCRIBE_BATCH]])

    async def _unfollow(self, client: aiomqtt.Client) -> None:
        old, self.chunk_subs = self.chunk_subs, []
        for batch in range(0, len(old), SUBSCRIBE_BATCH):
            await client.unsubscribe(old[batch : batch + SUBSCRIBE_BATCH])

    async def _on_chunk(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        assembly = self.assembly
        if assembly is None or assembly.complete:
            return
        s = self.settings
        parsed = topics.parse_chunk_topic(s.prefix, s.fleet, assembly.manifest.version, topic)
        file = None if parsed is None else assembly.files.get(parsed[0])
        if parsed is None or file is None:
            return
        try:
            taken = file.add(parsed[1], payload)
        except ChunkRejected as e:
            await self._discard(client, f"chunk_rejected: {e}")
            return
        self.counters.mqtt_chunks += taken
        if assembly.complete:
            await self._unfollow(client)
            await self._activate(client, assembly)

    async def _activate(self, client: aiomqtt.Client, assembly: BundleAssembly) -> None:
        version = assembly.manifest.version
        try:
            assembly.activate()
        except BundleError as e:
            self.state.report(version, "failed", f"{e.reason}: {e}")
        else:
            self.state.model_version, self.state.model_expires = version, assembly.manifest.expires
            self.state.report(version, "activated", "")
            self.counters.activated_at = time.time()
        self.assembly = None
        await self.publish_status(client)

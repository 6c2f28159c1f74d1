"""Publishes signed bundles over MQTT so that every agent, including late joiners, receives them.

Chunks go first, then the manifest on a channel's topic, all retained with QoS 1 and each
confirmed by the broker, so an agent never sees a manifest whose chunks are not there yet. Once
no manifest names a version any more, its chunks are cleared from the broker (empty retained
messages). Promoting a version to another channel publishes only its manifest there.

A version whose manifest has ``targets`` (a store's own bundle) goes to each target device's
topic of the channel instead (:func:`shared.topics.manifest_topic`): the channel keeps its
fleet-wide version, and two stores' bundles never replace each other's retained manifest.

Releasing is signing: with the signing key, the manifest is signed again naming the channels the
version is released to (agents refuse a version not released to their ring, so a canary manifest
copied to the stable topic installs nowhere). Manifests read back from the broker are verified
before anything is built on them (the broker is not trusted).

Over the broker connection of :mod:`cloud_trainer.delivery.broker`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
from cloud_trainer.delivery.origin import with_origin, write_origin
from cloud_trainer.errors import ReleaseError, TransportError
from shared import topics
from shared.bounded_json import JsonRejected, loads
from shared.bundle import ENVELOPE_FILE, BundleError, Manifest, check_file, iso_utc, parse_manifest, split_chunks
from shared.signing import load_private_key, sign, verify

log = logging.getLogger(__name__)


@dataclass
class PublishReport:
    version: int
    channel: str
    chunks: int
    bytes: int
    replaced_version: int | None
    seconds: float
    envelope: bytes = field(default=b"", repr=False)  # the signed manifest as published
    targets: tuple[str, ...] = ()  # the devices whose own topics it went to; none: the channel's


def manifest_of(envelope: bytes, trusted: Ed25519PublicKey | None = None) -> Manifest:
    """The manifest in ``envelope``; verified against ``trusted`` when given."""
    if trusted is not None:
        return parse_manifest(verify(envelope, trusted))
    try:
        data = loads(envelope)
    except JsonRejected as e:
        raise ReleaseError(f"not a signed manifest: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("signed"), str):
        raise ReleaseError("not a signed manifest: no signed text")
    return parse_manifest(data["signed"])


def released_to(manifest: Manifest, channels: tuple[str, ...]) -> Manifest:
    """``manifest`` naming exactly ``channels`` (in ring order) as the channels it is released to."""
    return replace(manifest, channels=tuple(c for c in topics.CHANNELS if c in channels))


def channel_manifest(connection: BrokerConnection, fleet: str, channel: str,
                     trusted: Ed25519PublicKey | None = None) -> Manifest | None:
    """The manifest retained on ``channel``; None if there is none, or (with ``trusted``) if it
    does not verify: someone with write access to the broker put it there."""
    return _retained_manifest(connection, topics.manifest_topic(connection.prefix, fleet, channel), trusted)


def published_manifests(connection: BrokerConnection, fleet: str,
                        trusted: Ed25519PublicKey | None = None) -> dict[str, Manifest]:
    """{topic: manifest} of every manifest retained for the fleet: each channel's and each device's
    (with ``trusted``, those that verify)."""
    found = {}
    for topic, envelope in connection.retained_under(topics.all_manifests_topic(connection.prefix, fleet)).items():
        try:
            found[topic] = manifest_of(envelope, trusted)
        except (ReleaseError, BundleError) as e:
            log.warning("the broker holds an unusable manifest on %s: %s", topic, e)
    return found


def manifest_topics(prefix: str, manifest: Manifest, channel: str) -> list[str]:
    """Where ``manifest`` goes on ``channel``: its target devices' topics, or the channel's."""
    if not manifest.targets:
        return [topics.manifest_topic(prefix, manifest.fleet, channel)]
    return [topics.manifest_topic(prefix, manifest.fleet, channel, device) for device in manifest.targets]


def release(connection: BrokerConnection, envelope: bytes, channel: str, files: dict[str, bytes] | None,
            key: Ed25519PrivateKey | None = None, channels: tuple[str, ...] | None = None,
            on_chunk: Callable[[int, int], None] | None = None, origin_url: str | None = None) -> PublishReport:
    """Put ``envelope`` on ``channel`` (a targeted version: on each target's own topic of it), after
    its chunks when ``files`` are given; then clear the chunks of the versions it replaces if no
    manifest names them any more.

    With ``key``, the manifest is signed again as released to ``channels`` (default: the
    channels it names plus ``channel``); without, it must already name ``channel``. ``on_chunk(done,
    total)`` follows the chunks as they go (a progress bar). ``origin_url``: the base URL of the origin
    the files were written to (:mod:`cloud_trainer.delivery.origin`); each file's URL goes into the
    manifest, which is then signed again (with ``key``; without, it must already list them).
    """
    started = time.monotonic()
    trusted = key.public_key() if key is not None else None
    manifest = manifest_of(envelope, trusted)
    fleet, version = manifest.fleet, manifest.version
    if key is not None:
        manifest = released_to(manifest, channels if channels is not None else (*manifest.channels, channel))
    if origin_url is not None and (located := with_origin(manifest, origin_url)) != manifest:
        if key is None:
            raise ReleaseError(f"version {version} is not signed with the URLs under {origin_url}: pass the "
                               "signing key (--key) to sign them into its manifest")
        manifest = located
    if key is not None:
        envelope = sign(manifest.to_json(), key)
    if channel not in manifest.channels:
        named = ", ".join(manifest.channels) or "no channel"
        raise ReleaseError(f"version {version} is signed as released to {named}, not {channel}: "
                           f"pass the signing key (--key) to sign its release to {channel}")
    try:
        destinations = manifest_topics(connection.prefix, manifest, channel)
    except ValueError as e:  # a target that cannot be a topic level
        raise ReleaseError(f"version {version} cannot be published: {e}") from None
    replaced = [m for topic in destinations if (m := _retained_manifest(connection, topic, trusted)) is not None]
    chunks = total = 0
    all_chunks = sum(-(-len(data) // manifest.chunk_size) for data in (files or {}).values())
    for name, data in (files or {}).items():
        check_file(manifest, name, data)
        for index, chunk in enumerate(split_chunks(data, manifest.chunk_size)):
            connection.publish(topics.chunk_topic(connection.prefix, fleet, version, name, index), chunk)
            chunks += 1
            total += len(chunk)
            if on_chunk is not None:
                on_chunk(chunks, all_chunks)
        log.info("published %s of version %d (%d bytes)", name, version, len(data))
    for topic in destinations:
        connection.publish(topic, envelope)
    superseded = {m.version: m for m in replaced if m.version != version}
    if superseded or not manifest.targets:
        published = published_manifests(connection, fleet, trusted)
        if not manifest.targets:
            _warn_of_targeted(published, manifest, channel)
        in_use = {m.version for m in published.values()}
        for old in superseded.values():
            if old.version not in in_use:
                _clear(connection, old)
    return PublishReport(version, channel, chunks, total, max((m.version for m in replaced), default=None),
                         round(time.monotonic() - started, 2), envelope, manifest.targets)


def _retained_manifest(connection: BrokerConnection, topic: str, trusted: Ed25519PublicKey | None) -> Manifest | None:
    envelope = connection.retained(topic)
    if envelope is None:
        return None
    try:
        return manifest_of(envelope, trusted)
    except (ReleaseError, BundleError) as e:
        log.warning("the broker holds an unusable manifest on %s: %s", topic, e)
        return None


def _warn_of_targeted(published: dict[str, Manifest], manifest: Manifest, channel: str) -> None:
    """Devices run the newest version of their channel's and their own topic: a fleet-wide version
    newer than a device's own takes its place (a store leaves its assortment). Say so."""
    devices = sorted({t for m in published.values() if m.targets and m.version < manifest.version
                      and channel in m.channels for t in m.targets})
    if devices:
        log.warning("version %d is fleet-wide and newer than the versions targeted at %d devices (%s): they will "
                    "run it instead of their own bundles; publish newer bundles for them to go back",
                    manifest.version, len(devices), ", ".join(devices[:5]) + (", ..." if len(devices) > 5 else ""))


def _clear(connection: BrokerConnection, replaced: Manifest) -> None:
    """Clear the chunks of the ``replaced`` version from the broker."""
    for name, entry in replaced.files.items():
        for index in range(len(entry.chunks)):
            connection.publish(
                topics.chunk_topic(connection.prefix, replaced.fleet, replaced.version, name, index), b"")
    log.info("cleared the chunks of superseded version %d", replaced.version)


def fetch_files(connection: BrokerConnection, manifest: Manifest) -> dict[str, bytes]:
    """The files of ``manifest`` from its retained chunks on the broker, verified."""
    prefix = connection.prefix
    base = topics.bundle_topic(prefix, manifest.fleet, manifest.version)
    wanted = {topics.chunk_topic(prefix, manifest.fleet, manifest.version, name, i): (name, i)
              for name, entry in manifest.files.items() for i in range(len(entry.chunks))}
    got: dict[tuple[str, int], bytes] = {}
    done = threading.Event()

    def collect(topic: str, payload: bytes) -> None:
        if topic in wanted and payload:
            got[wanted[topic]] = payload
            if len(got) == len(wanted):
                done.set()

    connection.listen(base + "/#", collect)
    if not done.wait(connection.timeout):
        raise TransportError(f"the broker does not hold every chunk of version {manifest.version} "
                             f"({len(got)} of {len(wanted)})")
    connection.unsubscribe(base + "/#")
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
    has not activated. Its channels are set when it is released (see :func:`release`).
    """
    if version <= earlier.version:
        raise ReleaseError(f"a rollback needs a version above {earlier.version}")
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
                   key_path: Path | None = None, on_chunk: Callable[[int, int], None] | None = None,
                   origin_dir: Path | None = None, origin_url: str | None = None) -> PublishReport:
    """Publish the bundle in ``bundle_dir``; with ``origin_dir``, its files are written there first
    (``<fleet>/<version>/<file>``), and with ``origin_url`` their URLs are signed into the manifest."""
    envelope, files = read_bundle(bundle_dir)
    key = None if key_path is None else load_private_key(key_path.read_bytes())
    if origin_dir is not None:
        write_origin(origin_dir, manifest_of(envelope), files)  # before any agent can read the URLs
    with BrokerConnection(options) as connection:
        return release(connection, envelope, channel, files, key, on_chunk=on_chunk, origin_url=origin_url)

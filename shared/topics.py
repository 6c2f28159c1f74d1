"""MQTT topic names, in one place for the publisher, the agent and the broker ACL templates.

Layout under a prefix (default ``edge-rec/v1``)::

    <prefix>/<fleet>/manifest/<channel>                retained signed manifest of the channel's model
    <prefix>/<fleet>/manifest/<channel>/<device_id>    retained signed manifest of a version targeted
                                                       at that device (a store's own bundle)
    <prefix>/<fleet>/bundle/<version>/<file>/<index>   retained chunk <index> of a bundle file
    <prefix>/<fleet>/status/<device_id>                retained agent status (last will: offline)
    <prefix>/<fleet>/aggregates/<device_id>            retained fleet aggregate of the device's shoppers
                                                       (shared.fleet_aggregates; off unless enabled)
    <prefix>/<fleet>/rules                             retained signed business rules (shared.business_rules)
    <prefix>/<fleet>/rules/<device_id>                 retained signed rules targeted at that device
    <prefix>/<fleet>/erasure                           retained signed erasure list (shared.erasure)
    <prefix>/<fleet>/keys                              retained chain of signed key rotations (shared.key_rotation)

Channels are rollout rings: a version goes to ``canary`` first and is promoted to ``stable``.
Stable agents follow the stable manifest; canary agents follow both and run the newer.

A manifest whose ``targets`` name devices goes to each target's own topic instead of the channel's
(one retained message per topic: stores with different bundles must not replace each other's).
Every agent follows its own device topic beside the channel topic, of each ring it follows, and
runs the newest version among them.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

DEFAULT_PREFIX = "edge-rec/v1"
CANARY, STABLE = "canary", "stable"
#: Rollout rings, earliest first; an agent on a ring also follows every later one.
CHANNELS = (CANARY, STABLE)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: The tightest topic limits of common brokers (AWS IoT Core: a topic of at most 256 bytes with at
#: most 7 '/'; Mosquitto, EMQX, VerneMQ and HiveMQ allow far more by default). See docs/operations.md.
MAX_TOPIC_BYTES, MAX_TOPIC_SLASHES = 256, 7


def check_name(value: str, what: str) -> str:
    """Fleet, device and file names become topic levels: no wildcards, slashes or oddities."""
    if not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def manifest_topic(prefix: str, fleet: str, channel: str = STABLE, device_id: str | None = None) -> str:
    """The channel's manifest topic; with ``device_id``, that device's own one on the channel."""
    if channel not in CHANNELS:
        raise ValueError(f"channel {channel!r} must be one of {', '.join(CHANNELS)}")
    topic = f"{prefix}/{check_name(fleet, 'fleet')}/manifest/{channel}"
    return topic if device_id is None else f"{topic}/{check_name(device_id, 'device id')}"


def all_manifests_topic(prefix: str, fleet: str) -> str:
    """Subscription to every manifest of a fleet: each channel's and each device's."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/manifest/#"


def followed_channels(channel: str) -> tuple[str, ...]:
    """The channels an agent on ``channel`` takes manifests from: its own and every later ring."""
    return CHANNELS[CHANNELS.index(channel) :]


def bundle_topic(prefix: str, fleet: str, version: int) -> str:
    """The subtree holding every chunk of one bundle version (subscribe to ``<this>/#``)."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/bundle/{int(version)}"


def chunk_topic(prefix: str, fleet: str, version: int, file_name: str, index: int) -> str:
    return f"{bundle_topic(prefix, fleet, version)}/{check_name(file_name, 'file name')}/{int(index)}"


def parse_chunk_topic(prefix: str, fleet: str, version: int, topic: str) -> tuple[str, int] | None:
    """(file name, chunk index) for a chunk topic of this bundle, or None if it is not one."""
    base = bundle_topic(prefix, fleet, version) + "/"
    if not topic.startswith(base):
        return None
    parts = topic[len(base):].split("/")
    if len(parts) != 2 or not _NAME.match(parts[0]) or not parts[1].isdigit() or len(parts[1]) > 9:
        return None
    return parts[0], int(parts[1])


def status_topic(prefix: str, fleet: str, device_id: str) -> str:
    return f"{prefix}/{check_name(fleet, 'fleet')}/status/{check_name(device_id, 'device id')}"


def all_statuses_topic(prefix: str, fleet: str) -> str:
    """Subscription to every agent's status in a fleet."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/status/+"


def aggregates_topic(prefix: str, fleet: str, device_id: str) -> str:
    """Where a device publishes its shoppers' aggregate (:mod:`shared.fleet_aggregates`); only it may write."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/aggregates/{check_name(device_id, 'device id')}"


def all_aggregates_topic(prefix: str, fleet: str) -> str:
    """Subscription to every device's aggregate in a fleet (the trainer's)."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/aggregates/+"


def deepest_topics(prefix: str) -> list[str]:
    """The longest and the deepest topics the project uses under ``prefix`` (64-character names, the
    largest version and chunk index): what a broker's topic limits must admit."""
    name, version, index = "n" * 64, 2**53 - 1, 10**9 - 1
    return [chunk_topic(prefix, name, version, name, index), manifest_topic(prefix, name, CANARY, name)]


def broker_limit_problems(prefix: str) -> list[str]:
    """Why topics under ``prefix`` would not fit :data:`MAX_TOPIC_BYTES` / :data:`MAX_TOPIC_SLASHES`."""
    problems = []
    for topic in deepest_topics(prefix):
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            problems.append(f"{topic[:60]}... has {len(topic.encode())} bytes (at most {MAX_TOPIC_BYTES})")
        if topic.count("/") > MAX_TOPIC_SLASHES:
            problems.append(f"{topic[:60]}... has {topic.count('/')} '/' (at most {MAX_TOPIC_SLASHES})")
    return problems


def check_prefix(prefix: str) -> str:
    """A topic prefix: non-empty levels without MQTT wildcards, not a broker ($) topic."""
    levels = prefix.split("/")
    if not prefix or len(prefix) > 200 or any(not level for level in levels):
        raise ValueError(f"topic prefix {prefix!r} must be 1-200 characters of non-empty levels (no leading, "
                         "trailing or double '/')")
    if any(c in "#+" or c < " " or c == "\x7f" for c in prefix) or prefix.startswith("$"):
        raise ValueError(f"topic prefix {prefix!r} must not hold the wildcards '#' or '+', control characters, "
                         "or start with '$'")
    return prefix


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host[:port] or mqtts://host[:port]; nothing else is accepted."""
    problem = f"broker URL {url!r} must look like mqtt://host:1883 or mqtts://host:8883"
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:  # a port that is no number or above 65535, a bad IPv6 literal
        raise ValueError(f"{problem} (a port from 1 to 65535)") from None
    if parsed.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{problem}: the scheme is {parsed.scheme or 'missing'}")
    if not parsed.hostname:
        raise ValueError(f"{problem}: the host is missing")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{problem} (a port from 1 to 65535)")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ValueError(f"{problem}: no user, path or query")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, port or (8883 if tls else 1883), tls


def erasure_topic(prefix: str, fleet: str) -> str:
    """The fleet's retained, signed erasure list (:mod:`shared.erasure`); only the trainer writes it."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/erasure"


def rules_topic(prefix: str, fleet: str, device_id: str | None = None) -> str:
    """The fleet's retained, signed business rules (:mod:`shared.business_rules`); with ``device_id``,
    that device's own rules (a document whose ``targets`` name it)."""
    topic = f"{prefix}/{check_name(fleet, 'fleet')}/rules"
    return topic if device_id is None else f"{topic}/{check_name(device_id, 'device id')}"


def keys_topic(prefix: str, fleet: str) -> str:
    """The fleet's retained chain of signed key rotations (:mod:`shared.key_rotation`); only the trainer writes it."""
    return f"{prefix}/{check_name(fleet, 'fleet')}/keys"

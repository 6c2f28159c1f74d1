"""What the daemon opens at start, from the configuration: the API token, the pinned signing key,
the history store (finishing a master key rotation a crash interrupted) and the broker settings.
Each failure is a :class:`edge_agent.errors.StartupError` that names the setting to fix."""

from __future__ import annotations

import logging
import os
import secrets
import ssl
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.config import AgentConfig
from edge_agent.durable_files import write_atomic
from edge_agent.errors import StartupError
from edge_agent.history_store import HistoryStore
from edge_agent.key_rotation import finish_pending, key_loader
from edge_agent.master_key import resolve_path
from edge_agent.mqtt_link import BrokerSettings
from edge_agent.origin_fetch import OriginSettings
from shared import topics
from shared.errors import SignatureError
from shared.signing import load_public_key

log = logging.getLogger("edge_agent.daemon")


def load_token(path: Path) -> str:
    env = os.environ.get("EDGE_AGENT_API_TOKEN")
    if env:
        return env.strip()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, (secrets.token_urlsafe(32) + "\n").encode())  # a crash never leaves it empty
        log.info("created a new API token in %s", path)
    token = path.read_text().strip()
    if len(token) < 16:
        raise StartupError(f"API token in {path} is shorter than 16 characters")
    return token


def trusted_key(config: AgentConfig) -> Ed25519PublicKey:
    try:
        return load_public_key(config.model.trusted_public_key.read_bytes())
    except (OSError, SignatureError) as e:
        raise StartupError(f"cannot use model.trusted_public_key {config.model.trusted_public_key}: {e}") from e


def open_history(config: AgentConfig) -> HistoryStore:
    """The history store, after completing a master key rotation a crash interrupted."""
    data_dir, key_path = config.agent.data_dir, resolve_path(config.master_key_path)
    history = HistoryStore(
        data_dir,
        key_loader(data_dir, key_path),
        max_events_per_user=config.history.max_events_per_user,
        max_purchases_per_user=config.history.max_purchases_per_user,
        max_age_days=config.history.max_age_days,
        cache_users=config.history.cache_users,
    )
    if key_path == config.master_key_path:
        finish_pending(history.keyring, key_path)
    return history


def broker_settings(config: AgentConfig) -> BrokerSettings:
    for problem in topics.broker_limit_problems(config.mqtt.topic_prefix):
        log.warning("mqtt.topic_prefix: %s: AWS IoT Core would refuse such topics (docs/operations.md)", problem)
    return BrokerSettings(
        url=config.mqtt.url,
        topic_prefix=config.mqtt.topic_prefix,
        fleet=config.agent.fleet,
        device_id=config.agent.device_id,
        channel=config.agent.channel,
        ca_file=config.mqtt.ca_file,
        cert_file=config.mqtt.cert_file,
        key_file=config.mqtt.key_file,
        keepalive=config.mqtt.keepalive,
        status_interval_s=config.mqtt.status_interval_s,
        subscribe_batch=config.mqtt.subscribe_batch,
        origin=origin_settings(config),
    )


def origin_settings(config: AgentConfig) -> OriginSettings | None:
    """How bundle files are fetched from an origin; None when ``origin.enabled`` is false."""
    origin = config.origin
    if not origin.enabled:
        return None
    if origin.ca_file:
        try:
            ssl.create_default_context(cafile=origin.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise StartupError(f"cannot use origin.ca_file {origin.ca_file}: {e}") from None
    return OriginSettings(ca_file=origin.ca_file, timeout_s=origin.timeout_s,
                          min_rate_bytes_per_s=origin.min_rate_bytes_per_s,
                          chunks_per_request=origin.chunks_per_request, retries=origin.retries,
                          retry_after_s=origin.retry_after_s)

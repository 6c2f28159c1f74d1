"""Agent configuration: a documented, strictly validated schema loaded from a TOML profile.

Every field has a type, a default and a description; unknown keys, wrong types and out-of-range
values are errors that name the key (``api.port: must be an integer from 1 to 65535, got 'x'``).
Secrets are never read from these files: the master key and API token come from files with 0600
permissions (or a systemd credential / environment variable), whose paths are configured here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from shared import fleet_aggregates
from shared.bundle import MODEL_VARIANTS
from shared.events import REMEMBERED_PURCHASES_PER_USER, RETENTION_DAYS, STORED_EVENTS_PER_USER
from shared.outcomes import DEFAULT_ATTRIBUTION_WINDOW_S, DEFAULT_MIN_SHOPPERS
from shared.topics import CHANNELS, DEFAULT_PREFIX, STABLE, check_name, check_prefix, parse_broker_url


def _opt(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "choices": choices})


@dataclass(frozen=True)
class AgentSection:
    device_id: str = _opt("edge-1", "Unique device name; MQTT client id and status topic level.")
    fleet: str = _opt("default", "Fleet whose models this agent installs.")
    channel: str = _opt(STABLE, "Rollout ring: canary agents get new versions before stable ones.",
                        choices=CHANNELS)
    data_dir: Path = _opt(Path("/var/lib/edge-agent"), "Where models, history and keys live (0700).")
    log_level: str = _opt("INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _opt("text", "Log lines as text, or json: one object a line (time, level, logger, message).",
                           choices=("text", "json"))


@dataclass(frozen=True)
class ModelSection:
    trusted_public_key: Path = _opt(
        Path("/etc/edge-agent/model-signing.pub"), "Ed25519 public key (PEM) that must sign manifests."
    )
    variant: str = _opt("int8", "Model variant this box runs.", choices=MODEL_VARIANTS)
    num_threads: int = _opt(1, "Interpreter threads.", lo=1, hi=16)
    max_bundle_bytes: int = _opt(256 * 1024 * 1024, "Largest bundle accepted.", lo=1024, hi=4 * 1024**3)
    trial_s: int = _opt(300, "A new model is rolled back if the agent dies 3 times within this many seconds "
                             "of serving it.", lo=5, hi=86_400)


@dataclass(frozen=True)
class MqttSection:
    url: str = _opt("mqtt://127.0.0.1:1883", "Broker URL, mqtt://host:port or mqtts://host:port.")
    topic_prefix: str = _opt(DEFAULT_PREFIX, "Prefix of every topic.")
    ca_file: str = _opt("", "CA certificate (PEM) for mqtts.")
    cert_file: str = _opt("", "Client certificate (PEM) for mqtts.")
    key_file: str = _opt("", "Client private key (PEM) for mqtts.")
    keepalive: int = _opt(30, "MQTT keepalive in seconds.", lo=5, hi=3600)
    status_interval_s: int = _opt(60, "How often the agent republishes its status (health figures).", lo=1, hi=86_400)
    subscribe_batch: int = _opt(64, "Topics per SUBSCRIBE/UNSUBSCRIBE packet (AWS IoT Core takes at most 8).",
                                lo=1, hi=1024)


@dataclass(frozen=True)
class OriginSection:
    """Bundle files over HTTP(S) from the origin URLs a signed manifest lists (docs/operations.md);
    the origin is not trusted: every chunk is checked against the manifest, MQTT is the fallback."""

    enabled: bool = _opt(True, "Fetch bundle files from the manifest's origin URLs (HTTP Range requests) before "
                               "asking the broker for chunks.")
    ca_file: str = _opt("", "CA certificates (PEM) that https origins must chain to; empty: the system store.")
    timeout_s: float = _opt(10.0, "Seconds to connect, and at most between two reads of a response.", lo=0.5, hi=300)
    min_rate_bytes_per_s: int = _opt(16_384, "A request must finish within timeout_s plus its bytes at this rate; "
                                             "a slower origin is given up (then MQTT).", lo=1, hi=10**9)
    chunks_per_request: int = _opt(16, "Chunks one Range request asks for at most.", lo=1, hi=1024)
    retries: int = _opt(2, "Further attempts after a failed request (resuming at the first missing chunk) before "
                           "the missing chunks are taken from the broker.", lo=0, hi=20)
    retry_after_s: float = _opt(5.0, "Seconds between attempts.", lo=0.0, hi=3600)


@dataclass(frozen=True)
class HistorySection:
    master_key_file: str = _opt("", "Device master key file (0600); default <data_dir>/master.key.")
    max_events_per_user: int = _opt(STORED_EVENTS_PER_USER, "Events kept per shopper; older ones are deleted.",
                                    lo=1, hi=100_000)
    max_purchases_per_user: int = _opt(
        REMEMBERED_PURCHASES_PER_USER, "Distinct bought items remembered per shopper for exclude=purchased, "
        "also past max_events_per_user (the most recently bought).", lo=0, hi=100_000)
    max_age_days: int = _opt(RETENTION_DAYS, "Events older than this are deleted.", lo=1, hi=3650)
    sweep_interval_s: int = _opt(3600, "How often expired events are removed.", lo=10, hi=86_400)
    cache_users: int = _opt(
        1000, "Recent histories kept decrypted in memory (most recent users; 0 = none).", lo=0, hi=1_000_000
    )


@dataclass(frozen=True)
class ApiSection:
    host: str = _opt("127.0.0.1", "Bind address of the REST API.")
    port: int = _opt(8080, "Port of the REST API.", lo=1, hi=65535)
    threads: int = _opt(4, "Request threads.", lo=1, hi=64)
    token_file: str = _opt("", "Bearer token file (0600); default <data_dir>/api-token, created if absent.")
    max_body_bytes: int = _opt(1024 * 1024, "Largest request body; a larger declared body is refused on its headers.",
                               lo=1024, hi=64 * 1024 * 1024)
    max_connections: int = _opt(512, "Connections served at once; more wait in the listen backlog.", lo=8, hi=4096)
    request_timeout_s: int = _opt(10, "A request must arrive whole within this many seconds of its first byte "
                                      "(slow clients are cut off); idle connections close after as long.",
                                  lo=1, hi=300)
    max_k: int = _opt(100, "Largest k a client may ask for.", lo=1, hi=1000)
    server: str = _opt("granian", "HTTP server: granian (Rust, in this process; TLS) or waitress (the fallback; "
                                  "no TLS).", choices=("granian", "waitress"))
    tls_cert_file: str = _opt("", "TLS certificate chain (PEM) of the API; with tls_key_file the API speaks only "
                                  "HTTPS. Weak setups are refused at start (docs/security.md).")
    tls_key_file: str = _opt("", "TLS private key (PEM, unencrypted, 0600; EC P-256+ or RSA 2048+).")
    tokens_file: str = _opt("", "Named, scoped API tokens (0600), one a line: name scope[,scope] token "
                                "[rate_per_s=N] [burst=N]; scopes recommend, events, admin.")
    default_token: bool = _opt(True, "Also accept the single token of token_file / EDGE_AGENT_API_TOKEN, with every "
                                     "scope (named default); false once tokens_file names every client.")
    rate_limit_per_s: float = _opt(0.0, "Requests a second each token may make on average (0: no limit); "
                                        "a tokens_file line may set its own.", lo=0.0, hi=100_000.0)
    rate_limit_burst: int = _opt(20, "Requests a token may make at once before rate_limit_per_s applies.",
                                 lo=1, hi=100_000)


@dataclass(frozen=True)
class ExperimentSection:
    holdout_share: float = _opt(0.0, "Share of shoppers (a stable hash of their id) served the popularity list "
                                     "instead of the model: the control the model's lift is measured against.",
                                lo=0.0, hi=0.5)
    control: str = _opt("popular", "What the holdout gets: popular = the model's popularity list under the same "
                                   "filters; previous = the version the model replaced, kept loaded (twice the model "
                                   "memory; a canary then measures new against old on the same shoppers).",
                        choices=("popular", "previous"))
    salt: str = _opt("holdout-1", "Salt of the holdout hash; change it to draw a new holdout (same on every device).")
    attribution_window_s: int = _opt(DEFAULT_ATTRIBUTION_WINDOW_S, "A cart or purchase of a recommended item this "
                                     "many seconds after the request counts as its conversion.", lo=1, hi=30 * 86_400)
    impressions: str = _opt("auto", "auto: every served item counts as shown; app: only impression events the app "
                                    "sends count.", choices=("auto", "app"))
    min_shoppers: int = _opt(DEFAULT_MIN_SHOPPERS, "A cell (model version x arm) is reported in the status only once "
                                                   "this many distinct shoppers were served in it.", lo=5, hi=100_000)
    max_tracked_requests: int = _opt(20_000, "Requests remembered for attribution (memory and disk bound; the "
                                             "oldest go first).", lo=100, hi=1_000_000)
    save_interval_s: int = _opt(60, "How often the outcome ledger is sealed to disk (and at a clean stop).",
                                lo=1, hi=3600)


@dataclass(frozen=True)
class AggregatesSection:
    """The fleet aggregate (shared.fleet_aggregates): thresholded item and item-pair counts of this
    device's shoppers, published for the trainer. Off unless enabled."""

    enabled: bool = _opt(False, "Publish the fleet aggregate of this device's shoppers (no shopper ids).")
    interval_s: int = _opt(21_600, "Seconds between publications (the first after one interval).", lo=1, hi=30 * 86_400)
    min_shoppers: int = _opt(fleet_aggregates.DEFAULT_MIN_SHOPPERS, "An item or pair is published only if at "
                             "least this many distinct shoppers of this device make it.", lo=2, hi=1_000_000)
    max_pairs: int = _opt(fleet_aggregates.DEFAULT_MAX_PAIRS, "Item pairs published at most (those with the most "
                          "shoppers).", lo=0, hi=fleet_aggregates.MAX_PAIRS)


@dataclass(frozen=True)
class ErasureSection:
    """Fleet-wide erasure (shared.erasure): requests name shoppers by a digest keyed with this secret."""

    secret_file: str = _opt("", "The fleet's erasure secret (64 hex digits, a 0600 file; the same on every device "
                                "and for the trainer); empty: fleet erasure requests are not applied.")


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection = field(default_factory=AgentSection)
    model: ModelSection = field(default_factory=ModelSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    origin: OriginSection = field(default_factory=OriginSection)
    history: HistorySection = field(default_factory=HistorySection)
    api: ApiSection = field(default_factory=ApiSection)
    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    aggregates: AggregatesSection = field(default_factory=AggregatesSection)
    erasure: ErasureSection = field(default_factory=ErasureSection)

    @property
    def master_key_path(self) -> Path:
        configured = self.history.master_key_file
        return Path(configured) if configured else self.agent.data_dir / "master.key"

    @property
    def token_path(self) -> Path:
        return Path(self.api.token_file) if self.api.token_file else self.agent.data_dir / "api-token"


def _convert(key: str, value: Any, kind: Any, meta: typing.Mapping[str, Any]) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
    elif kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        value = float(value)
    elif kind in (str, Path):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        value = kind(value)
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}: must be from {lo} to {hi}, got {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    return cls(**{k: _convert(f"{name}.{k}", v, hints[k], fields[k].metadata) for k, v in raw.items()})


def from_mapping(raw: dict[str, Any]) -> AgentConfig:
    sections = {f.name: f for f in dataclasses.fields(AgentConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(sections)})")
    hints = typing.get_type_hints(AgentConfig)
    config = AgentConfig(**{name: _section(name, hints[name], value) for name, value in raw.items()})
    checks: list[tuple[str, Callable[[], object]]] = [
        ("agent.device_id", lambda: check_name(config.agent.device_id, "the name")),
        ("agent.fleet", lambda: check_name(config.agent.fleet, "the name")),
        ("mqtt.url", lambda: parse_broker_url(config.mqtt.url)),
        ("mqtt.topic_prefix", lambda: check_prefix(config.mqtt.topic_prefix)),
        ("api.host", lambda: check_host(config.api.host)),
    ]
    for key, check in checks:
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    _check_api(config.api)
    tls_files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(config.mqtt, k)]
    if tls_files and not config.mqtt.url.startswith("mqtts://"):
        raise ConfigError(f"mqtt.{tls_files[0]}: is set, but mqtt.url {config.mqtt.url!r} is not mqtts:// "
                          "(the connection would not use TLS)")
    return config


def _check_api(api: ApiSection) -> None:
    if bool(api.tls_cert_file) != bool(api.tls_key_file):
        given, missing = ("tls_cert_file", "tls_key_file") if api.tls_cert_file else ("tls_key_file", "tls_cert_file")
        raise ConfigError(f"api.{missing}: must be set with api.{given} (TLS needs a certificate and its key)")
    if api.tls_cert_file and api.server != "granian":
        raise ConfigError("api.tls_cert_file: TLS needs api.server = \"granian\" (waitress has no TLS)")
    if not api.default_token and not api.tokens_file:
        raise ConfigError("api.default_token: false needs api.tokens_file (no token would be accepted)")


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> str:
    """An IP address or a DNS name (RFC 1123) to bind to."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"{section}: must be a table")
    target[name] = value


def load(path: Path, overrides: typing.Sequence[str] = ()) -> AgentConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for assignment in overrides:
        _apply_override(raw, assignment)
    return from_mapping(raw)

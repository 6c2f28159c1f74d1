"""Wires the agent together and runs it until SIGTERM/SIGINT.

Start-up order: config -> master key -> history store -> installed model (if any) -> REST API ->
MQTT (asynchronous, so a missing broker never stops the agent serving its last good model).
Shutdown: stop accepting requests, let in-flight ones finish, publish offline, close the store.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType

from edge_agent import http_server, tls_files
from edge_agent.active_model import ActiveModel
from edge_agent.api import Services, create_app
from edge_agent.api_tokens import TokenSet, token_set
from edge_agent.config import AgentConfig
from edge_agent.erasure import fleet_erasure
from edge_agent.errors import StartupError
from edge_agent.granian_server import GranianServer
from edge_agent.liveness import Liveness, healthz_probe
from edge_agent.metrics import AgentMetrics, ModelFacts
from edge_agent.model_store import ModelStore
from edge_agent.mqtt_link import MqttLink
from edge_agent.outcome_file import OutcomeFile
from edge_agent.outcome_ledger import OutcomeLedger
from edge_agent.rules_store import RulesStore
from edge_agent.sd_notify import Notifier
from edge_agent.startup import broker_settings, load_token, open_history, trusted_key
from edge_agent.stock_store import StockStore
from edge_agent.trust_store import TrustStore
from edge_agent.update_report import Outcome, UpdateResult
from edge_agent.updater import Updater
from shared import topics

log = logging.getLogger(__name__)

#: How long a stop waits for requests in flight.
DRAIN_S = 10.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        data_dir = config.agent.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the provisioned key is the root of trust; key rotations (edge_agent.trust_store) move on from it
        self.trust = trusted = TrustStore(data_dir, trusted_key(config), fleet=config.agent.fleet)
        self.history = open_history(config)
        self.stock = StockStore(data_dir)  # the store's stock and local prices (PUT /v1/stock)
        self.active = ActiveModel(keep_control=config.experiment.control == "previous")
        self.updater = Updater(
            ModelStore(data_dir),
            self.active,
            trusted,
            fleet=config.agent.fleet,
            device_id=config.agent.device_id,
            channel=config.agent.channel,
            max_bundle_bytes=config.model.max_bundle_bytes,
            num_threads=config.model.num_threads,
            on_report=self._on_update,
            trial_s=config.model.trial_s,
        )
        experiment = config.experiment
        self.outcomes = OutcomeLedger(window_s=experiment.attribution_window_s,
                                      max_requests=experiment.max_tracked_requests,
                                      min_shoppers=experiment.min_shoppers,
                                      auto_impressions=experiment.impressions == "auto")
        self.outcome_file = OutcomeFile(data_dir, self.history.keyring)
        self.outcome_file.load_into(self.outcomes)
        self.erasure = fleet_erasure(config, trusted, self.history, self.outcomes)
        prefix, fleet, device = config.mqtt.topic_prefix, config.agent.fleet, config.agent.device_id
        self.rules = RulesStore(data_dir, trusted, fleet=fleet, device_id=device)
        handlers: dict[str, Callable[[bytes], None]] = {
            topics.keys_topic(prefix, fleet): self._on_keys,
            topics.rules_topic(prefix, fleet): partial(self._on_rules, device_topic=False),
            topics.rules_topic(prefix, fleet, device): partial(self._on_rules, device_topic=True)}
        if self.erasure is not None:
            handlers[topics.erasure_topic(prefix, fleet)] = self._on_erasure
        self.link = MqttLink(broker_settings(config), self.updater, self.status, handlers)
        self.metrics = AgentMetrics(self._model_facts, self.history.size_bytes)
        self.token = load_token(config.token_path) if config.api.default_token else ""
        api = config.api
        self.tokens: TokenSet = token_set(self.token, Path(api.tokens_file) if api.tokens_file else None,
                                          api.rate_limit_per_s, api.rate_limit_burst)
        services = Services(
            active=self.active,
            history=self.history,
            token=self.token,
            tokens=self.tokens,
            metrics=self.metrics,
            outcomes=self.outcomes,
            holdout_share=experiment.holdout_share,
            holdout_salt=experiment.salt,
            max_body_bytes=config.api.max_body_bytes,
            max_k=config.api.max_k,
            max_history=config.history.max_events_per_user,
            rules=self.rules,
            stock=self.stock,
            trust=self.trust,
        )
        self.app = create_app(services)
        self._server: GranianServer | http_server.WaitressServer | None = None
        self._stopping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._liveness: Liveness | None = None

    def _on_update(self, result: UpdateResult) -> None:
        self.metrics.count_update(result.result, result.reason)
        if result.result is Outcome.DISCARDED:
            self.link.request_status()  # throttled: a flood of junk is not a flood of statuses
        else:
            self.link.publish_status()

    def _on_rules(self, payload: bytes, device_topic: bool) -> None:
        self.rules.on_message(payload, device_topic)
        self.link.request_status()

    def _on_keys(self, payload: bytes) -> None:
        """A chain of key rotations (MQTT worker thread): once the trusted keys change, a download
        signed by a key rotated out stops, and what was refused before is delivered again."""
        if self.trust.on_message(payload):
            self.updater.trust_changed()
            self.link.refetch()
        self.link.request_status()

    def _on_erasure(self, payload: bytes) -> None:
        """A fleet erasure list (MQTT worker thread): apply it, then acknowledge in the status."""
        assert self.erasure is not None
        if self.erasure.on_message(payload):
            try:
                self.outcome_file.save(self.outcomes)  # the sealed ledger forgets them now, not at the next save
            except Exception:
                log.exception("could not save the outcome ledger after an erasure; will retry")
        self.link.request_status()

    def _model_facts(self) -> ModelFacts | None:
        model = self.active.current
        if model is None:
            return None
        return ModelFacts(
            version=model.version,
            expires_at=model.manifest.expires_at.timestamp(),
            num_items=len(model.catalog.items),
            loaded_at=model.loaded_at,
        )

    def status(self) -> dict[str, object]:
        model = self.active.current
        last = self.active.last_update
        return {
            "device_id": self.config.agent.device_id,
            "fleet": self.config.agent.fleet,
            "channel": self.config.agent.channel,
            "model_version": model.version if model else None,
            "model_expires": model.manifest.expires if model else None,
            # a model past its manifest's expiry still serves, but the fleet must see it is stale
            # (a frozen update channel: someone withholds newer manifests)
            "model_stale": model.manifest.expires_at.timestamp() < time.time() if model else None,
            "runtime": model.runtime if model else None,
            "last_update": last.to_json() if last else None,
            "discarded": self.active.discarded.to_json(),
            "health": self.metrics.health.snapshot(),
            "outcomes": self.outcomes.status(),  # aggregates only: see shared.outcomes
            "rules": self.rules.status(),
            "erasure": self.erasure.status() if self.erasure else None,  # counts only: see edge_agent.erasure
            "keys": self.trust.status(),  # key ids and the rotation version: see edge_agent.trust_store
            "at": round(time.time(), 3),
        }

    def listen(self) -> None:
        """Open the REST API's sockets; StartupError if the address cannot be bound."""
        api = self.config.api
        limits = http_server.ServerLimits(max_body_bytes=api.max_body_bytes, max_connections=api.max_connections,
                                          request_timeout_s=api.request_timeout_s, threads=api.threads)
        tls = tls_files.check(Path(api.tls_cert_file), Path(api.tls_key_file)) if api.tls_cert_file else None
        try:
            if api.server == "granian":
                self._server = GranianServer(self.app, api.host, api.port, limits, tls)
            else:
                self._server = http_server.WaitressServer(self.app, api.host, api.port, self.tokens, limits)
        except (OSError, ValueError) as e:  # in use, not an address of this host, a name that does not resolve
            raise StartupError(f"api: cannot listen on {api.host}:{api.port}: {e}") from e

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (call :meth:`listen` first)."""
        self.updater.boot()
        assert self._server is not None, "listen() first"
        for host, port in self._server.listening():
            log.info("REST API (%s) listening on %s://%s:%s", self.config.api.server, self._server.scheme, host, port)
        if self._server.scheme == "http" and not all(ipaddress.ip_address(h).is_loopback
                                                     for h, _ in self._server.listening()):
            log.warning("the REST API is reachable from the network without TLS: tokens and shoppers' data cross "
                        "the LAN in clear; set api.tls_cert_file and api.tls_key_file (docs/security.md)")
        self.link.start()
        self._sweeper = threading.Thread(target=self._sweep_history, name="history-retention", daemon=True)
        self._sweeper.start()
        threading.Thread(target=self._commit_trials, name="model-trial", daemon=True).start()
        threading.Thread(target=self._save_outcomes, name="outcome-ledger", daemon=True).start()
        if self.config.aggregates.enabled:
            threading.Thread(target=self._publish_aggregates, name="fleet-aggregates", daemon=True).start()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # READY=1 and watchdog pings only once, and while, the server answers /healthz (systemd Type=notify)
        self._liveness = Liveness(Notifier(), healthz_probe(self._server.scheme, self._server.listening()[0]))
        self._liveness.start()
        try:
            self._server.serve()
        finally:
            self.shutdown()

    def _commit_trials(self) -> None:
        while not self._stopping.wait(1.0):
            try:
                self.updater.commit_if_due()
            except OSError:
                log.exception("could not end the model's trial; will retry")

    def _save_outcomes(self) -> None:
        while not self._stopping.wait(self.config.experiment.save_interval_s):
            try:
                self.outcome_file.save(self.outcomes)
            except Exception:
                log.exception("could not save the outcome ledger; will retry")

    def _publish_aggregates(self) -> None:
        """Every ``aggregates.interval_s``: the thresholded aggregate of the shoppers' kept events
        (:mod:`edge_agent.cooccurrence`; no shopper id leaves the device) to the aggregates topic."""
        from edge_agent.cooccurrence import aggregate

        settings = self.config.aggregates
        while not self._stopping.wait(settings.interval_s):
            try:
                payload = aggregate(self.history.histories(), self.config.agent.device_id, time.time(),
                                    min_shoppers=settings.min_shoppers, max_pairs=settings.max_pairs).to_bytes()
                if self.link.publish_aggregate(payload):
                    log.info("published the fleet aggregate (%d bytes)", len(payload))
            except Exception:
                log.exception("could not publish the fleet aggregate; will retry")

    def _sweep_history(self) -> None:
        while not self._stopping.is_set():
            try:
                removed = self.history.sweep()
                if removed:
                    log.info("retention: removed %d expired history records", removed)
            except Exception:
                log.exception("retention sweep failed; will retry")
            self._stopping.wait(self.config.history.sweep_interval_s)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        if self._server is not None:
            self._server.stop()
        raise SystemExit(0)

    def shutdown(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._liveness is not None:
            self._liveness.stopping()
        if self._server is not None:
            self._server.drain(DRAIN_S)  # in-flight requests finish first
        self.link.stop()
        try:
            self.updater.stopped_cleanly()
        except OSError:
            log.exception("could not record the clean stop of the model on trial")
        if self._sweeper is not None:
            self._sweeper.join(timeout=30)
        try:
            self.outcome_file.save(self.outcomes)
        except Exception:
            log.exception("could not save the outcome ledger at the stop")
        self.history.close()
        self.stock.close()
        log.info("stopped")

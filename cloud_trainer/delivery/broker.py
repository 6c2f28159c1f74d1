"""The trainer's MQTT connection to the broker: confirmed retained publishes, retained reads and
subscriptions (TLS with client certificates for ``mqtts://``). What is published over it is
:mod:`cloud_trainer.delivery.publisher`'s business."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_trainer.errors import TransportError
from shared import topics


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
            raise TransportError(f"cannot reach the broker at {options.url}: {e}") from e
        self.client.loop_start()
        if not self.connected.wait(self.timeout) or self.refused:
            self.close()
            raise TransportError(f"broker at {options.url} did not accept the connection: {self.refused or 'timeout'}")

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
        for listener in list(self._listeners):  # (a copy: retained_under removes its own)
            listener(message.topic, payload)

    def listen(self, subscription: str, listener: Callable[[str, bytes], None]) -> None:
        """Call ``listener(topic, payload)`` for every message on ``subscription`` (network thread)."""
        self._listeners.append(listener)
        self.client.subscribe(subscription, qos=1)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=self.timeout)
        if not info.is_published():
            raise TransportError(f"broker did not confirm the message on {topic} within {self.timeout}s")

    def retained(self, topic: str, wait: float = 1.0) -> bytes | None:
        self.messages.pop(topic, None)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and topic not in self.messages:
            time.sleep(0.02)
        self.client.unsubscribe(topic)
        return self.messages.get(topic) or None

    def retained_under(self, subscription: str, wait: float = 2.0, quiet: float = 0.3) -> dict[str, bytes]:
        """{topic: payload} of the retained messages matching a wildcard ``subscription``.

        The broker sends them at once after subscribing, so collecting stops ``quiet`` seconds after
        the last one came (at most ``wait`` seconds; that long when there are none)."""
        got: dict[str, bytes] = {}
        last = [time.monotonic()]

        def collect(topic: str, payload: bytes) -> None:
            if mqtt.topic_matches_sub(subscription, topic):
                got[topic] = payload
                last[0] = time.monotonic()

        self._listeners.append(collect)
        self.client.subscribe(subscription, qos=1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (not got or time.monotonic() - last[0] < quiet):
            time.sleep(0.02)
        self.client.unsubscribe(subscription)
        self._listeners.remove(collect)
        return {topic: payload for topic, payload in got.items() if payload}

    def unsubscribe(self, subscription: str) -> None:
        """Stop receiving ``subscription``'s messages."""
        self.client.unsubscribe(subscription)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def prefix(self) -> str:
        return self.options.prefix

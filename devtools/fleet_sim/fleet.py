"""Simulated agents spread over worker processes (one asyncio loop each, so no single Python
process bounds the run), and the status board that watches the fleet over MQTT as an operator
would: who is online, who reports which version, whose last will fired."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devtools.fleet_sim.agent import AgentSettings, Context, SimAgent
from shared import topics
from shared.signing import load_public_key


def raise_open_files() -> int:
    """The soft limit of open files raised to the hard one (a socket per agent); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass(frozen=True)
class WorkerSpec:
    host: str
    port: int
    public_key_pem: bytes
    mode: str
    device_ids: tuple[str, ...]
    ca_file: str | None = None
    status_interval_s: float = 60.0
    keepalive: int = 30
    connect_concurrency: int = 64
    http_threads: int = 8
    receive_maximum: int | None = None


async def _serve(spec: WorkerSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    tls = ssl.create_default_context(cafile=spec.ca_file) if spec.ca_file else None
    ctx = Context(tls, ThreadPoolExecutor(spec.http_threads), asyncio.Semaphore(spec.connect_concurrency))
    settings = AgentSettings(spec.host, spec.port, load_public_key(spec.public_key_pem), mode=spec.mode,
                             keepalive=spec.keepalive, status_interval_s=spec.status_interval_s,
                             receive_maximum=spec.receive_maximum)
    agents = [SimAgent(device, settings, ctx) for device in spec.device_ids]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(agent.run(stop)) for agent in agents]
    all_connected = asyncio.ensure_future(asyncio.gather(*(agent.connected.wait() for agent in agents)))
    while not all_connected.done():
        pending: list[asyncio.Future[Any]] = [all_connected, *tasks]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            conn.send(("error", repr(failed[0].exception())))
            break
    else:
        conn.send(("connected", len(agents)))
    await loop.run_in_executor(None, conn.recv)  # the parent says stop
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    conn.send(("done", {device: asdict(c) for device, c in ctx.counters.items()}, errors[:5]))
    ctx.http_pool.shutdown()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    raise_open_files()
    asyncio.run(_serve(spec, conn))


class Fleet:
    """``n_agents`` simulated agents (``sim-00000``...) over ``workers`` processes."""

    def __init__(self, n_agents: int, workers: int, make_spec: Callable[[tuple[str, ...]], WorkerSpec]) -> None:
        self.devices = [f"sim-{i:05d}" for i in range(n_agents)]
        context = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        for w in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=worker_main, args=(make_spec(tuple(self.devices[w::workers])), child),
                                   name=f"fleet-sim-{w}", daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)

    def wait_connected(self, timeout: float) -> None:
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"simulated agents did not connect within {timeout} s")
            try:
                message = pipe.recv()
            except EOFError:
                raise RuntimeError("a simulation worker died before its agents connected") from None
            if message[0] != "connected":
                raise RuntimeError(f"a simulation worker failed: {message[1]}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill(self, workers: list[int]) -> None:
        """SIGKILL these workers: their sockets close without DISCONNECT, as at a power cut."""
        for w in workers:
            os.kill(self.procs[w].pid, signal.SIGKILL)
            self.procs[w].join(10)

    def stop(self, timeout: float = 120) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Stop every live worker cleanly; the agents' counters and any errors."""
        counters: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for proc, pipe in zip(self.procs, self.pipes, strict=True):
            if proc.is_alive():
                with contextlib.suppress(BrokenPipeError, EOFError):
                    pipe.send("stop")
                if proc.is_alive() and pipe.poll(timeout):
                    _, got, errs = pipe.recv()
                    counters.update(got)
                    errors += errs
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return counters, errors


class StatusBoard:
    """Every status of the fleet (a paho subscriber to ``status/+``): the latest per device and
    when each first reported a version."""

    def __init__(self, port: int, prefix: str = topics.DEFAULT_PREFIX, fleet: str = "default") -> None:
        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        self.version_at: dict[tuple[str, int], float] = {}
        self.last_online: dict[str, Any] = {}
        self.messages = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"status-board-{os.getpid()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.all_statuses_topic(prefix, fleet), qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        status = json.loads(message.payload) if message.payload else {}
        device = message.topic.rsplit("/", 1)[1]
        with self.lock:
            self.messages += 1
            self.latest[device] = status
            version = status.get("model_version")
            if status.get("state") == "online":
                self.last_online = status
            if status.get("state") == "online" and isinstance(version, int):
                self.version_at.setdefault((device, version), time.perf_counter())

    def count(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        with self.lock:
            return sum(1 for status in self.latest.values() if predicate(status))

    def wait(self, predicate: Callable[[dict[str, Any]], bool], n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(predicate) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def online(status: dict[str, Any]) -> bool:
    return status.get("state") == "online"


def offline(status: dict[str, Any]) -> bool:
    return status.get("state") == "offline"


def on_version(version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda status: online(status) and status.get("model_version") == version

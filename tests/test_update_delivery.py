"""Delivering models: resume after a kill, kill -9 at any moment, swaps under load, crash-looping models.

Real Mosquitto, real agent processes, real files; chunks are published by hand where a test
needs to hold some back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from devtools.processes import AgentProcess, Broker
from harness import (
    RawClient,
    StatusWatcher,
    chunk_messages,
    fresh_bundle,
    get_json,
    manifest_of,
    publish,
    resigned,
    serving_agent,
    start_agent,
    verify_installed,
    wait_for,
)
from shared import topics
from shared.bundle import CATALOG_FILE, ENVELOPE_FILE, MODEL_FILE
from shared.signing import load_public_key
from shared.topics import CHANNELS

MANIFEST_TOPIC = topics.manifest_topic(topics.DEFAULT_PREFIX, "default")


def serving(agent: AgentProcess) -> int | None:
    status, body = get_json(agent, "/readyz")
    return body.get("model_version") if status == 200 else None


def kill_9(agent: AgentProcess) -> None:
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
    agent.stop()  # closes its log file


def staged_chunks_present(work: Path, bundle: Path, wanted: list[tuple[str, int, str, bytes]]) -> bool:
    manifest = manifest_of(bundle)
    for name, index, _, data in wanted:
        path = work / "agent" / "models" / "staging" / str(manifest.version) / name
        try:
            with open(path, "rb") as f:
                f.seek(index * manifest.chunk_size)
                if f.read(len(data)) != data:
                    return False
        except FileNotFoundError:
            return False
    return True


def test_download_resumes_after_kill_9_and_fetches_only_the_missing_chunks(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    with serving_agent(int8_bundle, broker, keys, tmp_path) as agent:
        bundle = fresh_bundle(int8_bundle, keys, tmp_path, 1001)
        catalog = [c for c in chunk_messages(bundle) if c[0] == CATALOG_FILE]
        assert len(catalog) >= 4
        sent, held_back = catalog[: len(catalog) // 2], catalog[len(catalog) // 2 :]
        attacker = RawClient(broker, "trainer")
        try:
            for _, _, topic, data in sent:
                attacker.publish(topic, data)
            attacker.publish(MANIFEST_TOPIC, (bundle / ENVELOPE_FILE).read_bytes())
            assert wait_for(lambda: staged_chunks_present(tmp_path, bundle, sent), 20)
            kill_9(agent)  # mid-transfer
            for _, _, topic, data in held_back:
                attacker.publish(topic, data)
        finally:
            attacker.close()
    watcher = StatusWatcher(broker)
    agent = start_agent(broker.url, keys, tmp_path)
    try:
        agent.wait_ready(60)
        assert wait_for(lambda: serving(agent) == 1001, 20), agent.log()
        assert wait_for(lambda: watcher.latest.get("model_version") == 1001, 10)
        reason = watcher.latest["last_update"]["reason"]
        # the model file came from the installed v1000, half the catalog from staging
        assert f"{len(held_back)} chunks received" in reason, reason
        assert f"resumed: {len(chunk_messages(bundle)) - len(held_back)} of" in agent.log()
    finally:
        watcher.close()
        agent.stop()


def _pointed_versions_verify(work: Path, trusted: Ed25519PublicKey) -> tuple[int, int | None]:
    """(active, previous) as models/active.json names them; both complete and genuine."""
    pointer = json.loads((work / "agent" / "models" / "active.json").read_bytes())
    for version in (pointer["version"], pointer["previous"]):
        if version is not None:
            verify_installed(work / "agent" / "models" / "versions" / str(version), trusted)
    return pointer["version"], pointer["previous"]


def test_kill_9_at_any_moment_of_an_update_leaves_an_agent_on_the_old_or_the_new_model(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    trusted = load_public_key((keys / "signing.pub").read_bytes())
    publish(int8_bundle, broker)
    agent = start_agent(broker.url, keys, tmp_path)
    trainer = RawClient(broker, "trainer")
    try:
        agent.wait_ready(60)
        old = 1000
        for n, delay in enumerate([0.0, 0.02, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6]):
            new = 1001 + n
            bundle = fresh_bundle(int8_bundle, keys, tmp_path, new)
            for _, _, topic, data in chunk_messages(bundle):
                trainer.publish(topic, data)
            trainer.publish(MANIFEST_TOPIC, (bundle / ENVELOPE_FILE).read_bytes())
            time.sleep(delay)
            kill_9(agent)
            assert _pointed_versions_verify(tmp_path, trusted)[0] in (old, new)  # what the kill left on disk
            agent = start_agent(broker.url, keys, tmp_path)
            agent.wait_ready(60)  # never without a model
            assert serving(agent) in (old, new)
            restarted = agent
            assert wait_for(lambda: serving(restarted) == new, 20), agent.log()  # noqa: B023 - called at once
            old = new
    finally:
        trainer.close()
        agent.stop()


def test_swapping_models_under_load_fails_no_request(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    with serving_agent(int8_bundle, broker, keys, tmp_path) as agent:
        stop = threading.Event()
        outcomes: Counter[str] = Counter()
        versions: Counter[int] = Counter()

        def shopper(n: int) -> None:
            request = urllib.request.Request(
                f"{agent.base_url}/v1/recommendations?user_id=load-{n}&k=10",
                headers={"Authorization": f"Bearer {agent.token}"},
            )
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        body = json.loads(response.read())
                        outcomes[str(response.status)] += 1
                        versions[body["model_version"]] += 1
                except urllib.error.HTTPError as e:
                    outcomes[str(e.code)] += 1
                except OSError as e:
                    outcomes[type(e).__name__] += 1

        agent.request("POST", "/v1/events", json.dumps(
            [{"user_id": f"load-{n}", "item_id": _some_item(int8_bundle),
              "event": "purchase"} for n in range(4)]).encode())
        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            for version in (1001, 1002, 1003):
                publish(fresh_bundle(int8_bundle, keys, tmp_path, version), broker)
                assert wait_for(lambda v=version: serving(agent) == v, 20)  # type: ignore[misc]
                time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert set(outcomes) == {"200"}, outcomes
        assert {1000, 1001, 1002, 1003} <= set(versions), versions
        assert outcomes["200"] > 100


def _some_item(bundle: Path) -> str:
    return str(json.loads((bundle / CATALOG_FILE).read_bytes())["items"][0]["id"])


def test_models_that_fail_to_load_or_self_test_are_never_activated(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    """Genuinely signed, yet broken: the agent keeps serving the old model and says why."""
    with serving_agent(int8_bundle, broker, keys, tmp_path) as agent:
        watcher = StatusWatcher(broker)
        try:
            contract = manifest_of(int8_bundle).model
            wrong_contract = resigned(int8_bundle, keys, tmp_path / "v1001", version=1001,
                                      model=replace(contract, top_k=contract.top_k - 1))
            mark = watcher.mark()
            publish(wrong_contract, broker)
            assert "self-test" in watcher.wait_update("load_failed", mark)["last_update"]["reason"]
            assert watcher.latest["last_update"]["result"] == "failed"

            source = tmp_path / "not-a-model"
            shutil.copytree(int8_bundle, source)
            (source / MODEL_FILE).write_bytes(b"TFL3 but not really a model" * 100)
            mark = watcher.mark()
            publish(resigned(source, keys, tmp_path / "v1002", version=1002), broker)
            assert "does not load" in watcher.wait_update("load_failed", mark)["last_update"]["reason"]
            assert serving(agent) == 1000
            staging = tmp_path / "agent" / "models" / "staging"
            assert list(staging.iterdir()) == []  # failed downloads are cleaned up

            publish(fresh_bundle(int8_bundle, keys, tmp_path, 1003), broker)
            assert wait_for(lambda: serving(agent) == 1003, 20)
        finally:
            watcher.close()


def test_a_model_that_kills_the_agent_while_loading_is_refused_after_two_attempts(
    int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    """What a crash inside the interpreter leaves on disk: the load marker, with no end."""
    from edge_agent.active_model import ActiveModel
    from edge_agent.model_store import ModelStore
    from edge_agent.update_report import UpdateResult
    from edge_agent.updater import Updater

    store = ModelStore(tmp_path)
    reports: list[UpdateResult] = []
    trusted = load_public_key((keys / "signing.pub").read_bytes())

    def restarted_agent() -> Updater:
        updater = Updater(store, ActiveModel(), trusted, fleet="default", max_bundle_bytes=1 << 30,
                          num_threads=1, on_report=reports.append)
        updater.boot()
        return updater

    envelope = (int8_bundle / ENVELOPE_FILE).read_bytes()
    assert store.begin_load(1000) == 1  # the first load of v1000 dies
    restarted_agent()
    assert store.refused() == set()  # one death may be bad luck (power, OOM killer): it is tried again
    assert store.begin_load(1000) == 2  # and dies again
    updater = restarted_agent()
    assert store.refused() == {1000} and store.interrupted_load() is None
    assert reports[-1].result == "failed" and reports[-1].reason.startswith("crashed:")
    assert updater.on_manifest(envelope) is None
    assert reports[-1].result == "rejected" and reports[-1].reason.startswith("crashed:")
    # a good model loads and clears the marker
    other = Updater(ModelStore(tmp_path / "other"), ActiveModel(), trusted, fleet="default",
                    max_bundle_bytes=1 << 30, num_threads=1)
    assert other.on_manifest(envelope) == 1000
    for name, index, _, data in chunk_messages(int8_bundle):
        other.on_chunk(1000, name, index, data)
    assert other.active.current is not None and other.store.interrupted_load() is None


def test_a_model_that_keeps_killing_the_agent_on_trial_is_rolled_back_and_a_committed_one_is_not(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    """kill -9 stands in for a crash in the interpreter while serving (what systemd would restart).
    A third agent on trial is stopped cleanly (SIGTERM) as often: clean stops are no crashes."""
    publish(int8_bundle, broker)
    settings = {"long": "model.trial_s=600", "short": "model.trial_s=5", "clean": "model.trial_s=600"}
    for name in settings:
        (tmp_path / name).mkdir()

    def start(name: str) -> AgentProcess:
        return start_agent(broker.url, keys, tmp_path / name, settings[name], f'agent.device_id="{name}"')

    agents = {name: start(name) for name in settings}
    try:
        for agent in agents.values():
            agent.wait_ready(60)
        publish(fresh_bundle(int8_bundle, keys, tmp_path, 1001), broker)
        assert wait_for(lambda: all(serving(agent) == 1001 for agent in agents.values()), 30)
        time.sleep(6)  # the short trial ends: version 1001 is committed on that agent
        for death in range(3):
            kill_9(agents["long"])
            kill_9(agents["short"])
            agents["clean"].stop()
            agents = {name: start(name) for name in settings}
            for agent in agents.values():
                agent.wait_ready(60)
            assert serving(agents["short"]) == 1001
            assert serving(agents["clean"]) == 1001
            assert serving(agents["long"]) == (1001 if death < 2 else 1000)
        on_trial = agents["long"]
        last = get_json(on_trial, "/v1/model")[1]["last_update"]
        assert last["result"] in ("failed", "rejected") and last["reason"].startswith("crashed:"), last
        assert "rolled back to 1000" in on_trial.log()
        time.sleep(1)  # the retained v1001 manifest arrived again, and was refused
        assert serving(on_trial) == 1000 and serving(agents["short"]) == 1001 and serving(agents["clean"]) == 1001
    finally:
        for agent in agents.values():
            agent.stop()


def test_a_model_answering_garbage_for_some_shoppers_falls_back_to_popular_items_and_says_so(
    broker: Broker, int8_bundle: Path, trained_run: Path, keys: Path, tmp_path: Path
) -> None:
    """A signed float32 model whose vector for one item is NaN: it passes its self-test (a query of
    the most popular item) and answers every history holding that item with NaN scores."""
    import keras

    from cloud_trainer.delivery.bundler import BundleOptions, write_bundle
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.models.dot_product import extract_weights

    weights = extract_weights(keras.models.load_model(trained_run / "model.keras"))
    catalog = json.loads((int8_bundle / CATALOG_FILE).read_bytes())
    poisoned = next(i for i in range(len(catalog["items"])) if i != catalog["popular"][0])
    weights.history_embedding[poisoned] = np.nan
    contract = manifest_of(int8_bundle).model
    model = to_tflite(weights, contract.history_length, contract.top_k, "float32", (np.zeros(0), np.zeros(0)),
                      explanations=False)
    write_bundle(tmp_path / "poisoned", model, (int8_bundle / CATALOG_FILE).read_bytes(),
                 replace(contract, variant="float32"), keys / "signing.key",
                 BundleOptions(version=1001, channels=CHANNELS), {})
    publish(tmp_path / "poisoned", broker)
    agent = start_agent(broker.url, keys, tmp_path, "mqtt.status_interval_s=1")
    try:
        agent.wait_ready(60)
        assert serving(agent) == 1001
        bad, good = catalog["items"][poisoned]["id"], catalog["items"][catalog["popular"][0]]["id"]
        agent.request("POST", "/v1/events", json.dumps([
            {"user_id": "unlucky", "item_id": bad, "event": "purchase"},
            {"user_id": "lucky", "item_id": good, "event": "purchase"}]).encode())
        status, unlucky = get_json(agent, "/v1/recommendations?user_id=unlucky&k=5")
        assert status == 200 and unlucky["fallback"] is True and len(unlucky["items"]) == 5
        status, lucky = get_json(agent, "/v1/recommendations?user_id=lucky&k=5")
        assert status == 200 and lucky["fallback"] is False
        metrics = agent.request("GET", "/metrics")[1].decode()
        assert "edge_agent_model_output_errors_total 1.0" in metrics
        watcher = StatusWatcher(broker)
        try:
            assert wait_for(lambda: (watcher.latest.get("health") or {}).get("model_errors") == 1, 10), watcher.latest
        finally:
            watcher.close()
        assert "answered a query with garbage" in agent.log() and bad not in agent.log()
    finally:
        agent.stop()


def test_a_30_s_broker_outage_in_the_middle_of_a_transfer(
    int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    """The broker (persistent, as in production) stops for 30 s while an agent is half-way through
    a bundle: the agent keeps serving, reconnects, resubscribes to what it misses, finishes."""
    from devtools.processes import free_port

    port, state = free_port(), tmp_path / "broker"
    state.mkdir()
    config = state / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                      f"persistence_location {state}/\nlog_dest file {state}/mosquitto.log\n"
                      + ("user root\n" if os.geteuid() == 0 else ""))
    broker = Broker(state, port, config)
    publish(int8_bundle, broker)
    agent = start_agent(broker.url, keys, tmp_path, "mqtt.status_interval_s=1")
    try:
        agent.wait_ready(60)
        bundle = fresh_bundle(int8_bundle, keys, tmp_path, 1001)
        catalog = [c for c in chunk_messages(bundle) if c[0] == CATALOG_FILE]
        sent, held_back = catalog[: len(catalog) // 2], catalog[len(catalog) // 2 :]
        trainer = RawClient(broker, "trainer")
        for _, _, topic, data in sent:
            trainer.publish(topic, data)
        trainer.publish(MANIFEST_TOPIC, (bundle / ENVELOPE_FILE).read_bytes())
        trainer.close()
        assert wait_for(lambda: staged_chunks_present(tmp_path, bundle, sent), 20)

        broker.stop()
        down = time.monotonic()
        served = 0
        while time.monotonic() - down < 30:  # the outage: the agent keeps answering
            assert serving(agent) == 1000
            status, body = get_json(agent, "/v1/recommendations?user_id=outage-shopper&k=3")
            assert status == 200 and len(body["items"]) == 3
            served += 1
            time.sleep(1)
        broker = Broker(state, port, config)  # same port, retained messages restored from disk
        trainer = RawClient(broker, "trainer")
        for _, _, topic, data in held_back:
            trainer.publish(topic, data)
        trainer.close()
        assert wait_for(lambda: serving(agent) == 1001, 90), agent.log()
        watcher = StatusWatcher(broker)
        try:
            assert wait_for(lambda: watcher.latest.get("model_version") == 1001, 10), watcher.latest
            assert watcher.latest["state"] == "online"
            assert f"{len(catalog)} chunks received" in watcher.latest["last_update"]["reason"]  # each once
        finally:
            watcher.close()
        assert served >= 25
    finally:
        agent.stop()
        broker.stop()

"""Per-store bundles end to end: one chain-wide model, two stores with two assortments, each
bundle published to its store's own manifest topic; real Mosquitto, real agents, real HTTP.

Each agent must end up ranking only its own store's items (read through the REST API), the
second store's bundle must not replace the first one's retained manifest or clear its chunks,
and a store without a bundle of its own keeps the chain-wide one.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devtools.processes import AgentProcess, Broker
from harness import StatusWatcher, get_json, manifest_of, post_events, publish, start_agent, wait_for
from shared import topics
from shared.catalog import parse_catalog

STORES = ("store-1", "store-2")
VERSIONS = {"store-1": 2001, "store-2": 2002, "store-3": 1000}  # store-3 has no bundle of its own
UNKNOWN = ["NOT-IN-THE-RUN-1", "NOT-IN-THE-RUN-2"]


@pytest.fixture(scope="module")
def run_ids(trained_run: Path) -> list[str]:
    import keras

    num_items = keras.models.load_model(trained_run / "model.keras").output_shape[-1]
    return list(parse_catalog((trained_run / "catalog.json").read_bytes(), num_items).index_of())


@pytest.fixture(scope="module")
def store_bundles(trained_run: Path, keys: Path, run_ids: list[str],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    """{store: (its bundle, the ids it sells)}: store-1 through the CLI from a CSV file holding two
    ids the run does not know, store-2 in process from a plain list of ids."""
    from cloud_trainer.cli import main
    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from shared.topics import CHANNELS

    work = tmp_path_factory.mktemp("stores")
    first, second = run_ids[0::3], run_ids[1::3]
    (work / "store-1.csv").write_text("item_id,facings\n" + "".join(f"{i},2\n" for i in [*first, *UNKNOWN]))
    (work / "store-2.txt").write_text("# store 2\n" + "\n".join(second) + "\n")
    code = main(["export", "--run", str(trained_run), "--key", str(keys / "signing.key"), "--out",
                 str(work / "bundle-1"), "--version", "2001", "--channel", "stable",
                 "--assortment", str(work / "store-1.csv"), "--target", "store-1"])
    assert code == 0
    build_bundle(trained_run, keys / "signing.key", work / "bundle-2",
                 BundleOptions(version=2002, channels=CHANNELS, assortment=work / "store-2.txt", targets=("store-2",)))
    return {"store-1": (work / "bundle-1", first), "store-2": (work / "bundle-2", second)}


def serving(agent: AgentProcess) -> int | None:
    status, body = get_json(agent, "/readyz")
    return body.get("model_version") if status == 200 else None


def retained(broker: Broker) -> dict[str, bytes]:
    """Every retained message of the default fleet, as a new subscriber gets them."""
    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="inspector", protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe(f"{topics.DEFAULT_PREFIX}/default/#", qos=1)
    client.loop_start()
    try:
        time.sleep(1.5)  # every retained message delivered
    finally:
        client.loop_stop()
        client.disconnect()
    return {topic: payload for topic, payload in got.items() if payload}


def recommended(agent: AgentProcess, query: str) -> dict:  # type: ignore[type-arg]
    status, body = get_json(agent, f"/v1/recommendations?{query}")
    assert status == 200, body
    return body


def test_two_stores_each_serve_only_their_own_assortment(
    broker: Broker, int8_bundle: Path, store_bundles: dict[str, tuple[Path, list[str]]], run_ids: list[str],
    keys: Path, tmp_path: Path,
) -> None:
    for store in STORES:
        manifest = manifest_of(store_bundles[store][0])
        assert manifest.targets == (store,) and manifest.model.num_items == len(store_bundles[store][1])
        assert manifest.model.history_only_items == len(run_ids) - manifest.model.num_items
        assert manifest.training["parity"]["ok"] and manifest.training["quality_gate"]["ok"]  # type: ignore[index]
    assert manifest_of(store_bundles["store-1"][0]).training["assortment"]["unknown"] == 2  # type: ignore[index]

    publish(int8_bundle, broker)  # the chain-wide version 1000 on the stable channel
    for store in STORES:  # then each store's own, store-2's after store-1's
        publish(store_bundles[store][0], broker)
    on_broker = retained(broker)
    manifests = {t: json.loads(json.loads(p)["signed"])["version"] for t, p in on_broker.items() if "/manifest/" in t}
    assert manifests == {topics.manifest_topic(topics.DEFAULT_PREFIX, "default"): 1000,
                         topics.manifest_topic(topics.DEFAULT_PREFIX, "default", "stable", "store-1"): 2001,
                         topics.manifest_topic(topics.DEFAULT_PREFIX, "default", "stable", "store-2"): 2002}
    chunked = {int(t.split("/bundle/")[1].split("/")[0]) for t in on_broker if "/bundle/" in t}
    assert chunked == {1000, 2001, 2002}  # publishing store-2's bundle cleared nothing of store-1's

    with contextlib.ExitStack() as stack:
        agents: dict[str, AgentProcess] = {}
        for store in VERSIONS:  # late joiners: everything they get is retained
            (tmp_path / store).mkdir()
            agents[store] = start_agent(broker.url, keys, tmp_path / store, f'agent.device_id="{store}"')
            stack.callback(agents[store].stop)
        for agent in agents.values():
            agent.wait_ready(60)
        assert wait_for(lambda: all(serving(agents[s]) == v for s, v in VERSIONS.items()), 30), \
            {s: serving(a) for s, a in agents.items()}

        for store in STORES:
            agent, sold = agents[store], set(store_bundles[store][1])
            elsewhere = next(i for i in run_ids if i not in sold)  # sold in another store only
            info = get_json(agent, "/v1/model")[1]
            assert info["catalog_items"] == len(sold) and info["history_items"] == len(run_ids)
            assert info["manifest"]["targets"] == [store]
            own = sorted(sold)[:3]
            events = [{"user_id": "regular", "item_id": i, "event": "purchase"} for i in [*own, elsewhere]]
            events.append({"user_id": "visitor", "item_id": elsewhere, "event": "purchase"})
            assert post_events(agent, events)[0] == 200
            for query in ("user_id=regular&k=20", "user_id=regular&k=20&exclude=purchased",
                          "user_id=visitor&k=20&exclude=seen", "user_id=new-shopper&k=20"):
                body = recommended(agent, query)
                ids = [item["id"] for item in body["items"]]
                assert len(ids) == 20 and set(ids) <= sold, (store, query, set(ids) - sold)
                assert body["model_version"] == VERSIONS[store]
                assert body["fallback"] is query.startswith("user_id=new-shopper")
            # the item sold elsewhere still says what the visitor likes: it may explain, never be offered
            because = {(i["because"] or {}).get("id") for i in recommended(agent, "user_id=visitor&k=20")["items"]}
            assert because <= {elsewhere, None}

        chain_wide = get_json(agents["store-3"], "/v1/model")[1]
        assert chain_wide["catalog_items"] == len(run_ids) and chain_wide["manifest"]["targets"] == []

        # a restart and reconnect: the older chain-wide manifest beside the store's own is no news
        watcher = StatusWatcher(broker, "store-1")
        stack.callback(watcher.close)
        agents["store-1"].stop()
        assert wait_for(lambda: watcher.latest.get("state") == "offline", 15), watcher.latest
        mark = watcher.mark()  # from here on, statuses of the restarted agent only
        agents["store-1"] = start_agent(broker.url, keys, tmp_path / "store-1", 'agent.device_id="store-1"')
        stack.callback(agents["store-1"].stop)
        agents["store-1"].wait_ready(60)
        assert wait_for(lambda: any(s.get("state") == "online" for s in watcher.seen[mark:]), 15)
        time.sleep(1.0)  # both retained manifests handled
        assert serving(agents["store-1"]) == 2001
        assert "model update rejected" not in agents["store-1"].log()
        assert not [s for s in watcher.seen[mark:] if (s.get("last_update") or {}).get("result") == "rejected"]


def test_a_store_bundle_copied_to_the_fleet_topic_installs_nowhere_else(
    broker: Broker, int8_bundle: Path, store_bundles: dict[str, tuple[Path, list[str]]], keys: Path, tmp_path: Path,
) -> None:
    """Someone with broker access re-publishes store-1's signed manifest on the channel's topic:
    another store refuses it (the signed targets), and keeps serving the chain-wide model."""
    from harness import RawClient, chunk_messages

    publish(int8_bundle, broker)
    bundle = store_bundles["store-1"][0]
    attacker = RawClient(broker, "copier")
    try:
        for _, _, topic, data in chunk_messages(bundle):
            attacker.publish(topic, data)
        agent = start_agent(broker.url, keys, tmp_path, 'agent.device_id="store-2"')
        try:
            agent.wait_ready(60)
            watcher = StatusWatcher(broker, "store-2")
            try:
                mark = watcher.mark()
                attacker.publish(topics.manifest_topic(topics.DEFAULT_PREFIX, "default"),
                                 (bundle / "manifest.envelope").read_bytes())
                watcher.wait_update("not_targeted", mark)
            finally:
                watcher.close()
            assert serving(agent) == 1000
        finally:
            agent.stop()
    finally:
        attacker.close()


def test_publishing_for_a_device_id_that_is_no_topic_level_is_refused(
    trained_run: Path, keys: Path, tmp_path: Path
) -> None:
    from cloud_trainer.cli import main

    code = main(["export", "--run", str(trained_run), "--key", str(keys / "signing.key"), "--out", str(tmp_path),
                 "--assortment", str(tmp_path / "unused.txt"), "--target", "store/#"])
    assert code == 2 and not (tmp_path / "model.tflite").exists()



def _manifest(version: int):  # type: ignore[no-untyped-def]
    from shared.bundle import FileEntry, Manifest, ModelContract

    entry = FileEntry("0" * 64, 1, ("0" * 64,))
    return Manifest("default", version, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", 1024,
                    {"model.tflite": entry, "catalog.json": entry}, ModelContract("int8", "serving_default", 5, 1, 1),
                    channels=("stable",))


def test_a_fleet_wide_publish_says_which_stores_leave_their_own_bundles(caplog: pytest.LogCaptureFixture) -> None:
    """Agents run the newest of their channel's and their own version: a newer fleet-wide one
    takes the stores with older bundles of their own off them (store-2's is newer; store-9's is
    on another channel)."""
    from dataclasses import replace

    from cloud_trainer.delivery.publisher import _warn_of_targeted

    base = _manifest(10)
    published = {"a": replace(base, version=2001, targets=("store-1",)),
                 "b": replace(base, version=3001, targets=("store-2",)),
                 "c": replace(base, version=2500, targets=("store-9",), channels=("canary",))}
    with caplog.at_level("WARNING"):
        _warn_of_targeted(published, replace(base, version=3000), "stable")
    assert "newer than the versions targeted at 1 devices (store-1)" in caplog.text

"""The fleet aggregate: the threshold rule, the counts, what a payload may hold; a model trained on
the aggregates of a generated shop's stores (train, evaluate and export as any run); and a real
agent behind Mosquitto that publishes one only when enabled."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devtools.processes import Broker
from edge_agent.cooccurrence import aggregate
from edge_agent.history_records import StoredEvent
from edge_agent.history_store import HistoryStore
from harness import ROOT, post_events, start_agent, wait_for
from shared import topics
from shared.events import EVENT_WEIGHTS, EventKind, parse_event
from shared.fleet_aggregates import AggregateRejected, FleetAggregate, parse_aggregate

NOW = 1_700_000_000.0
KINDS = list(EventKind)


def _shoppers(n: int, items: int, seed: int) -> list[list[StoredEvent]]:
    rng = random.Random(seed)
    return [[StoredEvent(f"item-{rng.randrange(items)}", rng.choice(KINDS), NOW - rng.uniform(0, 40 * 86400))
             for _ in range(rng.randrange(1, 12))] for _ in range(n)]


def _brute_force(shoppers: list[list[StoredEvent]]) -> tuple[dict[str, tuple[int, float]],
                                                             dict[tuple[str, str], tuple[int, float]]]:
    """Per item and per pair (ids sorted): (distinct shoppers, sum of X products), X = strongest weight."""
    rows = []
    for events in shoppers:
        x: dict[str, float] = {}
        for e in events:
            x[e.item_id] = max(x.get(e.item_id, 0.0), EVENT_WEIGHTS[e.kind])
        rows.append(x)
    items: dict[str, tuple[int, float]] = {}
    pairs: dict[tuple[str, str], tuple[int, float]] = {}
    for x in rows:
        for i in x:
            n, g = items.get(i, (0, 0.0))
            items[i] = (n + 1, g + x[i] ** 2)
        for i, j in itertools.combinations(sorted(x), 2):
            n, g = pairs.get((i, j), (0, 0.0))
            pairs[(i, j)] = (n + 1, g + x[i] * x[j])
    return items, pairs


def _as_dicts(a: FleetAggregate) -> tuple[dict[str, tuple[int, float]], dict[tuple[str, str], tuple[int, float]]]:
    items = {i: (n, g) for i, n, g in zip(a.items, a.item_shoppers, a.item_gram, strict=True)}
    pairs = {}
    for f, s, n, g in zip(a.pair_first, a.pair_second, a.pair_shoppers, a.pair_gram, strict=True):
        pairs[tuple(sorted((a.items[f], a.items[s])))] = (n, g)
    return items, pairs  # type: ignore[return-value]


def test_counts_equal_a_brute_force_count_and_the_threshold_removes_what_fewer_than_k_made() -> None:
    shoppers = _shoppers(400, 40, seed=1)
    items, pairs = _brute_force(shoppers)
    for k in (1, 4, 12):
        got_items, got_pairs = _as_dicts(aggregate(shoppers, "store-1", NOW, min_shoppers=k, max_pairs=10**6))
        want_items = {i: v for i, v in items.items() if v[0] >= k}
        want_pairs = {p: v for p, v in pairs.items() if v[0] >= k}
        assert got_items.keys() == want_items.keys() and got_pairs.keys() == want_pairs.keys()
        assert all(got_items[i][0] == v[0] and got_items[i][1] == pytest.approx(v[1]) for i, v in want_items.items())
        assert all(got_pairs[p][0] == v[0] and got_pairs[p][1] == pytest.approx(v[1]) for p, v in want_pairs.items())
    assert min(v[0] for v in pairs.values()) < 4 < max(v[0] for v in pairs.values())  # k = 4 did remove some


def test_by_hand_two_shoppers_of_three_share_a_pair() -> None:
    # A: view x, buy y; B: cart x, buy y, view z; C: buy z. X = [[.25, 1, 0], [.5, 1, .25], [0, 0, 1]]
    shoppers = [[StoredEvent("x", EventKind.VIEW, NOW - 9), StoredEvent("y", EventKind.PURCHASE, NOW - 8)],
                [StoredEvent("x", EventKind.CART, NOW - 7), StoredEvent("x", EventKind.VIEW, NOW - 6),
                 StoredEvent("y", EventKind.PURCHASE, NOW - 5), StoredEvent("z", EventKind.VIEW, NOW - 4)],
                [StoredEvent("z", EventKind.PURCHASE, NOW - 3)]]
    items, pairs = _as_dicts(aggregate(shoppers, "store-1", NOW, min_shoppers=2))
    # G[x,x] = .25^2 + .5^2 = .3125; G[x,y] = .25 + .5 = .75; G[y,y] = 2; G[z,z] = .25^2 + 1 = 1.0625
    assert items == {"x": (2, 0.3125), "y": (2, 2.0), "z": (2, 1.0625)}
    assert pairs == {("x", "y"): (2, 0.75)}  # (x, z) and (y, z): one shopper each, withheld


def test_the_pair_cap_keeps_the_largest_counts() -> None:
    shoppers = _shoppers(400, 30, seed=2)
    everything = aggregate(shoppers, "store-1", NOW, min_shoppers=1, max_pairs=10**6)
    capped = aggregate(shoppers, "store-1", NOW, min_shoppers=1, max_pairs=50)
    assert len(capped.pair_first) == 50
    assert min(capped.pair_shoppers) >= sorted(everything.pair_shoppers, reverse=True)[49]


def test_a_payload_holds_no_shopper_id_and_round_trips(tmp_path: Path) -> None:
    shoppers = _shoppers(300, 20, seed=3)
    ids = [f"customer-{n:05d}" for n in range(len(shoppers))]
    events = [parse_event(u, e.item_id, e.kind.value, e.timestamp) for u, h in zip(ids, shoppers, strict=True)
              for e in h]
    store = HistoryStore(tmp_path / "history", lambda: [b"k" * 32], clock=lambda: NOW)
    try:
        store.append(events)
        payload = aggregate(store.histories(), "store-1", NOW, min_shoppers=3).to_bytes()
    finally:
        store.close()
    assert not any(u.encode() in payload for u in ids) and b"customer" not in payload
    parsed = parse_aggregate(payload, "store-1")
    assert parsed.shoppers_total == 300
    assert _as_dicts(parsed) == _as_dicts(aggregate(shoppers, "store-1", NOW, min_shoppers=3))
    with pytest.raises(AggregateRejected, match="published as"):
        parse_aggregate(payload, "store-2")


def _junk(payload: dict[str, object], **changes: object) -> bytes:
    return json.dumps({**payload, **changes}).encode()


def test_junk_payloads_are_rejected() -> None:
    good = json.loads(aggregate(_shoppers(200, 15, seed=4), "store-1", NOW, min_shoppers=5).to_bytes())
    k, n_pairs = good["min_shoppers"], len(good["pair_first"])
    assert n_pairs > 1
    cases = {
        b"not json": "not JSON",
        b"[]": "JSON object",
        _junk(good, schema="other/v9"): "schema",
        _junk(good, user_ids=["customer-1"]): "unknown keys",
        _junk({k: v for k, v in good.items() if k != "pair_gram"}): "missing keys",
        _junk(good, device_id="../etc"): "device id",
        _junk(good, pair_shoppers=[k - 1] * n_pairs): "threshold rule",  # a count that could single one out
        _junk(good, item_shoppers=[1] + good["item_shoppers"][1:]): "threshold rule",
        _junk(good, pair_first=good["pair_second"], pair_second=good["pair_first"]): "first < second",
        _junk(good, pair_gram=[1e9] * n_pairs): "at most",
        _junk(good, items=good["items"][:-1]): "one entry per item",
        _junk(good, weights={"view": 0.25}): "weights",
        _junk(good, window_start=good["window_end"] + 1): "window",
        _junk(good, item_recent_buyers=[1] * len(good["items"])): "recent_buyers",
        b"[" * 100_000: "not JSON",
    }
    for payload, problem in cases.items():
        with pytest.raises(AggregateRejected, match=problem):
            parse_aggregate(payload)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.slow
def test_a_model_from_stores_aggregates_ranks_far_better_than_popularity_and_exports(
        tmp_path: Path, keys: Path) -> None:
    from cloud_trainer.data.events_io import read_events
    from cloud_trainer.evaluation.splits import cut_time
    from devtools.fleet_stores import store_aggregates, write_store_aggregates
    from devtools.synthetic_shop import ShopSpec, write

    events, _ = write(ShopSpec(users=2000, items=800, categories=40, tastes=8, seed=5), tmp_path / "shop")
    aggregates = store_aggregates(read_events(events), cut_time("2024-06-01"), stores=3, min_shoppers=3)
    write_store_aggregates(aggregates, tmp_path / "aggregates")
    run = tmp_path / "run"
    for args in (("train", "--fleet-aggregates", str(tmp_path / "aggregates"), "--out", str(run),
                  "--test-from", "2024-06-01"),
                 ("evaluate", "--events", str(events), "--run", str(run)),
                 ("export", "--run", str(run), "--key", str(keys / "signing.key"))):
        result = _cli(*args)
        assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((run / "evaluation.json").read_text())
    served = evaluation[evaluation["served_row"]]
    for mode in ("all", "new"):
        # popularity finds about 0.10 here, the aggregates' model about 0.33 (1,000 test shoppers: se ~0.02)
        assert served[mode]["recall@20"] > 2 * evaluation["popularity"][mode]["recall@20"] + 0.05, mode
    assert (run / "bundle" / "manifest.json").exists() or any((run / "bundle").iterdir())
    late = _cli("train", "--fleet-aggregates", str(tmp_path / "aggregates"), "--out", str(tmp_path / "late"),
                "--test-from", "2024-05-01")
    assert late.returncode == 2 and "overlap the test period" in late.stderr


def _watch(broker: Broker, topic: str) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{random.randrange(10**6)}")
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), ready.set())
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert ready.wait(10)
    got["_client"] = client  # type: ignore[assignment]
    return got


@pytest.mark.slow
def test_an_agent_publishes_its_aggregate_only_when_enabled(broker: Broker, keys: Path, tmp_path: Path) -> None:
    shoppers = [f"loyalty-card-{n:04d}" for n in range(6)]
    events = [{"user_id": u, "item_id": item, "event": "purchase"} for u in shoppers for item in ("mug", "tin")]
    events += [{"user_id": shoppers[0], "item_id": "only-mine", "event": "view"}]
    for enabled, name in ((True, "dev-on"), (None, "dev-off")):
        topic = topics.aggregates_topic(topics.DEFAULT_PREFIX, "default", name)
        seen = _watch(broker, topic)
        (tmp_path / name).mkdir()
        agent = start_agent(broker.url, keys, tmp_path / name, f'agent.device_id="{name}"',
                            "aggregates.interval_s=1", "aggregates.min_shoppers=3",
                            *(["aggregates.enabled=true"] if enabled else []))
        try:
            assert post_events(agent, events)[0] == 200
            published = wait_for(lambda t=topic, s=seen: t in s, 8 if enabled else 4)  # type: ignore[misc]
        finally:
            agent.stop()
            seen.pop("_client").loop_stop()  # type: ignore[attr-defined]
        if not enabled:
            assert not published, "the default configuration published an aggregate"
            continue
        assert published, agent.log()[-3000:]
        payload = seen[topic]
        assert not any(u.encode() in payload for u in shoppers) and b"loyalty" not in payload
        aggregate_ = parse_aggregate(payload, name)
        assert sorted(aggregate_.items) == ["mug", "tin"] and aggregate_.pair_shoppers == [6]  # only-mine: 1 shopper
    # the trainer collects the retained aggregate into a folder train --fleet-aggregates reads
    collected = _cli("fleet", "aggregates", "--broker", broker.url, "--out", str(tmp_path / "collected"), "--wait", "1")
    assert collected.returncode == 0, collected.stderr
    assert sorted(p.name for p in (tmp_path / "collected").iterdir()) == ["dev-on.json"]


def test_summed_aggregates_without_threshold_are_the_trainers_gram_matrix(synthetic_shop: tuple[Path, Path]) -> None:
    """k = 1 and no pair cap: the stores' aggregates sum to exactly X'X of the trainer's own matrix."""
    import numpy as np

    from cloud_trainer.data.events_io import read_events
    from cloud_trainer.evaluation.splits import cut_time, train_period
    from cloud_trainer.models.factorized import FactorizedSettings, shopper_item_matrix
    from cloud_trainer.models.fleet_gram import summed
    from devtools.fleet_stores import store_aggregates

    table = read_events(synthetic_shop[0])
    cut = cut_time("2024-03-01")  # two months: every shopper's events fit the agent's 200
    train = train_period(table, cut)
    fleet = summed(store_aggregates(table, cut, stores=4, min_shoppers=1, max_pairs=10**7), train.item_ids)
    x = shopper_item_matrix(train, FactorizedSettings().event_weights()).astype(np.float64)
    assert len(fleet.item_ids) == len(train.item_ids)
    assert abs(fleet.gram - (x.T @ x)).max() < 1e-9
    assert fleet.shoppers_total == len(train.user_ids)

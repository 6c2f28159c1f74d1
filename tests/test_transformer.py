"""``--model transformer`` end to end on a planted shop: trained in Keras, exported int8 through the
gates, served by a real agent over REST (Mosquitto, the agent process, HTTP), and explained; plus
the sequence inputs both sides build, and the contract older agents refuse."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devtools.processes import AgentProcess, Broker
from harness import get_json, manifest_of, post_events, serving_agent
from shared import CONTRACT_VERSION, SEQUENCE_CONTRACT_VERSION
from shared.bundle import IncompatibleContract, ModelContract, check_contract
from shared.events import EventKind
from shared.sequence import gap_buckets, sequence_inputs

#: The planted rule: whoever views A views B next, and B comes after A only.
A, B = "P001", "P002"
START = 1_700_000_000.0


def planted_events(path: Path, users: int = 600, items: int = 40, seed: int = 5, start_days: int = 30,
                    new_day: float = 0.1) -> Path:
    """A shop of ``items`` items where each shopper has 4-12 events 30 s apart (a session a day; after
    each event another day begins with probability ``new_day``), starting within ``start_days`` days;
    A is common (one event in six), and every A is followed by B."""
    rng = np.random.default_rng(seed)
    others = [f"P{n:03d}" for n in range(items) if f"P{n:03d}" not in (A, B)]
    with gzip.open(path, "wt", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "event", "timestamp"])
        for user in range(users):
            when = START + rng.integers(0, start_days) * 86400.0
            previous = None
            for _ in range(int(rng.integers(4, 13))):
                item = B if previous == A else (A if rng.random() < 1 / 6 else others[rng.integers(len(others))])
                kind = "purchase" if rng.random() < 0.2 else "view"
                out.writerow([f"U{user:04d}", item, kind, int(when)])
                previous, when = item, when + 30.0
                if rng.random() < new_day:
                    when += 86400.0  # another day, another session
    return path


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("planted")
    events = planted_events(folder / "events.csv.gz")
    run = folder / "run"
    train(TrainConfig(events=str(events), model="transformer", dim=16, epochs=8, batch_size=128,
                      learning_rate=5e-3, calibration_histories=256), run)
    return run


@pytest.fixture(scope="module")
def planted_bundle(planted_run: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from shared.topics import CHANNELS

    out = tmp_path_factory.mktemp("planted-bundle")
    build_bundle(planted_run, keys / "signing.key", out, BundleOptions(variant="int8", version=2000,
                                                                       channels=CHANNELS))  # gates refuse a bad one
    return out


@pytest.fixture
def transformer_agent(broker: Broker, planted_bundle: Path, keys: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    with serving_agent(planted_bundle, broker, keys, tmp_path) as agent:
        yield agent


def test_sequence_inputs_are_most_recent_first_with_log_spaced_gaps() -> None:
    history = [(5, EventKind.VIEW, 1000.0), (6, EventKind.CART, 1010.0), (7, EventKind.PURCHASE, 1010.0 + 3 * 3600)]
    items, kinds, gaps = sequence_inputs(history, 4)
    assert items == [7, 6, 5, 0] and kinds == [3, 2, 1, 0]
    # 3 h = 180 min: 2 + floor(log2 180) = 9; 10 s: under a minute; the first event: no gap
    assert gaps == [9, 1, 0, 0]
    # a window shorter than the history: the oldest position shown keeps its gap to the event before it
    assert sequence_inputs(history, 2)[2] == [9, 1]
    # unknown times (a product page's query) and padding are bucket 0
    assert sequence_inputs([(5, EventKind.VIEW, None), (6, EventKind.VIEW, 1.0)], 3)[2] == [0, 0, 0]
    assert gap_buckets(np.array([0.0, 59.0, 60.0, 119.0, 120.0, 1e12])).tolist() == [1, 1, 2, 2, 3, 19]


def test_the_trainer_builds_the_inputs_the_agent_builds(planted_run: Path) -> None:
    from cloud_trainer.data.events_io import KINDS_BY_CODE, read_events
    from cloud_trainer.data.training_set import build_training_set

    table = read_events(planted_run.parent / "events.csv.gz")
    data = build_training_set(table, 8, sequence=True)
    assert data.hist_kinds is not None and data.hist_gaps is not None
    user = table.user == table.user[0]
    order = np.flatnonzero(user)[np.argsort(table.timestamp[user], kind="stable")]
    events = [(int(table.item[r]), KINDS_BY_CODE[int(table.kind[r])], float(table.timestamp[r])) for r in order]
    # the user's last prediction point: its history is every event before its last basket
    last = int(np.flatnonzero(table.timestamp[order] == table.timestamp[order].max())[0])
    items, kinds, gaps = sequence_inputs(events[:last], 8)
    row = int(np.flatnonzero((data.hist_items == items).all(axis=1) & (data.hist_gaps == gaps).all(axis=1)
                             & (data.hist_kinds == kinds).all(axis=1)).size)
    assert row >= 1, "the trainer's columns hold the agent's inputs for this history"


def test_an_older_agent_refuses_the_sequence_contract_and_a_new_one_serves_both() -> None:
    sequence = ModelContract("int8", "serving_default", 50, 10, 100, contract_version=SEQUENCE_CONTRACT_VERSION)
    with pytest.raises(IncompatibleContract, match="contract version 3 is not one of \\(1, 2\\)"):
        check_contract(sequence, supported_versions=(1, 2))  # what an agent before version 3 accepts
    check_contract(sequence)
    check_contract(ModelContract("int8", "serving_default", 50, 10, 100, contract_version=CONTRACT_VERSION))


def test_transformer_trains_with_early_stopping_and_exports_int8_through_the_gates(
        planted_run: Path, planted_bundle: Path) -> None:
    metrics = json.loads((planted_run / "metrics.json").read_text())
    recalls = metrics["validation_recall_at_20"]
    assert metrics["model"] == "transformer" and recalls and metrics["epoch_kept"] >= 1
    assert recalls[metrics["epoch_kept"] - 1] == max(recalls)  # the best epoch is the one kept
    assert (planted_run / "checkpoint.weights.h5").exists()
    manifest = manifest_of(planted_bundle)
    assert manifest.model.contract_version == SEQUENCE_CONTRACT_VERSION and manifest.model.variant == "int8"
    parity, gate = manifest.training["parity"], manifest.training["quality_gate"]
    assert isinstance(parity, dict) and parity["ok"] and isinstance(gate, dict) and gate["ok"]


def serves_b_because_a(agent: AgentProcess, version: int, query: str = "") -> None:
    """A shopper who viewed another item, then A, is served B first, explained by A."""
    status, body = post_events(agent, [{"user_id": "shopper", "item_id": "P010", "event": "view"},
                                       {"user_id": "shopper", "item_id": A, "event": "view"}])
    assert status == 200 and body["accepted"] == 2
    status, answer = get_json(agent, f"/v1/recommendations?user_id=shopper&k=5{query}")
    assert status == 200 and answer["fallback"] is False and answer["model_version"] == version
    assert len(answer["items"]) == 5 and all(isinstance(item["score"], float) for item in answer["items"])
    top = answer["items"][0]
    assert top["id"] == B, answer
    assert top["because"] is not None and top["because"]["id"] == A, top


def test_a_real_agent_serves_the_transformer_and_explains_b_by_a(transformer_agent: AgentProcess) -> None:
    serves_b_because_a(transformer_agent, 2000)


#: The planted shop of :func:`planted_split_run`: about 80 shoppers bought before and after this day.
TEST_FROM = "2023-11-17"


@pytest.fixture(scope="module")
def planted_split_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformer trained with ``--test-from`` on a planted shop whose shoppers come back over a
    few days (so that many buy on both sides of TEST_FROM)."""
    from cloud_trainer.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("planted-split")
    events = planted_events(folder / "events.csv.gz", start_days=4, new_day=0.3)
    run = folder / "run"
    train(TrainConfig(events=str(events), model="transformer", dim=16, epochs=4, batch_size=128,
                      learning_rate=5e-3, calibration_histories=256, test_from=TEST_FROM), run)
    return run


def test_evaluate_scores_a_transformer_run_as_served_beside_the_baselines(planted_split_run: Path) -> None:
    """``cloud-trainer evaluate`` (the CLI, its own process) scores the export as served in both
    modes and the scenes, beside the baselines, says in one line each what it leaves out, and its
    figure is the one ``bench/transformer_quality.py`` measures through the same served path."""
    from bench.transformer_quality import served_quality
    from devtools.trainer_cli import run as trainer

    events = planted_split_run.parent / "events.csv.gz"
    done = trainer("evaluate", "--run", str(planted_split_run), "--events", str(events))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "not computed for a transformer or blend run" in done.stdout  # the notes, in the printed tables
    evaluation = json.loads((planted_split_run / "evaluation.json").read_text())
    served = evaluation["served_row"]
    assert served in ("model (int8, LiteRT, as served)", "model (float16, LiteRT, as served)")
    assert {served, "popularity", "repeat-purchase"} <= evaluation.keys(), evaluation.keys()
    assert "model (float, Keras)" not in evaluation and not evaluation["cold_start"]
    assert len(evaluation["notes"]) == 2 and all("transformer" in note for note in evaluation["notes"])
    assert evaluation["scenes"][f"related: {served}"]["queries"] > 0  # the scenes, served as for every model
    report = (planted_split_run / "report" / "report.md").read_text()
    assert served in report and "Not computed for this run" in report and "## The shop's other pages" in report
    bench = served_quality(planted_split_run, events, TEST_FROM, "purchase", max_users=5000)
    assert bench["variant"] in served
    for mode in ("all", "new"):
        figures = evaluation[served][mode]
        assert figures["users"] == bench[mode]["users"] > 20
        assert figures["recall@20"] == bench[mode]["recall@20"]
        assert 0.0 < figures["recall@20"] <= 1.0


def test_a_sequence_graph_under_a_pooled_contract_fails_to_load(planted_bundle: Path) -> None:
    """The contract version says how the agent drives the graph; a wrong one is a load error, not
    a crash on the first shopper's request."""
    from dataclasses import replace

    from edge_agent.errors import ModelLoadError
    from edge_agent.loaded_model import LoadedModel
    from shared.catalog import parse_catalog

    manifest = manifest_of(planted_bundle)
    model_bytes = (planted_bundle / "model.tflite").read_bytes()
    catalog = parse_catalog((planted_bundle / "catalog.json").read_bytes(), manifest.model.num_items)
    assert LoadedModel(manifest, model_bytes, catalog).takes_sequence
    pooled = replace(manifest, model=replace(manifest.model, contract_version=CONTRACT_VERSION))
    with pytest.raises(ModelLoadError):
        LoadedModel(pooled, model_bytes, catalog)

"""The evaluation's served path is what an app gets over REST: the same lists, item for item."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

from cloud_trainer.data.events_io import KINDS_BY_CODE, read_events
from cloud_trainer.evaluation import splits
from cloud_trainer.evaluation.served import EXCLUDE_FOR, ServedModel, served_rankings, stored_shoppers
from devtools.processes import AgentProcess
from harness import get_json, manifest_of, post_events
from shared.bundle import CATALOG_FILE, MODEL_FILE
from shared.catalog import parse_catalog
from shared.recommendation import Exclude

SHOPPERS = 40
K = 20


def test_in_process_evaluation_agrees_with_the_rest_api(prepared: Path, int8_bundle: Path,
                                                       agent_with_model: AgentProcess) -> None:
    table = read_events(prepared / "events.csv.gz")
    data = splits.split(table, splits.cut_time("2010-12-20"))
    manifest = manifest_of(int8_bundle)
    catalog = parse_catalog((int8_bundle / CATALOG_FILE).read_bytes(), manifest.model.num_items)
    model = ServedModel((int8_bundle / MODEL_FILE).read_bytes(), catalog, manifest.model.history_length,
                        manifest.version)
    sizes = np.asarray([len(rows) for rows in data.history])
    heaviest = np.argsort(-sizes, kind="stable")[:10]  # more events than the agent keeps
    others = np.setdiff1d(np.arange(len(data.users)), heaviest)
    picked = np.concatenate([heaviest, np.random.default_rng(5).choice(others, SHOPPERS - 10, replace=False)])
    users = [data.users[n] for n in picked]
    rows = [data.history[n] for n in picked]
    shoppers = stored_shoppers(data.train, rows, now=splits.cut_time("2010-12-20"))
    # some hold more events than the agent keeps: their purchase memory then matters
    assert sum(len(r) > 200 for r in rows) >= 3 and sum(len(s.history) for s in shoppers) > 10 * SHOPPERS
    now = time.time()  # every event replayed as recent, in its order (the real ones are past retention)
    for user, user_rows in zip(users, rows, strict=True):
        events = [{"user_id": user, "item_id": data.train.item_ids[data.train.item[r]],
                   "event": KINDS_BY_CODE[data.train.kind[r]].value, "timestamp": now - len(user_rows) + n}
                  for n, r in enumerate(user_rows.tolist())]
        for first in range(0, len(events), 500):
            assert post_events(agent_with_model, events[first : first + 500])[0] == 200
    for exclude in (Exclude.NONE, EXCLUDE_FOR["purchase"]):  # modes all and new
        ranked = served_rankings(model, shoppers, K, exclude)
        for user, row in zip(users, ranked, strict=True):
            query = f"/v1/recommendations?user_id={quote(user)}&k={K}&exclude={exclude.value}"
            status, answer = get_json(agent_with_model, query)
            assert status == 200 and answer["model_version"] == manifest.version
            over_rest = [model.item_index[item["id"]] for item in answer["items"]]
            assert over_rest == [i for i in row.tolist() if i >= 0], (exclude, user)


def test_the_purchase_memory_keeps_the_items_bought_last_up_to_its_cap() -> None:
    from cloud_trainer.data.events_io import KIND_CODES, EventTable, ReadReport
    from cloud_trainer.evaluation.served import remembered_purchases
    from shared.events import EventKind

    purchase, view = KIND_CODES[EventKind.PURCHASE], KIND_CODES[EventKind.VIEW]
    # item 0 bought, then 1, then 2, then 0 again, and a view of 3; one purchase past retention
    table = EventTable(["u"], ["a", "b", "c", "d", "e"], np.zeros(6, np.int32),
                       np.array([4, 0, 1, 2, 0, 3], np.int32),
                       np.array([purchase] * 5 + [view], np.int8),
                       np.array([0.0, 1e9, 1e9 + 1, 1e9 + 2, 1e9 + 3, 1e9 + 4]), ReadReport())
    rows = np.arange(6)
    now = 1e9 + 10
    assert remembered_purchases(table, rows, now, remembered=5).tolist() == [1, 2, 0]  # fewer than the cap: all
    assert remembered_purchases(table, rows, now, remembered=2).tolist() == [2, 0]  # the two bought last
    assert remembered_purchases(table, rows, now, remembered=0).tolist() == []

"""The evaluation's served path is what an app gets over REST: the same lists, item for item."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

from cloud_trainer import evaluation
from cloud_trainer.evaluate_run import EXCLUDE_FOR
from cloud_trainer.events_io import read_events
from cloud_trainer.served import ServedModel, served_rankings, stored_histories
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
    data = evaluation.split(table, evaluation.cut_time("2010-12-20"))
    manifest = manifest_of(int8_bundle)
    catalog = parse_catalog((int8_bundle / CATALOG_FILE).read_bytes(), manifest.model.num_items)
    model = ServedModel((int8_bundle / MODEL_FILE).read_bytes(), catalog, manifest.model.history_length,
                        manifest.version)
    picked = np.random.default_rng(5).choice(len(data.users), SHOPPERS, replace=False)
    users = [data.users[n] for n in picked]
    histories = stored_histories(data.train, [data.history[n] for n in picked], model.history_length)
    assert sum(len(h) for h in histories) > 10 * SHOPPERS
    now = time.time()  # replayed as recent events, in their order (the real ones are past retention)
    for user, history in zip(users, histories, strict=True):
        events = [{"user_id": user, "item_id": e.item_id, "event": e.kind.value, "timestamp": now - len(history) + n}
                  for n, e in enumerate(history)]
        assert post_events(agent_with_model, events)[0] == 200
    for exclude in (Exclude.NONE, EXCLUDE_FOR["purchase"]):  # modes all and new
        ranked = served_rankings(model, histories, K, exclude)
        for user, row in zip(users, ranked, strict=True):
            query = f"/v1/recommendations?user_id={quote(user)}&k={K}&exclude={exclude.value}"
            status, answer = get_json(agent_with_model, query)
            assert status == 200 and answer["model_version"] == manifest.version
            over_rest = [model.item_index[item["id"]] for item in answer["items"]]
            assert over_rest == [i for i in row.tolist() if i >= 0], (exclude, user)

"""Stock filtering: ``recommend()`` on a 100k-item int8 model with 30% of the items out of stock
(and 5% at a local price), against no filter, interleaved query by query in one process.

Also: the time to store the batches (``StockStore.put``: one synced SQLite transaction each) and
to build a model's stock view from the table (what the first request after a model update pays).
Every answer is checked: an out-of-stock item served would be counted (it must stay 0).

    python bench/stock.py [--queries 3000]

Writes bench/results/stock.json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import HISTORY, N_ITEMS, build_bundle, percentiles, random_histories  # noqa: E402
from shared.bundle import CATALOG_FILE, ENVELOPE_FILE, MODEL_FILE, parse_manifest  # noqa: E402
from shared.catalog import parse_catalog  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "stock.json"
OUT_OF_STOCK, LOCAL_PRICES, BATCH = 0.30, 0.05, 10_000


def bench_stock(work: Path, queries: int) -> dict[str, object]:
    from edge_agent.history_records import StoredEvent
    from edge_agent.loaded_model import LoadedModel
    from edge_agent.stock_store import StockEntry, StockStore
    from shared.recommendation import Exclude, recommend

    bundle = work / "bundle"
    manifest = parse_manifest(json.loads((bundle / ENVELOPE_FILE).read_bytes())["signed"])
    catalog = parse_catalog((bundle / CATALOG_FILE).read_bytes(), N_ITEMS)
    model = LoadedModel(manifest, (bundle / MODEL_FILE).read_bytes(), catalog, num_threads=1)
    rng = np.random.default_rng(5)
    gone = rng.random(N_ITEMS) < OUT_OF_STOCK
    priced = ~gone & (rng.random(N_ITEMS) < LOCAL_PRICES)
    entries = [StockEntry(catalog.items[i].id, not gone[i], 0.5 if priced[i] else None)
               for i in np.flatnonzero(gone | priced).tolist()]
    store = StockStore(work / "agent")
    put_ms = []
    for start in range(0, len(entries), BATCH):
        t0 = time.perf_counter()
        store.put(entries[start : start + BATCH])
        put_ms.append((time.perf_counter() - t0) * 1000)
    store.close()
    store = StockStore(work / "agent")  # as after a restart: the first request builds the view
    t0 = time.perf_counter()
    view = store.view(model)
    build_ms = (time.perf_counter() - t0) * 1000
    assert view.available is not None
    plain_ms, stock_ms, both_ms = [], [], []
    served_out_of_stock = fills = 0
    for n, history in enumerate(random_histories(rng, queries)):
        events = [StoredEvent(model.catalog.items[i].id, k, 0.0) for i, k in history]  # as the store returns them
        t0 = time.perf_counter()
        recommend(model, events, 10)
        t1 = time.perf_counter()
        current = store.view(model)  # what the route does: the view lookup, the mask, local prices
        result = current.priced(recommend(model, events, 10, available=current.available), model.item_index)
        t2 = time.perf_counter()
        current = store.view(model)
        excluded = current.priced(recommend(model, events, 10, Exclude.PURCHASED, available=current.available),
                                  model.item_index)
        t3 = time.perf_counter()
        for answer in (result, excluded):
            served_out_of_stock += sum(bool(gone[model.item_index[r.item.id]]) for r in answer.items)
            fills += sum(r.score is None for r in answer.items)
        if n >= 50:  # warm-up
            plain_ms.append((t1 - t0) * 1000)
            stock_ms.append((t2 - t1) * 1000)
            both_ms.append((t3 - t2) * 1000)
    store.close()
    return {
        "what": f"recommend(k=10), history {HISTORY}, {N_ITEMS:,} items, int8 LiteRT, one thread; "
                f"{gone.sum():,} items ({OUT_OF_STOCK:.0%}) out of stock, {priced.sum():,} at a local price; "
                "the three timed back to back for each query",
        "recommend_no_filter": percentiles(plain_ms),
        "recommend_with_stock": percentiles(stock_ms),
        "recommend_with_stock_and_exclude_purchased": percentiles(both_ms),
        "out_of_stock_items_served": served_out_of_stock,
        "popular_fill_ins_served": fills,
        "put_ms_per_batch_of_10000": percentiles(put_ms),
        "view_build_ms_after_restart": round(build_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-rec-bench-stock-") as tmp:
        work = Path(tmp)
        build_bundle(work)
        results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                   "stock": bench_stock(work, args.queries)}
    print(json.dumps(results, indent=1), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""How much quality the fleet aggregates keep against training on the raw events.

Online Retail (``cloud-trainer prepare online-retail``), its shoppers hashed to ``--stores``
simulated stores (:mod:`devtools.fleet_stores`). Each store's aggregate is made by the agent's own
code (:mod:`edge_agent.cooccurrence`) from what its agent would hold at the cut (each shopper's
last 200 events within 365 days of the training period), with threshold k and the default pair
cap, and written as ``cloud-trainer fleet aggregates`` writes them. Then, with the trainer's own
commands and the test period from ``--test-from``:

- **raw events**: ``train --events`` with the default settings search, ``evaluate``;
- **aggregates, k**: ``train --fleet-aggregates DIR --settings-from <raw run>`` (no histories to
  tune on: the raw run's settings), ``evaluate`` (served int8, the same test shoppers and targets).

No ``--items`` for either run, so both rank and are scored on the training period's items. Results
(Recall@20, NDCG@20 of the served model in modes all and new, the share the aggregates keep,
payload sizes) go to ``bench/results/fleet_aggregates.json``.

    python bench/fleet_aggregates.py [--datasets ../shared/datasets] [--stores 5] [--k 1 5 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_trainer.data.events_io import read_events  # noqa: E402
from cloud_trainer.evaluation.splits import cut_time  # noqa: E402
from devtools.fleet_stores import store_aggregates, write_store_aggregates  # noqa: E402
from devtools.trainer_cli import output as cli  # noqa: E402

SERVED = "model (int8, LiteRT, as served)"


def _served(run: Path) -> dict[str, dict[str, float]]:
    evaluation = json.loads((run / "evaluation.json").read_text())
    row = evaluation[evaluation.get("served_row") or SERVED]
    return {mode: {m: row[mode][m] for m in ("recall@20", "ndcg@20", "se(recall@20)", "users")}
            for mode in ("all", "new")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=Path(os.environ.get("EDGE_REC_DATASETS",
                                                                             ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--stores", type=int, default=5)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--test-from", default="2011-11-09")
    parser.add_argument("--tune-budget", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet_aggregates.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cli("prepare", "online-retail", "--input", str(args.datasets / "online_retail" / "online_retail.csv.gz"),
            "--out", str(work / "data"))
        events = work / "data" / "events.csv.gz"
        started = time.monotonic()
        print(f"== raw events: training (tuning budget {args.tune_budget:g} s) and evaluating ...", flush=True)
        cli("train", "--events", str(events), "--out", str(work / "raw"), "--test-from", args.test_from,
            "--tune-budget", str(args.tune_budget))
        cli("evaluate", "--events", str(events), "--run", str(work / "raw"))
        raw = {"served": _served(work / "raw"), "seconds": round(time.monotonic() - started, 1),
               "settings": json.loads((work / "raw" / "tuning.json").read_text())["chosen"]}
        table = read_events(events)
        rows = []
        for k in args.k:
            started = time.monotonic()
            aggregates = store_aggregates(table, cut_time(args.test_from), args.stores, k)
            folder = work / f"aggregates-k{k}"
            size = write_store_aggregates(aggregates, folder)
            made = time.monotonic() - started
            print(f"== k = {k}: {size / 1e6:.1f} MB of aggregates from {args.stores} stores in {made:.0f} s; "
                  "training and evaluating ...", flush=True)
            run = work / f"fleet-k{k}"
            cli("train", "--fleet-aggregates", str(folder), "--settings-from", str(work / "raw"), "--out", str(run),
                "--test-from", args.test_from)
            cli("evaluate", "--events", str(events), "--run", str(run))
            served = _served(run)
            metrics = json.loads((run / "metrics.json").read_text())
            rows.append({"k": k, "served": served, "payload_bytes": size, "aggregate_seconds": round(made, 1),
                         "seconds": round(time.monotonic() - started, 1),
                         "stores": [{"device": a.device_id, "shoppers": a.shoppers_total, "items": len(a.items),
                                     "pairs": len(a.pair_first)} for a in aggregates],
                         "fleet_items": metrics["fleet_items"], "fleet_pairs": metrics["fleet_pairs"],
                         "kept": {mode: {m: round(served[mode][m] / raw["served"][mode][m], 3)
                                         for m in ("recall@20", "ndcg@20")} for mode in ("all", "new")}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": "Online Retail", "test_from": args.test_from, "stores": args.stores,
                                    "raw": raw, "aggregates": rows}, indent=1))
    print("| training data | Recall@20 all | NDCG@20 all | Recall@20 new | NDCG@20 new | kept (Recall@20 all / new) |")
    print("| --- | --- | --- | --- | --- | --- |")
    r = raw["served"]
    print(f"| raw events | {r['all']['recall@20']:.4f} ± {r['all']['se(recall@20)']:.4f} | {r['all']['ndcg@20']:.4f} | "
          f"{r['new']['recall@20']:.4f} ± {r['new']['se(recall@20)']:.4f} | {r['new']['ndcg@20']:.4f} | 100% |")
    for row in rows:
        s, kept = row["served"], row["kept"]
        print(f"| aggregates, k = {row['k']} ({row['fleet_pairs']} pairs) | {s['all']['recall@20']:.4f} ± "
              f"{s['all']['se(recall@20)']:.4f} | {s['all']['ndcg@20']:.4f} | {s['new']['recall@20']:.4f} ± "
              f"{s['new']['se(recall@20)']:.4f} | {s['new']['ndcg@20']:.4f} | "
              f"{kept['all']['recall@20']:.0%} / {kept['new']['recall@20']:.0%} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

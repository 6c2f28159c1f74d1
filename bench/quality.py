"""Served quality on three kinds of shop, trained and evaluated with the trainer's own commands.

For each shop: ``cloud-trainer prepare`` (or the generator), ``train --test-from`` with the
default settings search (its budget, time and choice are recorded), ``evaluate`` (the int8 model
through the agent's recommendation path, beside every baseline, both modes). Results go to
``bench/results/quality.json`` and a Markdown table is printed.

- **Online Retail** (UCI): a gift wholesaler whose customers re-buy the same items; purchases only.
- **RetailRocket** (the sample in ``../shared/datasets``): views, carts and a few purchases. With
  46 purchases in 9,385 events, a hit is any event (``--target any``); the cut (2015-07-15) is the
  one that leaves the most shoppers on both sides of it, and they are few (see the table).
- **Generated** (``devtools/synthetic_shop.py``, seeded): shoppers with planted tastes over 100
  categories who rarely buy an item twice (3%).

    python bench/quality.py [--datasets ../shared/datasets] [--tune-budget 180]
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

from devtools.synthetic_shop import ShopSpec, write  # noqa: E402
from devtools.trainer_cli import output as cli  # noqa: E402

SERVED = "model (int8, LiteRT, as served)"
BASELINES = ("popularity", "repeat-purchase", "item-kNN (cosine)", "EASE (lambda 200)")


def _shops(datasets: Path, work: Path) -> list[dict[str, str]]:
    cli("prepare", "online-retail", "--input", str(datasets / "online_retail" / "online_retail.csv.gz"),
        "--out", str(work / "online_retail"))
    cli("prepare", "retailrocket", "--input", str(datasets / "retailrocket_sample" / "sample_events.csv"),
        "--out", str(work / "retailrocket"))
    events, items = write(ShopSpec(), work / "generated")
    return [
        {"shop": "Online Retail", "kind": "gift wholesaler, customers re-buy (purchases)",
         "events": str(work / "online_retail" / "events.csv.gz"), "items": str(work / "online_retail" / "items.csv"),
         "test_from": "2011-11-09", "target": "purchase"},
        {"shop": "RetailRocket sample", "kind": "views and carts, few purchases (hit: any event)",
         "events": str(work / "retailrocket" / "events.csv.gz"), "items": "", "test_from": "2015-07-15",
         "target": "any"},
        {"shop": "Generated shop", "kind": "rare re-purchases, planted tastes, 100 categories (purchases)",
         "events": str(events), "items": str(items), "test_from": "2024-06-01", "target": "purchase"},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=Path(os.environ.get("EDGE_REC_DATASETS",
                                                                             ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--tune-budget", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for shop in _shops(args.datasets, work):
            run = work / "runs" / shop["shop"].replace(" ", "_")
            started = time.monotonic()
            print(f"== {shop['shop']}: training (tuning budget {args.tune_budget:g} s) ...", flush=True)
            cli("train", "--events", shop["events"], *(["--items", shop["items"]] if shop["items"] else []),
                "--out", str(run), "--test-from", shop["test_from"], "--target", shop["target"],
                "--tune-budget", str(args.tune_budget))
            train_s = time.monotonic() - started
            print(f"== {shop['shop']}: evaluating ...", flush=True)
            cli("evaluate", "--events", shop["events"], "--run", str(run))
            evaluation = json.loads((run / "evaluation.json").read_text())
            tuning = json.loads((run / "tuning.json").read_text())
            row: dict[str, object] = {**shop, "train_seconds": round(train_s, 1),
                                      "tuning": {k: tuning[k] for k in ("chosen", "seconds", "stopped_by",
                                                                        "budget_s", "validation_shoppers")}
                                      | {"trials": len(tuning["trials"])}}
            for mode in ("all", "new"):
                best = max(BASELINES, key=lambda name: evaluation[name][mode]["recall@20"])
                served = evaluation[evaluation.get("served_row") or SERVED][mode]
                row[mode] = {"model": served["recall@20"], "se": served["se(recall@20)"],
                             "users": served["users"], "best_baseline": best,
                             "baseline": evaluation[best][mode]["recall@20"],
                             "baseline_se": evaluation[best][mode]["se(recall@20)"]}
            results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tune_budget_s": args.tune_budget, "shops": results}, indent=1))
    print("| shop | mode | int8 as served, Recall@20 (se) | best baseline (se) | test shoppers | tuning |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results:
        tuning = row["tuning"]
        for mode in ("all", "new"):
            m = row[mode]
            print(f"| {row['shop']} | {mode} | {m['model']:.4f} ({m['se']:.4f}) | {m['best_baseline']} "  # type: ignore[index]
                  f"{m['baseline']:.4f} ({m['baseline_se']:.4f}) | {m['users']} | "  # type: ignore[index]
                  f"{tuning['trials']} trials, {tuning['seconds']} s, {tuning['stopped_by']} |")  # type: ignore[index]
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The transformer (``--model transformer``) against the factorized default, through the served path.

For each shop: ``cloud-trainer train --test-from`` of both models (the factorized one with its
settings search, budget ``--tune-budget``), then each run's export as ``export`` builds it (int8,
or float16 where int8 fails a gate), loaded in LiteRT behind the agent's own recommendation
function (:mod:`cloud_trainer.evaluation.served`: the agent's event cap, purchase memory,
exclusions and popularity fill), on the test shoppers (a seeded sample of ``--max-users``):
Recall@20 with its standard error in mode all and mode new (exclude what they bought).
``cloud-trainer evaluate`` does not score a transformer run yet; this is its served path.

    nice python bench/transformer_quality.py [--shops generated,online-retail] [--max-users 5000]

Writes ``bench/results/transformer_quality.json`` and prints a Markdown table.
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


def _shops(names: list[str], datasets: Path, work: Path) -> list[dict[str, str]]:
    shops = []
    if "generated" in names:
        events, items = write(ShopSpec(), work / "generated")
        shops.append({"shop": "Generated shop", "events": str(events), "items": str(items),
                      "test_from": "2024-06-01", "target": "purchase"})
    if "online-retail" in names:
        cli("prepare", "online-retail", "--input", str(datasets / "online_retail" / "online_retail.csv.gz"),
            "--out", str(work / "online_retail"))
        shops.append({"shop": "Online Retail", "events": str(work / "online_retail" / "events.csv.gz"),
                      "items": str(work / "online_retail" / "items.csv"), "test_from": "2011-11-09",
                      "target": "purchase"})
    if "retailrocket" in names:
        cli("prepare", "retailrocket", "--input", str(datasets / "retailrocket_sample" / "sample_events.csv"),
            "--out", str(work / "retailrocket"))
        shops.append({"shop": "RetailRocket sample", "events": str(work / "retailrocket" / "events.csv.gz"),
                      "items": "", "test_from": "2015-07-15", "target": "any"})
    return shops


def served_quality(run: Path, events: Path, day: str, target: str, max_users: int) -> dict[str, object]:
    """Both modes' served Recall@20 of ``run``'s export, its variant and size."""
    import keras
    import numpy as np

    import cloud_trainer.models.transformer  # noqa: F401  (registers the encoder layer)
    from cloud_trainer.data.events_io import read_events
    from cloud_trainer.delivery.bundler import DEFAULT_TOP_K, export_checked
    from cloud_trainer.evaluation import metrics, splits
    from cloud_trainer.evaluation.evaluate_run import EXCLUDE_FOR
    from cloud_trainer.evaluation.served import ServedModel, served_rankings, stored_shoppers
    from cloud_trainer.models.dot_product import extract_weights
    from shared.catalog import parse_catalog

    config = json.loads((run / "config.json").read_text())
    model = keras.models.load_model(run / "model.keras")
    histories = np.load(run / "histories.npz")
    sequence = config["model"] == "transformer"
    weights = None if sequence else extract_weights(model)
    num_items = int(model.get_layer("item_vectors").get_weights()[1].shape[0])
    catalog = parse_catalog((run / "catalog.json").read_bytes(), num_items)
    length = int(config["history_length"])
    exported = export_checked(model, weights, length, min(DEFAULT_TOP_K, num_items), "auto",
                              (histories["items"], histories["weights"]), histories)
    served = ServedModel(exported.model_bytes, catalog, length)
    cut = splits.cut_time(day)
    data = splits.sample_users(splits.split(read_events(events), cut, [i.id for i in catalog.items], target),
                               max_users)
    shoppers = stored_shoppers(data.train, data.history, now=cut)
    started = time.monotonic()
    ranked = {"all": served_rankings(served, shoppers, 20),
              "new": served_rankings(served, shoppers, 20, EXCLUDE_FOR[target])}
    figures = metrics.evaluate_ranked(ranked, data)
    return {"variant": exported.variant, "model_bytes": len(exported.model_bytes), "history_length": length,
            "serve_seconds": round(time.monotonic() - started, 1),
            **{mode: {k: figures[mode][k] for k in ("recall@20", "se(recall@20)", "users")} for mode in figures}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=Path(os.environ.get("EDGE_REC_DATASETS",
                                                                             ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--shops", default="generated,online-retail")
    parser.add_argument("--tune-budget", type=float, default=120.0)
    parser.add_argument("--max-users", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--models", default="factorized,transformer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transformer_quality.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for shop in _shops(args.shops.split(","), args.datasets, work):
            for model in args.models.split(","):
                run = work / "runs" / f"{shop['shop'].replace(' ', '_')}-{model}"
                extra = (["--tune-budget", str(args.tune_budget)] if model == "factorized"
                         else ["--epochs", str(args.epochs), "--dim", "64"])
                print(f"== {shop['shop']}, {model}: training ...", flush=True)
                started = time.monotonic()
                cli("train", "--events", shop["events"], *(["--items", shop["items"]] if shop["items"] else []),
                    "--out", str(run), "--test-from", shop["test_from"], "--target", shop["target"], "--model", model,
                    *extra)
                train_s = round(time.monotonic() - started, 1)
                row = {"shop": shop["shop"], "model": model, "train_seconds": train_s,
                       **served_quality(run, Path(shop["events"]), shop["test_from"], shop["target"], args.max_users)}
                if model == "transformer":
                    trained = json.loads((run / "metrics.json").read_text())
                    row["epoch_kept"], row["validation_recall_at_20"] = (trained["epoch_kept"],
                                                                         trained["validation_recall_at_20"])
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("| shop | model | served variant | Recall@20 all | Recall@20 new | train s | model bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cell = {m: f"{r[m]['recall@20']:.4f} ± {r[m]['se(recall@20)']:.4f}" for m in ("all", "new")}  # type: ignore[index]
        print(f"| {r['shop']} | {r['model']} | {r['variant']} | {cell['all']} | {cell['new']} | {r['train_seconds']} "
              f"| {r['model_bytes']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

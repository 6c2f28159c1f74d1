"""The transformer (``--model transformer``) against the factorized default, through the served path.

For each shop: ``cloud-trainer train --test-from`` of both models (the factorized one with its
settings search, budget ``--tune-budget``), then each run's export as ``export`` builds it (int8,
or float16 where int8 fails a gate), loaded in LiteRT behind the agent's own recommendation
function (:mod:`cloud_trainer.evaluation.served`: the agent's event cap, purchase memory,
exclusions and popularity fill), on the test shoppers (a seeded sample of ``--max-users``):
Recall@20 with its standard error in mode all and mode new (exclude what they bought).
``cloud-trainer evaluate --run RUN`` scores a transformer run through the same served path
(:func:`cloud_trainer.evaluation.served.load_run` and :func:`~cloud_trainer.evaluation.served.served_modes`).

Shops: ``generated`` (planted tastes, no order), ``session`` (the generated shop with ordered
sessions, ``ShopSpec(sequential=True)``: views follow the complements of the item viewed last;
``session-large``: the same with 20,000 shoppers, for half the standard errors),
``online-retail`` and ``retailrocket`` (the sample: 38 test shoppers, too few to conclude).
``--models`` may add ``blend`` (``--model blend``: both models in one graph, the transformer's weight
chosen on the validation window of the training period, :mod:`cloud_trainer.models.blend`); with
the factorized model run too, the blend's row has its per-shopper difference from it (mean and
standard error, the same test shoppers).

    nice python bench/transformer_quality.py [--shops session,retailrocket] [--models factorized,blend]

Merges its rows into ``bench/results/transformer_quality.json`` (a shop and model run again
replaces its rows; the others are kept) and prints a Markdown table of the file. Each row also has
``next_purchase``: Recall@20 of the first test-period purchase alone (the step after the history).
``--work DIR --reuse`` serves the runs kept in DIR again instead of training them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cloud_trainer.data.events_io import EventTable
    from cloud_trainer.delivery.run_export import Exported
    from cloud_trainer.evaluation.served import ServedModel
    from cloud_trainer.evaluation.splits import Split

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.synthetic_shop import ShopSpec, write  # noqa: E402
from devtools.trainer_cli import output as cli  # noqa: E402

#: The session shop: about the generated shop's number of events (184k against 165k).
SESSION_SHOP = ShopSpec(users=5000, sequential=True)
SESSION_LARGE = ShopSpec(users=20_000, sequential=True)
TARGETS_LEARNT = {"factorized": "closed form", "transformer": "next event", "blend": "both, weight on validation"}


@functools.lru_cache(maxsize=4)
def served_model(run: Path) -> tuple[ServedModel, Exported]:
    """``run``'s export as ``export`` builds it (``auto``), loaded as the agent loads a bundle
    (:func:`cloud_trainer.evaluation.served.load_run`, as ``cloud-trainer evaluate`` loads it)."""
    from cloud_trainer.evaluation.served import load_run

    loaded = load_run(run)
    return loaded.served, loaded.exported


def _shops(names: list[str], datasets: Path, work: Path) -> list[dict[str, str]]:
    shops = []
    if "generated" in names:
        events, items = write(ShopSpec(), work / "generated")
        shops.append({"shop": "Generated shop", "events": str(events), "items": str(items),
                      "test_from": "2024-06-01", "target": "purchase"})
    if "session" in names:
        events, items = write(SESSION_SHOP, work / "session")
        shops.append({"shop": "Session shop", "events": str(events), "items": str(items),
                      "test_from": "2024-06-01", "target": "purchase"})
    if "session-large" in names:  # 4 times the shoppers: half the standard errors
        events, items = write(SESSION_LARGE, work / "session-large")
        shops.append({"shop": "Session shop, 20,000 shoppers", "events": str(events), "items": str(items),
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
    from cloud_trainer.data.events_io import read_events
    from cloud_trainer.evaluation import metrics, splits
    from cloud_trainer.evaluation.served import served_modes, stored_shoppers
    from cloud_trainer.models.blend_choice import per_shopper_recall

    served, exported = served_model(run)
    cut = splits.cut_time(day)
    table = read_events(events)
    data = splits.sample_users(splits.split(table, cut, [i.id for i in served.catalog.items], target),
                               max_users)
    shoppers = stored_shoppers(data.train, data.history, now=cut)
    started = time.monotonic()
    ranked = served_modes(served, shoppers, 20, target)
    figures = metrics.evaluate_ranked(ranked, data)
    recalls = {mode: per_shopper_recall(ranked[mode], data.targets[mode]) for mode in ranked}
    _PER_SHOPPER[run] = {mode: r[np.isfinite(r)] for mode, r in recalls.items()}  # shoppers with targets
    first = _next_purchases(table, data, cut, target, {item.id: n for n, item in enumerate(served.catalog.items)})
    return {"variant": exported.variant, "model_bytes": len(exported.model_bytes),
            "history_length": served.history_length, "serve_seconds": round(time.monotonic() - started, 1),
            **{mode: {k: figures[mode][k] for k in ("recall@20", "se(recall@20)", "users")} for mode in figures},
            "next_purchase": {mode: {k: v for k, v in metrics.recall_ndcg(ranked[mode], first[mode]).items()
                                     if k in ("recall@20", "se(recall@20)", "users")} for mode in ranked}}


def _next_purchases(table: EventTable, data: Split, cut: float, target: str,
                    index: dict[str, int]) -> dict[str, list[set[int]]]:
    """Per mode and test shopper, the first item they bought in the test period (mode new: the
    first not bought before), as a one-item target set: the step after the history."""
    from cloud_trainer.evaluation import splits

    test = np.flatnonzero((table.timestamp >= cut) & splits.is_target(table.kind, target))
    bought: dict[str, list[int]] = {}
    for row in test[np.argsort(table.timestamp[test], kind="stable")].tolist():
        bought.setdefault(table.user_ids[table.user[row]], []).append(index.get(table.item_ids[table.item[row]], -1))
    firsts: dict[str, list[set[int]]] = {"all": [], "new": []}
    for user, before in zip(data.users, data.bought_before, strict=True):
        items = [i for i in bought.get(user, []) if i >= 0]
        firsts["all"].append(set(items[:1]))
        firsts["new"].append(set([i for i in items if i not in before][:1]))
    return firsts


def _merged(path: Path, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows of ``path`` but those of a (shop, model) in ``rows``, then ``rows``."""
    old = json.loads(path.read_text()) if path.exists() else []
    again = {(r["shop"], r["model"]) for r in rows}
    return [r for r in old if (r["shop"], r["model"]) not in again] + rows


def _cell(row: dict[str, object], mode: str) -> str:
    figures = row[mode]
    assert isinstance(figures, dict)
    return f"{figures['recall@20']:.4f} ± {figures['se(recall@20)']:.4f}"


#: Per run served: each test shopper's Recall@20 per mode (for the paired differences).
_PER_SHOPPER: dict[Path, dict[str, np.ndarray]] = {}


def _paired(run: Path, baseline: Path) -> dict[str, dict[str, float]]:
    """Per mode: ``run``'s Recall@20 less ``baseline``'s, shopper by shopper (the same sample)."""
    out = {}
    for mode in ("all", "new"):
        d = _PER_SHOPPER[run][mode] - _PER_SHOPPER[baseline][mode]
        out[mode] = {"mean": round(float(d.mean()), 4), "se": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=Path(os.environ.get("EDGE_REC_DATASETS",
                                                                             ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--shops", default="generated,online-retail")
    parser.add_argument("--tune-budget", type=float, default=120.0)
    parser.add_argument("--max-users", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--models", default="factorized,transformer")
    parser.add_argument("--work", type=Path, help="keep the shops and runs here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="serve the runs already in --work, not trained again")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transformer_quality.json")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    earlier = {(r["shop"], r["model"]): r for r in _merged(args.out, [])}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for shop in _shops(args.shops.split(","), args.datasets, work):
            runs = {}
            for model in args.models.split(","):
                run = runs[model] = work / "runs" / f"{shop['shop'].replace(' ', '_')}-{model}"
                extra = {"factorized": ["--tune-budget", str(args.tune_budget)],
                         "transformer": ["--epochs", str(args.epochs), "--dim", "64"]}
                extra["blend"] = extra["factorized"] + extra["transformer"]
                if args.reuse and (run / "config.json").exists():  # served again; its training time as recorded
                    train_s = earlier.get((shop["shop"], model), {}).get("train_seconds")
                else:
                    print(f"== {shop['shop']}, {model}: training ...", flush=True)
                    started = time.monotonic()
                    cli("train", "--events", shop["events"], *(["--items", shop["items"]] if shop["items"] else []),
                        "--out", str(run), "--test-from", shop["test_from"], "--target", shop["target"],
                        "--model", model, *extra[model])
                    train_s = round(time.monotonic() - started, 1)
                row = {"shop": shop["shop"], "model": model, "train_seconds": train_s,
                       **served_quality(run, Path(shop["events"]), shop["test_from"], shop["target"], args.max_users)}
                if model == "transformer":
                    trained = json.loads((run / "metrics.json").read_text())
                    row["epoch_kept"], row["validation_recall_at_20"] = (trained["epoch_kept"],
                                                                         trained["validation_recall_at_20"])
                if model == "blend":
                    blend = json.loads((run / "blend.json").read_text())
                    row["a"], row["validation"] = blend["a"], blend["recall"]
                    if "factorized" in runs and runs["factorized"] in _PER_SHOPPER:
                        row["minus factorized"] = _paired(run, runs["factorized"])
                row["targets_learnt"] = TARGETS_LEARNT[model]
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    merged = _merged(args.out, rows)
    args.out.write_text(json.dumps(merged, indent=1))
    print("| shop | model | targets learnt | served variant | Recall@20 all | Recall@20 new | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in merged:
        print(f"| {r['shop']} | {r['model']} | {r.get('targets_learnt', '')} | {r.get('variant', '')} "
              f"| {_cell(r, 'all')} | {_cell(r, 'new')} | {r.get('train_seconds', '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

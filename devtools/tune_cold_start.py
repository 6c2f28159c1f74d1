"""The validation grid behind the cold-start defaults of :mod:`cloud_trainer.side_features`.

Only events before the test period are read: the factorized model is fitted on events before
``--validate-from`` and the month up to ``--test-from`` is the validation period. The new items
are the items of the items file that have no event before ``--validate-from``. For every
(ridge penalty, vector scale) pair it prints, for the shoppers who bought a new item in the
validation month (float model): Recall@20 of the new items they bought and of everything they
bought, the share of top-20 slots given to new items, and Recall@10 with the new items ranked on
their own. The pair chosen has the best Recall@20 of everything bought; pairs within 0.001 of it
count as tied, and the tie goes to the one that finds more new items.

    python devtools/tune_cold_start.py --events data/events.csv.gz --items data/items.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_trainer import evaluation  # noqa: E402
from cloud_trainer.evaluate_run import model_histories  # noqa: E402
from cloud_trainer.events_io import read_events, read_items  # noqa: E402
from cloud_trainer.factorized import FactorizedSettings, fit  # noqa: E402
from cloud_trainer.model import model_from_weights  # noqa: E402
from cloud_trainer.side_features import SideFeatureSettings, extend_with_cold_items  # noqa: E402
from cloud_trainer.train import HISTORY_LENGTH, catalogue_items  # noqa: E402

TIE = 0.001


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--test-from", default="2011-11-09", help="nothing from this day on is read")
    parser.add_argument("--validate-from", default="2011-10-09")
    parser.add_argument("--l2", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0, 3.0, 4.0, 5.0, 6.0, 8.0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    before_test = evaluation.train_period(read_events(args.events), evaluation.cut_time(args.test_from))
    cut = evaluation.cut_time(args.validate_from)
    train = evaluation.train_period(before_test, cut)
    metadata, _ = read_items(args.items)
    known, new = catalogue_items(metadata, train.item_ids)
    data = evaluation.cold_start_split(before_test, cut, [*train.item_ids, *(item.id for item in new)])
    print(f"validation {args.validate_from} .. {args.test_from}: {len(train.item_ids)} trained items, "
          f"{len(new)} new items listed, {len(data.users)} shoppers bought a new item", flush=True)
    history_length = HISTORY_LENGTH["factorized"]
    weights = fit(train, FactorizedSettings())
    inputs = list(model_histories(train, data.history, history_length))
    rows = []
    for l2 in args.l2:
        for scale in args.scale:
            extended = extend_with_cold_items(weights, known, new, SideFeatureSettings(l2=l2, vector_scale=scale))
            scores = model_from_weights(extended, history_length).predict(inputs, verbose=0)
            rows.append(((l2, scale), evaluation.cold_start_metrics(scores, data)
                         | evaluation.among_new_items(scores, data, ks=(10,))))
    print("| l2 | scale | recall@20 new items | recall@20 all items | new-item share of top 20 "
          "| among new: recall@10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (l2, scale), m in rows:
        print(f"| {l2:g} | {scale:g} | {m['recall@20 new items']} | {m['recall@20 all items']} | "
              f"{m['new-item share of top 20']} | {m['recall@10']} |")
    best = max(m["recall@20 all items"] for _, m in rows)
    tied = [row for row in rows if row[1]["recall@20 all items"] >= best - TIE]
    (l2, scale), _ = max(tied, key=lambda row: row[1]["recall@20 new items"])
    print(f"chosen: l2 {l2:g}, vector_scale {scale:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``cloud-trainer evaluate``: a trained run and the baselines, on the held-out period of the same events.

The model is scored twice: the float Keras model over its whole catalogue (a reference), and
what agents serve: the TFLite export ``export`` would bundle (int8, or float16 where int8 fails its checks; top K and
explanations in the graph), behind the agent's own recommendation function with its history
cap, exclusions and popularity fill (:mod:`cloud_trainer.evaluation.served`). A run trained on data that
includes the test period is refused: its figures would be a leak, not a result.

Then the cold-start section: shoppers who bought items that had no training events ("new
items"), ranked over the whole catalogue of the run (trained items plus the new items it
knows from side features), beside the same model without the new items, and the new items
ranked on their own with each kind of side feature left out (float model).

A transformer run (``--model transformer``) is scored the same way as served (its export takes
the event kinds and time gaps the agent builds); the float row and the cold-start section do not
apply to it and the report says so in a note (:data:`TRANSFORMER_NOTES`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable, read_events
from cloud_trainer.errors import EvaluationError
from cloud_trainer.evaluation import metrics, splits
from cloud_trainer.evaluation.baselines import BASELINES
from cloud_trainer.evaluation.report import NOT_COMPUTED, Report, write_report
from cloud_trainer.evaluation.served import load_run, served_modes, served_rankings, stored_shoppers
from cloud_trainer.models.side_features import SideFeatureSettings, extend_with_cold_items
from shared.events import history_inputs


def served_row(variant: str) -> str:
    """The table's row of what agents serve: the variant ``export`` bundles (int8 unless refused)."""
    return f"model ({variant}, LiteRT, as served)"

#: Cold-start ablations: which side features predict the new items' vectors.
FEATURE_ABLATIONS = {
    "title words, category, price bucket (as trained)": {},
    "title words only": {"use_category": False, "use_price": False},
    "price bucket only": {"use_title": False, "use_category": False},
}
#: Without side features every new item gets the same vector: their order is arbitrary.
NO_FEATURES = "no side features (all new items alike: a random order)"

log = logging.getLogger(__name__)


def model_histories(train: EventTable, history: list[np.ndarray], history_length: int,
                    index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs for every test user: their training events, as the agent would build them
    (with ``index``, training item -> model item, -1 for items the model does not know: left out,
    as the agent leaves them out)."""
    items, weights = [], []
    for rows in history:
        events = [(int(train.item[r]), KINDS_BY_CODE[int(train.kind[r])]) for r in rows[-history_length:]]
        if index is not None:
            events = [(int(index[item]), kind) for item, kind in events if index[item] >= 0]
        i, w = history_inputs(events, history_length)
        items.append(i)
        weights.append(w)
    return np.asarray(items, dtype=np.int32), np.asarray(weights, dtype=np.float32)


#: Places ranked for the cold-start figures (Recall@20 and the among-new-items Recall@10 and @20).
COLD_START_K = 20

#: What is not scored for a sequence model's run (transformer, blend), and why (one line each, in
#: the log and the report).
TRANSFORMER_NOTES = (
    "model (float, Keras): not computed for a transformer or blend run: its float model takes the event kinds "
    "and time gaps too; the served rows are its figures",
    "cold start: not computed for a transformer or blend run: a transformer has no cold-start items (an item "
    "without training events has no embedding to attend to); a blend scores them with its factorized part only",
)


def evaluate_run(run_dir: Path | None, events: Path, test_from: str | None,
                 target: str | None = None, variant: str = "auto") -> Report:
    config = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
    day = test_from or config.get("test_from")
    if not day:
        raise EvaluationError("give --test-from, or a run trained with --test-from")
    if run_dir is not None and config.get("test_from") != day:
        raise EvaluationError(f"the run was trained with test_from={config.get('test_from')!r}, not {day!r}: "
                              "its training data overlaps the test period")
    table = read_events(events)
    model = _RunModel(run_dir, config, variant) if run_dir is not None else None
    # the targets: what test users bought of the items the model can recommend (the trained items,
    # and new items listed in the run's catalogue); the baselines know the trained items only.
    # A run whose catalogue is not these events' training items (one trained on fleet aggregates)
    # is scored on the baselines' targets: its lists are mapped onto the training items.
    catalogue = [item.id for item in model.items] if model else None
    trained = splits.train_period(table, splits.cut_time(day)).item_ids if model else []
    foreign = catalogue is not None and catalogue[: len(trained)] != trained
    data = splits.split(table, splits.cut_time(day), None if foreign else catalogue,
                        target or str(config.get("target", "purchase")))
    if model is not None and foreign:
        log.info("the run's catalogue is not these events' training items (%d of its %d items are among them): "
                 "its lists are scored against the training items; no cold-start figures", len(
                     set(catalogue or []) & set(trained)), len(model.items))
        model.align(data.train.item_ids)
    log.info("test period from %s: %d test users (%d with new items), %d items",
             day, len(data.users), sum(1 for t in data.targets["new"] if t), data.num_items)
    test_users = {"total": len(data.users)}
    data = splits.sample_users(data, splits.MAX_TEST_USERS)
    if len(data.users) < test_users["total"]:
        test_users |= {"evaluated": len(data.users), "sample_seed": splits.SAMPLE_SEED}
        log.info("more than %d test users: evaluating a seeded sample of %d (seed %d) of the %d",
                 splits.MAX_TEST_USERS, len(data.users), splits.SAMPLE_SEED, test_users["total"])
    report = Report()
    if model is not None and model.weights is None:  # a sequence model: transformer or blend
        report.notes += TRANSFORMER_NOTES
        for note in TRANSFORMER_NOTES:
            log.info("%s", note)
    if model is not None:
        _evaluate_model(model, data, splits.cut_time(day), report)
        if not foreign:
            _evaluate_cold_start(model, table, splits.cut_time(day), report)  # not for a transformer
            from cloud_trainer.evaluation.scenes import evaluate_scenes

            report.scenes = evaluate_scenes(model.served, model.variant, table, splits.cut_time(day), data.target)
    _evaluate_baselines(data, report)
    if run_dir is not None:
        (run_dir / "evaluation.json").write_text(json.dumps(
            {"test_from": day, "target": data.target, "test_users": test_users,
             "served_row": served_row(model.variant) if model else None, **report.rows,
             "cold_start": report.cold_start, "among_new_items": report.among_new, "scenes": report.scenes,
             "notes": report.notes},
            indent=1))
        log.info("report: %s", write_report(run_dir, report, day))
    return report


def _evaluate_baselines(data: splits.Split, report: Report) -> None:
    """Each baseline ranked batch by batch; one that cannot be built at this size (None) gets a
    row marked not computed."""
    for name, build in BASELINES.items():
        scorer = build(data)
        if scorer is None:
            report.rows[name] = {mode: {NOT_COMPUTED: True} for mode in splits.MODES}
            continue
        report.rows[name] = metrics.evaluate(scorer, data)
        log.info("%s: recall@20 %.4f (all), %.4f (new)", name, report.rows[name]["all"]["recall@20"],
                 report.rows[name]["new"]["recall@20"])


class _RunModel:
    """A run's model: float (Keras) over its whole catalogue, and the export as agents run it."""

    def __init__(self, run_dir: Path, config: dict[str, object], variant: str) -> None:
        self.history_length = int(config["history_length"])  # type: ignore[call-overload]
        # the variant export would bundle, with its checks: what agents would run
        loaded = load_run(run_dir, variant)
        self.keras, self.weights, self.top_k = loaded.keras, loaded.weights, loaded.top_k  # weights None: transformer
        self.items = list(loaded.served.catalog.items)
        self.variant = loaded.exported.variant
        self.served = loaded.served
        self.to_train: np.ndarray | None = None  # model item -> training item (-1: none), see align
        self.from_train: np.ndarray | None = None

    def align(self, trained: list[str]) -> None:
        """Score against ``trained`` (the events' training items), not the run's catalogue order."""
        at = {item_id: n for n, item_id in enumerate(trained)}
        self.to_train = np.asarray([at.get(item.id, -1) for item in self.items], dtype=np.int64)
        self.from_train = np.full(len(trained), -1, dtype=np.int64)
        known = self.to_train >= 0
        self.from_train[self.to_train[known]] = np.flatnonzero(known)

    def inputs(self, train: EventTable, history: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return model_histories(train, history, self.history_length, self.from_train)

    def float_scorer(self, inputs: tuple[np.ndarray, np.ndarray], keras_model: object = None) -> metrics.BatchScorer:
        """Scores of the float Keras model (or ``keras_model``) for some of ``inputs``' rows (aligned:
        over the training items, those the model lacks below every other)."""
        model = keras_model or self.keras

        def scores(rows: np.ndarray) -> np.ndarray:
            out = np.asarray(model.predict([inputs[0][rows], inputs[1][rows]],  # type: ignore[attr-defined]
                                           batch_size=512, verbose=0))
            if self.to_train is None:
                return out
            aligned = np.full((len(out), len(self.from_train)), out.min() - 1.0, dtype=out.dtype)  # type: ignore[arg-type]
            known = self.to_train >= 0
            aligned[:, self.to_train[known]] = out[:, known]
            return aligned

        return scores

    def to_training_items(self, ranked: np.ndarray) -> np.ndarray:
        """Ranked model items as training items (-1 for those the events' training period lacks)."""
        if self.to_train is None:
            return ranked
        return np.where(ranked >= 0, self.to_train[np.maximum(ranked, 0)], -1)

    def served_ranked(self, inputs: tuple[np.ndarray, np.ndarray], allowed: np.ndarray | None = None) -> np.ndarray:
        """[users, top K] of the served graph itself (no popularity fill) under a filter mask, -1 where
        fewer than K allowed items came back."""
        ranked = np.stack([self.served.score(items, weights, allowed).indices
                           for items, weights in zip(*inputs, strict=True)])
        return ranked if allowed is None else np.where(allowed[ranked], ranked, -1)


def _evaluate_model(model: _RunModel, data: splits.Split, cut: float, report: Report) -> None:
    if model.to_train is None and [item.id for item in model.items[: data.num_items]] != data.train.item_ids:
        raise EvaluationError("the run's items are not the training period's items of these events")
    if model.weights is not None:  # a transformer has no float row (TRANSFORMER_NOTES)
        report.rows["model (float, Keras)"] = metrics.evaluate(
            model.float_scorer(model.inputs(data.train, data.history)), data)
    # what the agent serves: its catalogue (new items too), the REST route's history, exclusions
    shoppers = stored_shoppers(data.train, data.history, now=cut)
    ranked = served_modes(model.served, shoppers, model.top_k, data.target)
    report.rows[served_row(model.variant)] = metrics.evaluate_ranked(
        {mode: model.to_training_items(lists) for mode, lists in ranked.items()}, data)


def _evaluate_cold_start(model: _RunModel, table: EventTable, cut: float, report: Report) -> None:
    from cloud_trainer.models.dot_product import model_from_weights

    if model.weights is None:  # a transformer: no cold-start items (TRANSFORMER_NOTES)
        return
    items = model.items
    data = splits.cold_start_split(table, cut, [item.id for item in items])
    if not data.users:
        log.info("cold start: nobody bought an item without training events in the test period")
        return
    log.info("cold start: %d shoppers bought %d new items (%d in the run's catalogue)", len(data.users),
             len({i for t in data.new_targets for i in t}), data.num_items - data.num_known)
    data = splits.sample_shoppers(data)
    inputs = model.inputs(data.train, data.history)
    trained_only = np.arange(data.num_items) < data.num_known
    without = model.served_ranked(inputs, trained_only)
    report.cold_start = {f"model ({model.variant}, LiteRT), trained items only":
                         metrics.cold_start_metrics(without, data)}
    if data.num_items == data.num_known:
        return
    served = served_rankings(model.served, stored_shoppers(data.train, data.history, now=cut), model.top_k)
    report.cold_start["model (float, Keras), with new items"] = metrics.cold_start_metrics(
        metrics.ranked_in_batches(model.float_scorer(inputs), len(data.users), data.num_items, COLD_START_K), data)
    report.cold_start[f"{served_row(model.variant)}, with new items"] = metrics.cold_start_metrics(served, data)
    report.among_new[f"{model.variant} (LiteRT), side features as trained"] = metrics.among_new_items(
        model.served_ranked(inputs, ~trained_only), data)
    known_items, new_items = items[: data.num_known], items[data.num_known :]
    trained = model.weights.first_items(data.num_known)
    for name, switches in FEATURE_ABLATIONS.items():
        extended = extend_with_cold_items(trained, known_items, new_items, SideFeatureSettings(**switches))
        scorer = model.float_scorer(inputs, model_from_weights(extended, model.history_length))
        report.among_new[f"float, side features: {name}"] = metrics.among_new_items(
            metrics.ranked_in_batches(scorer, len(data.users), data.num_items, COLD_START_K, ~trained_only), data)
    report.among_new[NO_FEATURES] = metrics.random_among_new_items(data)

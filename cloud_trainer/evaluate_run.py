"""``cloud-trainer evaluate``: a trained run and the baselines, on the held-out period of the same events.

The model is scored twice: the float Keras model, and its int8 TFLite export in LiteRT (what the
agents run), both over every training item. A run trained on data that includes the test period
is refused: its figures would be a leak, not a result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cloud_trainer import evaluation
from cloud_trainer.events_io import KINDS_BY_CODE, read_events
from shared.events import history_inputs

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    pass


def model_histories(data: evaluation.Split, history_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs for every test user: their training events, as the agent would build them."""
    train = data.train
    items, weights = [], []
    for rows in data.history:
        events = [(int(train.item[r]), KINDS_BY_CODE[int(train.kind[r])]) for r in rows[-history_length:]]
        i, w = history_inputs(events, history_length)
        items.append(i)
        weights.append(w)
    return np.asarray(items, dtype=np.int32), np.asarray(weights, dtype=np.float32)


def litert_scores(model_bytes: bytes, items: np.ndarray, weights: np.ndarray, num_items: int) -> np.ndarray:
    """A [users, items] matrix that orders items as the TFLite model's full top-K does."""
    from cloud_trainer.export import litert_runner

    _, runner = litert_runner(model_bytes)
    scores = np.full((len(items), num_items), -np.inf)
    for row in range(len(items)):
        out = runner(history_items=items[row : row + 1], history_weights=weights[row : row + 1])  # type: ignore[operator]
        ranked = out["item_indices"][0]
        scores[row, ranked] = np.arange(len(ranked), 0, -1)
    return scores


def evaluate_run(run_dir: Path | None, events: Path, test_from: str | None) -> evaluation.Report:
    config = json.loads((run_dir / "config.json").read_text()) if run_dir else {}
    day = test_from or config.get("test_from")
    if not day:
        raise EvaluationError("give --test-from, or a run trained with --test-from")
    if run_dir is not None and config.get("test_from") != day:
        raise EvaluationError(f"the run was trained with test_from={config.get('test_from')!r}, not {day!r}: "
                              "its training data overlaps the test period")
    table = read_events(events)
    data = evaluation.split(table, evaluation.cut_time(day))
    log.info("test period from %s: %d test users (%d with new items), %d items",
             day, len(data.users), sum(1 for t in data.targets["new"] if t), data.num_items)
    report = evaluation.Report()
    if run_dir is not None:
        _evaluate_model(run_dir, config, data, report)
    for name, scorer in evaluation.BASELINES.items():
        report.rows[name] = evaluation.evaluate(scorer(data), data)
        log.info("%s: recall@20 %.4f (all), %.4f (new)", name, report.rows[name]["all"]["recall@20"],
                 report.rows[name]["new"]["recall@20"])
    if run_dir is not None:
        from cloud_trainer.report import write_report

        (run_dir / "evaluation.json").write_text(json.dumps({"test_from": day, **report.rows}, indent=1))
        log.info("report: %s", write_report(run_dir, report, day))
    return report


def _evaluate_model(run_dir: Path, config: dict[str, object], data: evaluation.Split,
                    report: evaluation.Report) -> None:
    import keras

    from cloud_trainer.export import to_tflite
    from cloud_trainer.model import extract_weights

    catalog = json.loads((run_dir / "catalog.json").read_bytes())
    if [item["id"] for item in catalog["items"]] != data.train.item_ids:
        raise EvaluationError("the run's items are not the training period's items of these events")
    history_length = int(config["history_length"])  # type: ignore[call-overload]
    items, weights = model_histories(data, history_length)
    model = keras.models.load_model(run_dir / "model.keras")
    report.rows["model (float, Keras)"] = evaluation.evaluate(
        np.asarray(model.predict([items, weights], batch_size=512, verbose=0)), data)
    calibration = np.load(run_dir / "histories.npz")
    int8 = to_tflite(extract_weights(model), history_length, data.num_items, "int8",
                     (calibration["items"], calibration["weights"]), explanations=False)
    report.rows["model (int8, LiteRT)"] = evaluation.evaluate(
        litert_scores(int8, items, weights, data.num_items), data)

"""Training run: events -> training set -> fitted Keras model, saved in a run directory.

Run directory::

    config.json      the settings of this run
    model.keras      the trained Keras model
    catalog.json     items in model index order, with the popularity fallback (shared.catalog): the
                     trained items, then the items file's items without events (cold start)
    histories.npz    a sample of real training histories with their next baskets (targets, -1 padded):
                     int8 calibration, the parity check and the quantization quality gate
    metrics.json     data counts, per-epoch loss, wall time
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud_trainer.data.events_io import read_events, read_items
from cloud_trainer.data.training_set import TrainingSet, build_training_set, next_baskets, popularity
from cloud_trainer.distribute import DISTRIBUTE, Placement, output_directory, strategy
from cloud_trainer.evaluation.splits import cut_time, is_target, train_period
from cloud_trainer.models.side_features import catalogue_items
from cloud_trainer.models.tuning import DEFAULT_BUDGET_S, DEFAULT_VALIDATION_SHARE, Candidate, tune
from shared.catalog import Catalog, CatalogItem

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from cloud_trainer.data.events_io import EventTable
    from cloud_trainer.models.dot_product import ModelWeights
    from cloud_trainer.models.fleet_gram import FleetGram

log = logging.getLogger(__name__)


MODELS = ("factorized", "two-tower", "transformer", "blend")
#: The two-tower model's training loss (cloud_trainer.models.retrieval).
SOFTMAXES = ("in-batch", "full")
#: History length per model kind when not given (the factorized model counts repeats over more).
HISTORY_LENGTH = {"factorized": 200, "two-tower": 50, "transformer": 50, "blend": 200}
#: Models trained by epochs in Keras (the others are fitted in closed form); the blend trains a transformer.
EPOCH_MODELS = ("two-tower", "transformer", "blend")


@dataclass
class TrainConfig:
    events: str
    items: str | None = None
    model: str = "factorized"  # see cloud_trainer.models.factorized; "two-tower" is the Keras-trained one
    dim: int = 32  # two-tower embedding size
    rank: int = 256  # factorized: embedding size
    history_length: int | None = None  # default: HISTORY_LENGTH[model]
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 2e-3
    l2: float = 1e-6
    seed: int = 7
    calibration_histories: int = 512
    # the factorized model's settings (cloud_trainer.models.factorized); chosen per data set unless tune is off
    ease_l2: float = 200.0
    repeat_weight: float = 0.5
    trend_weight: float = 0.05
    trend_days: float = 14.0
    recency: float = 1.0
    view_weight: float = 0.25
    cart_weight: float = 0.5
    cold_start_scale: float = 5.0  # new items' predicted vectors (cloud_trainer.models.side_features)
    tune: bool = True  # choose the settings above, rank and history_length on a validation window
    tune_budget: float = DEFAULT_BUDGET_S  # seconds
    validation_share: float = DEFAULT_VALIDATION_SHARE  # of the training events, the most recent
    target: str = "purchase"  # what tuning (and evaluate) count as a hit: purchase, or any event
    test_from: str | None = None  # YYYY-MM-DD (UTC): hold out events from then on for `evaluate`
    cold_start: bool = True  # items in the items file without events join the model (models.side_features)
    softmax: str = "in-batch"  # two-tower: "in-batch" (log-Q corrected) or "full" (cloud_trainer.models.retrieval)
    distribute: str = "none"  # two-tower: "mirrored" or "multi-worker" (TF_CONFIG); cloud_trainer.distribute
    cpu_devices: int = 1  # split the CPU into this many logical devices (to use or test a strategy without GPUs)
    fleet_aggregates: str | None = None  # folder of fleet aggregates (cloud_trainer.fleet_training); events optional
    settings_from: str | None = None  # the run whose settings were taken (recorded only)


def seed_everything(seed: int) -> None:
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def train(config: TrainConfig, run_dir: Path) -> dict[str, object]:
    """Train and write ``run_dir``. Under ``--distribute multi-worker`` every worker calls this with
    the same config; only the chief writes ``run_dir`` (:func:`cloud_trainer.distribute.output_directory`)."""
    started = time.monotonic()
    _check(config)
    if config.history_length is None:
        config.history_length = HISTORY_LENGTH[config.model]
    distribution, place = strategy(config.distribute, config.cpu_devices, os.environ.get("TF_CONFIG"))
    seed_everything(config.seed)
    with output_directory(run_dir, place) as out:
        if config.fleet_aggregates and not config.events:
            from cloud_trainer.fleet_training import train_alone

            return train_alone(config, out, started)
        if config.model == "blend":
            from cloud_trainer.blend_training import train_blend

            return train_blend(config, out, distribution, place, started)
        return train_one(config, out, distribution, place, started)


def train_one(config: TrainConfig, run_dir: Path, distribution: tf.distribute.Strategy, place: Placement,
              started: float, read: tuple[EventTable, dict[str, CatalogItem]] | None = None) -> dict[str, object]:
    """One model's run directory (``read``: the events and items, when already read)."""
    table, metadata = read or read_training_data(config)
    fleet = None
    if config.fleet_aggregates:  # the events' Gram plus the fleet's (cloud_trainer.fleet_training)
        from cloud_trainer import fleet_training

        fleet = fleet_training.read(config, table.item_ids)
    if config.model == "factorized" and config.tune:
        _choose_settings(config, table, metadata, run_dir, ("view_weight", "cart_weight") if fleet else ())
    if fleet is not None:
        table = fleet_training.with_fleet_items(table, fleet)
    num_items = len(table.item_ids)
    assert config.history_length is not None
    # the closed-form model needs histories only to calibrate int8 and check the export
    data = build_training_set(table, config.history_length, seed=config.seed,
                              sample=config.calibration_histories if config.model == "factorized" else None,
                              sequence=config.model == "transformer")
    log.info("training set: %d examples from %d histories (%s), %d users, %d items", len(data), len(data.hist_items),
             "a sample, to calibrate" if config.model == "factorized" else "all", len(table.user_ids), num_items)
    known, new = catalogue_items(metadata, table.item_ids)
    if config.model == "transformer":  # items without events have no sequence to learn from
        return _train_transformer(config, run_dir, table, data, distribution, place, started, known)
    weights, model, loss = _fit(config, table, data, num_items, distribution, fleet)
    if not config.cold_start:
        new = []
    if new:
        from cloud_trainer.models.side_features import SideFeatureSettings, extend_with_cold_items

        log.info("cold start: %d items of the items file have no training events", len(new))
        weights = extend_with_cold_items(weights, known, new, SideFeatureSettings(vector_scale=config.cold_start_scale))
        model = None
    if model is None:
        from cloud_trainer.models.dot_product import model_from_weights

        model = model_from_weights(weights, config.history_length)
    catalog = Catalog(items=(*known, *new), popular=tuple(popularity(table, num_items)),
                      new=tuple(range(len(known), len(known) + len(new))))
    (run_dir / "catalog.json").write_bytes(catalog.to_bytes())
    model.save(run_dir / "model.keras")
    save_histories(config, data, run_dir)
    metrics = {
        "events_read": table.report.rows,
        "events_kept": table.report.kept,
        "events_skipped": dict(table.report.skipped),
        "users": len(table.user_ids),
        "items": num_items,
        "new_items": len(new),
        **({"calibration_histories": len(data.hist_items)} if config.model == "factorized"
           else {"examples": len(data)}),
        "model": config.model,
        "loss": loss,
        "replicas": distribution.num_replicas_in_sync,
        "workers": place.workers,
        "chief": place.chief,
        "train_seconds": round(time.monotonic() - started, 1),
        **(fleet_training.fleet_metrics(fleet) if fleet is not None else {}),
    }
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _check(config: TrainConfig) -> None:
    """A wrong setting is an error before any work."""
    if config.model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {config.model!r}")
    if config.distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, not {config.distribute!r}")
    if config.softmax not in SOFTMAXES:
        raise ValueError(f"softmax must be one of {', '.join(SOFTMAXES)}, not {config.softmax!r}")
    is_target(np.zeros(0, dtype=np.int8), config.target)  # raises for an unknown target
    if not 0 < config.recency <= 1:
        raise ValueError(f"recency must be in (0, 1] (1: every event counts alike), not {config.recency}")
    if config.tune_budget <= 0:
        raise ValueError(f"tune_budget must be a positive number of seconds, not {config.tune_budget}")
    if not 0 < config.validation_share < 1:
        raise ValueError(f"validation_share must be between 0 and 1, not {config.validation_share}")
    if config.cpu_devices < 1:
        raise ValueError(f"cpu_devices must be at least 1, not {config.cpu_devices}")
    if config.fleet_aggregates and config.model != "factorized":
        raise ValueError("--fleet-aggregates trains the factorized model (the Gram matrix is what it needs)")
    if not config.events and not config.fleet_aggregates:
        raise ValueError("give --events, --fleet-aggregates or both")
    if config.distribute != "none" and config.model not in EPOCH_MODELS:
        raise ValueError(f"--distribute applies to the models trained by epochs (--model two-tower, blend or "
                         f"transformer); the {config.model} model is fitted in closed form")


def read_training_data(config: TrainConfig) -> tuple[EventTable, dict[str, CatalogItem]]:
    """The training events (before ``test_from`` when given) and the items file's items."""
    table = read_events(Path(config.events))
    log.info("events: %s", table.report.summary())
    if config.test_from:
        table = train_period(table, cut_time(config.test_from))
        log.info("holding out events from %s on: training on %d events", config.test_from, len(table.user))
    metadata: dict[str, CatalogItem] = {}
    if config.items:
        metadata, item_report = read_items(Path(config.items))
        log.info("items: %s", item_report.summary())
    return table, metadata


def _choose_settings(config: TrainConfig, table: EventTable, metadata: dict[str, CatalogItem], run_dir: Path,
                     fixed: tuple[str, ...] = ()) -> None:
    """The factorized model's settings chosen on a validation window (:mod:`cloud_trainer.models.tuning`),
    set in ``config`` and recorded in ``tuning.json``; ``fixed`` ones keep their values."""
    tuning = tune(table, metadata if config.cold_start else {}, factorized_candidate(config), config.tune_budget,
                  config.validation_share, config.seed, config.target, fixed)
    (run_dir / "tuning.json").write_text(json.dumps(tuning.to_json(), indent=1))
    for name, value in asdict(tuning.chosen).items():
        setattr(config, "ease_l2" if name == "l2" else name, value)


def _fit(config: TrainConfig, table: EventTable, data: TrainingSet, num_items: int,
         strategy: tf.distribute.Strategy,
         fleet: FleetGram | None = None) -> tuple[ModelWeights, keras.Model | None, list[float]]:
    """(weights, the Keras model when one was trained by epochs, loss per epoch)."""
    from cloud_trainer.models.dot_product import extract_weights

    if fleet is not None:
        from cloud_trainer.fleet_training import fit_with_events

        return fit_with_events(table, factorized_candidate(config).factorized(config.seed), fleet), None, []
    if config.model == "factorized":
        from cloud_trainer.models.factorized import fit

        return fit(table, factorized_candidate(config).factorized(config.seed)), None, []
    model, loss = _fit_two_tower(config, data, num_items, strategy)
    return extract_weights(model), model, loss


def save_histories(config: TrainConfig, data: TrainingSet, run_dir: Path) -> None:
    """A sample of real training histories with their next baskets: ``histories.npz`` (with a
    sequence model's kinds and gaps when the set has them)."""
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(data.hist_items), size=min(config.calibration_histories, len(data.hist_items)), replace=False)
    sequence = {} if data.hist_kinds is None or data.hist_gaps is None else {
        "kinds": data.hist_kinds[pick], "gaps": data.hist_gaps[pick]}
    np.savez(run_dir / "histories.npz", items=data.hist_items[pick], weights=data.hist_weights[pick],
             targets=next_baskets(data, pick), **sequence)


def factorized_candidate(config: TrainConfig) -> Candidate:
    """The factorized model's settings in ``config``."""
    assert config.history_length is not None
    return Candidate(repeat_weight=config.repeat_weight, trend_weight=config.trend_weight, l2=config.ease_l2,
                     history_length=config.history_length, trend_days=config.trend_days, recency=config.recency,
                     rank=config.rank,
                     view_weight=config.view_weight, cart_weight=config.cart_weight,
                     cold_start_scale=config.cold_start_scale)


def _fit_two_tower(config: TrainConfig, data: TrainingSet, num_items: int,
                   strategy: tf.distribute.Strategy) -> tuple[keras.Model, list[float]]:
    """The Keras two-tower model trained on next baskets with the softmax of ``config.softmax``
    (:mod:`cloud_trainer.models.retrieval`); under ``strategy`` each global batch is split across
    its replicas (across workers: each worker builds the same batches and keeps its part of each)."""
    import keras

    from cloud_trainer.models.dot_product import build_model
    from cloud_trainer.models.retrieval import RetrievalTask, fit, log_sampling_probability, training_batches

    batches, steps = training_batches(data, config.batch_size, config.epochs, config.seed)
    assert config.history_length is not None
    with strategy.scope():  # variables mirrored on every replica
        model = build_model(num_items, config.dim, config.history_length, config.l2)
        log_q = log_sampling_probability(data.example_target, num_items)
        model.get_layer("item_vectors").bias.assign(log_q)  # start at popularity (models.retrieval)
        task = RetrievalTask(model, log_q, full_softmax=config.softmax == "full")
        optimizer = keras.optimizers.Adam(config.learning_rate)
        optimizer.build(model.trainable_variables)
    log.info("training on %d replica(s), %s softmax", strategy.num_replicas_in_sync, config.softmax)
    return model, fit(task, optimizer, batches, steps, config.epochs, strategy)


def _train_transformer(config: TrainConfig, run_dir: Path, table: EventTable, data: TrainingSet,
                       distribution: tf.distribute.Strategy, place: Placement, started: float,
                       known: list[CatalogItem]) -> dict[str, object]:
    """``--model transformer`` (:mod:`cloud_trainer.models.transformer_training`): the run directory
    as for every model; no cold-start items (a new item has no embedding to attend to)."""
    from cloud_trainer.models.transformer_training import fit_transformer

    assert config.history_length is not None
    num_items = len(table.item_ids)
    model, record = fit_transformer(data, num_items, config.dim, config.history_length, config.l2,
                                    config.learning_rate, config.batch_size, config.epochs, config.seed,
                                    config.validation_share, distribution, run_dir)
    catalog = Catalog(items=tuple(known), popular=tuple(popularity(table, num_items)))
    (run_dir / "catalog.json").write_bytes(catalog.to_bytes())
    model.save(run_dir / "model.keras")
    save_histories(config, data, run_dir)
    metrics = {"events_read": table.report.rows, "events_kept": table.report.kept,
               "events_skipped": dict(table.report.skipped), "users": len(table.user_ids), "items": num_items,
               "new_items": 0, "examples": len(data), "model": config.model, **record,
               "replicas": distribution.num_replicas_in_sync, "workers": place.workers, "chief": place.chief,
               "train_seconds": round(time.monotonic() - started, 1)}
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics

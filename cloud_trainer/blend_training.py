"""``--model blend`` (:mod:`cloud_trainer.models.blend`): the factorized model and the transformer
trained as ``train`` trains each alone, into ``factorized/`` and ``transformer/`` of the run
directory, then the transformer's weight chosen on the validation window
(:mod:`cloud_trainer.models.blend_choice`).

Blend run directory::

    factorized/      the factorized model's run (its settings chosen as alone: tuning.json)
    transformer/     the transformer's run (its history length: HISTORY_LENGTH["transformer"])
    blend.json       the weight, the validation figures of every weight tried
    catalog.json     the factorized model's catalogue (the transformer's items, then cold-start items)
    histories.npz    sample histories with kinds and gaps at the blend's length (int8 calibration, gates)
    config.json, metrics.json
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_trainer.data.training_set import build_training_set
from cloud_trainer.models.blend import BlendWeights, TransformerWeights

if TYPE_CHECKING:
    import tensorflow as tf

    from cloud_trainer.distribute import Placement
    from cloud_trainer.train import TrainConfig

log = logging.getLogger(__name__)
PARTS = ("factorized", "transformer")


def train_blend(config: TrainConfig, run_dir: Path, distribution: tf.distribute.Strategy, place: Placement,
                started: float) -> dict[str, object]:
    import keras

    from cloud_trainer import train
    from cloud_trainer.models.blend_choice import choose_weight

    read = train.read_training_data(config)
    table, metadata = read
    parts: dict[str, TrainConfig] = {}
    metrics: dict[str, object] = {}
    for part in PARTS:
        length = config.history_length if part == "factorized" else train.HISTORY_LENGTH[part]
        parts[part] = replace(config, model=part, history_length=length,
                              distribute=config.distribute if part == "transformer" else "none")
        log.info("blend: training the %s model", part)
        (run_dir / part).mkdir(parents=True, exist_ok=True)
        train.seed_everything(config.seed)
        metrics[part] = train.train_one(parts[part], run_dir / part, distribution, place, time.monotonic(), read)
    factorized = parts["factorized"]  # with the settings its tuning chose
    transformer = keras.models.load_model(run_dir / "transformer" / "model.keras")
    choice = choose_weight(table, metadata if config.cold_start else {}, train.factorized_candidate(factorized),
                           transformer, table.item_ids, config.validation_share, config.seed, config.target)
    assert factorized.history_length is not None
    length = max(factorized.history_length, train.HISTORY_LENGTH["transformer"])
    (run_dir / "blend.json").write_text(json.dumps({**choice.to_json(),
                                                    "factorized_history_length": factorized.history_length},
                                                   indent=1))
    (run_dir / "catalog.json").write_bytes((run_dir / "factorized" / "catalog.json").read_bytes())
    data = build_training_set(table, length, seed=config.seed, sample=config.calibration_histories, sequence=True)
    # the run's settings: the factorized part's as its tuning chose them (``--settings-from`` reads these)
    blend_config = replace(factorized, model="blend", history_length=length, distribute=config.distribute)
    train.save_histories(blend_config, data, run_dir)
    summary = {"model": "blend", "a": choice.a, "users": len(table.user_ids), "items": metrics["factorized"]["items"],
               "new_items": metrics["factorized"]["new_items"], "parts": metrics,
               "calibration_histories": min(config.calibration_histories, len(data.hist_items)),
               "replicas": distribution.num_replicas_in_sync, "workers": place.workers, "chief": place.chief,
               "train_seconds": round(time.monotonic() - started, 1)}
    (run_dir / "config.json").write_text(json.dumps(asdict(blend_config), indent=1))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_blend(run_dir: Path) -> BlendWeights:
    """A blend run's weights, over the factorized model's catalogue."""
    import keras
    import numpy as np

    import cloud_trainer.models.transformer  # noqa: F401  (registers the encoder layer for loading)
    from cloud_trainer.models.dot_product import extract_weights

    blend = json.loads((run_dir / "blend.json").read_text())
    factorized = extract_weights(keras.models.load_model(run_dir / "factorized" / "model.keras"))
    transformer = keras.models.load_model(run_dir / "transformer" / "model.keras")
    f_ids = [item["id"] for item in json.loads((run_dir / "factorized" / "catalog.json").read_text())["items"]]
    t_ids = [item["id"] for item in json.loads((run_dir / "transformer" / "catalog.json").read_text())["items"]]
    if f_ids[: len(t_ids)] != t_ids:
        raise ValueError(f"{run_dir}: the two models' catalogues differ (were they trained on the same events?)")
    index = np.r_[np.arange(len(t_ids)), np.full(len(f_ids) - len(t_ids), -1)]
    return BlendWeights(factorized, TransformerWeights.of(transformer, index), float(blend["a"]),
                        int(blend["factorized_history_length"]))

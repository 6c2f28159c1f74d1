"""Training on the fleet's aggregates (``cloud-trainer train --fleet-aggregates DIR``), alone or
with an events file. The run directory is like any other run's (:mod:`cloud_trainer.train`), so
``export`` and ``evaluate`` take it as they are.

- **Alone** (no ``--events``): no shopper history exists to tune on, so the settings are the given
  ones (the defaults, or a previous run's with ``--settings-from RUN``), except the view and cart
  weights, which are the aggregates' own (their Gram was built with them). The int8 calibration
  histories are walks on the co-occurrence graph (:func:`cloud_trainer.models.fleet_gram.walk_histories`).
- **With events**: the settings are tuned on the events' validation window as usual (view and
  cart weights fixed to the aggregates'), and the model is fitted on the events' Gram plus the
  fleet's; items only the fleet knows join after the events' items. The fleet's devices must not
  be the events' shoppers (they would count twice). Calibration uses the events' real histories.

With ``--test-from``, every aggregate's window must end before that day: evaluation is refused
for runs whose training data overlaps the test period, and aggregates are training data.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud_trainer.errors import InputError
from cloud_trainer.models import fleet_gram
from cloud_trainer.models.factorized import FactorizedSettings, fit
from cloud_trainer.models.side_features import catalogue_items
from shared.catalog import Catalog

if TYPE_CHECKING:
    from cloud_trainer.data.events_io import EventTable
    from cloud_trainer.models.dot_product import ModelWeights
    from cloud_trainer.train import TrainConfig

log = logging.getLogger(__name__)


def read(config: TrainConfig, first_items: list[str]) -> fleet_gram.FleetGram:
    """The fleet's summed aggregates over ``first_items`` and then the fleet's own; the view and
    cart weights of ``config`` set to the aggregates'."""
    assert config.fleet_aggregates
    aggregates = fleet_gram.read_folder(Path(config.fleet_aggregates))
    if config.test_from:
        from cloud_trainer.evaluation.splits import cut_time

        late = [a.device_id for a in aggregates if a.window_end >= cut_time(config.test_from)]
        if late:
            raise InputError(f"the aggregates of {', '.join(late[:5])} end on or after --test-from "
                             f"{config.test_from}: they overlap the test period")
    fleet = fleet_gram.summed(aggregates, first_items)
    for name, value in fleet_gram.settings_weights(fleet).items():
        if getattr(config, name) != value:
            log.info("%s: %g, the aggregates' (their Gram matrix was built with it)", name, value)
        setattr(config, name, value)
    return fleet


def with_fleet_items(table: EventTable, fleet: fleet_gram.FleetGram) -> EventTable:
    """``table`` with the items only the fleet knows appended to its vocabulary (no events)."""
    return replace(table, item_ids=list(fleet.item_ids))


def fit_with_events(table: EventTable, settings: FactorizedSettings, fleet: fleet_gram.FleetGram) -> ModelWeights:
    """The model of the events' Gram plus the fleet's; the trend adds the fleet's recent buyers."""
    from cloud_trainer.models.factorized import trend

    weights = fit(table, settings, fleet.gram)
    recent = np.expm1(trend(table, settings.trend_days)) + fleet.recent_buyers
    weights.item_bias = (settings.trend_weight * np.log1p(recent)).astype(np.float32)
    return weights


def fleet_metrics(fleet: fleet_gram.FleetGram) -> dict[str, object]:
    return {"fleet_devices": len(fleet.devices), "fleet_shoppers": fleet.shoppers_total,
            "fleet_items": int((fleet.shoppers > 0).sum()), "fleet_pairs": fleet.pairs}


def train_alone(config: TrainConfig, run_dir: Path, started: float) -> dict[str, object]:
    """A run from the aggregates alone (module docstring); writes ``run_dir`` as :func:`train` does."""
    from cloud_trainer.data.events_io import read_items
    from cloud_trainer.models.dot_product import model_from_weights
    from cloud_trainer.train import factorized_candidate

    if config.model != "factorized":
        raise ValueError("--fleet-aggregates trains the factorized model (the Gram matrix is what it needs)")
    fleet = read(config, [])
    assert config.history_length is not None
    settings = factorized_candidate(config).factorized(config.seed)
    weights = fleet_gram.fit(fleet, settings)
    metadata = read_items(Path(config.items))[0] if config.items else {}
    known, new = catalogue_items(metadata, fleet.item_ids)
    if new and config.cold_start:
        from cloud_trainer.models.side_features import SideFeatureSettings, extend_with_cold_items

        log.info("cold start: %d items of the items file are not in the aggregates", len(new))
        weights = extend_with_cold_items(weights, known, new, SideFeatureSettings(vector_scale=config.cold_start_scale))
    else:
        new = []
    model = model_from_weights(weights, config.history_length)
    catalog = Catalog(items=(*known, *new), popular=tuple(fleet_gram.popular(fleet)),
                      new=tuple(range(len(known), len(known) + len(new))))
    (run_dir / "catalog.json").write_bytes(catalog.to_bytes())
    model.save(run_dir / "model.keras")
    items, hist_weights, targets = fleet_gram.walk_histories(fleet, config.history_length,
                                                             config.calibration_histories, config.seed)
    np.savez(run_dir / "histories.npz", items=items, weights=hist_weights, targets=targets)
    metrics: dict[str, object] = {
        "users": 0, "items": len(fleet.item_ids), "new_items": len(new), "calibration_histories": len(items),
        "calibration": "walks on the co-occurrence graph", **fleet_metrics(fleet), "model": config.model,
        "loss": [], "replicas": 1, "workers": 1, "chief": True, "train_seconds": round(time.monotonic() - started, 1),
    }
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def settings_from(run: Path) -> dict[str, object]:
    """The factorized model's settings a previous run used (its ``config.json``)."""
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--settings-from {run}: no readable config.json ({e})") from None
    names = ("rank", "history_length", "ease_l2", "repeat_weight", "trend_weight", "trend_days", "recency",
             "cold_start_scale")
    return {name: config[name] for name in names if config.get(name) is not None}

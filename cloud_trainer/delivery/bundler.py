"""Builds a signed bundle from a training run: export, parity gate, catalog, manifest, signature.

Bundle directory::

    model.tflite  catalog.json  manifest.envelope   (signed manifest; see shared.signing)

With an assortment the bundle ranks one store's items only (:mod:`cloud_trainer.delivery.assortment`);
with targets, only those devices install it (and the publisher sends it to their own topics).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from cloud_trainer.delivery.assortment import Assortment, read_assortment, select
from cloud_trainer.delivery.litert import litert_runner
from cloud_trainer.delivery.origin import with_origin
from cloud_trainer.delivery.run_export import SEQUENCE_MODELS, export_checked, sequence_model, served_run
from cloud_trainer.errors import AssortmentError
from cloud_trainer.models.blend import BlendReference
from cloud_trainer.models.dot_product import ModelWeights, extract_weights
from shared import SEQUENCE_CONTRACT_VERSION
from shared.bundle import (
    CATALOG_FILE,
    CHUNK_SIZE,
    ENVELOPE_FILE,
    MODEL_FILE,
    Manifest,
    ModelContract,
    file_entry,
    iso_utc,
)
from shared.catalog import parse_catalog
from shared.signing import load_private_key, sign
from shared.topics import CHANNELS, check_name

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 100




@dataclass
class BundleOptions:
    #: int8, float16, float32, or ``auto``: int8, and float16 when int8 fails a check (large
    #: catalogues: int8's one scale for the whole score vector cannot order the top items of 10^5+).
    variant: str = "auto"
    fleet: str = "default"
    version: int | None = None  # default: the current Unix time, so later builds are newer
    valid_days: int = 90
    top_k: int = DEFAULT_TOP_K
    force: bool = False  # bundle even if the parity check or the quantization quality gate fails
    explanations: bool = True  # output each history position's contribution (see export.to_tflite)
    #: Channels the bundle is signed as released to; none: ``publish --key`` or ``rollout`` signs
    #: the release (see shared.bundle: agents refuse a version not released to their channel).
    channels: tuple[str, ...] = ()
    #: A file of the item ids one store sells: the bundle ranks those only (see ``assortment``).
    assortment: Path | None = None
    #: What the store's bundle reads in histories: ``chain`` (every item of the run) or ``store``.
    assortment_history: str = "chain"
    #: Device ids that may install the bundle (signed); empty: every device of the fleet.
    targets: tuple[str, ...] = ()
    #: Bytes per MQTT chunk (and per chunk hash); at most CHUNK_SIZE, what agents accept.
    chunk_size: int = CHUNK_SIZE
    #: Base URL of an origin the files will be served from (``publish --origin`` writes them): each
    #: file's URL is signed into the manifest (see cloud_trainer.delivery.origin).
    origin_url: str | None = None


def _for_store(path: Path, history: str, weights: ModelWeights, catalog_bytes: bytes, items: np.ndarray,
               hist_weights: np.ndarray) -> tuple[Assortment, ModelWeights, bytes, tuple[np.ndarray, np.ndarray]]:
    """(the assortment, the store's weights, its catalogue, calibration histories in its indices)."""
    catalog = parse_catalog(catalog_bytes, weights.num_items)
    assortment = select(list(catalog.index_of()), read_assortment(path), history)
    store = assortment.weights(weights)
    calibration = assortment.histories(items, hist_weights)[2:4]
    if not len(calibration[0]):
        raise AssortmentError(f"none of the run's sample histories holds an item of assortment {path}: nothing to "
                              "calibrate and check the export on; use --assortment-history chain")
    log.info("assortment %s: %d of the run's %d items ranked, %d more read in histories (%s); %d of %d sample "
             "histories keep an item", path.name, store.num_items, weights.num_items,
             store.num_history_items - store.num_items, history, len(calibration[0]), len(items))
    return assortment, store, assortment.catalog(catalog, weights.item_bias).to_bytes(), calibration


def build_bundle(run_dir: Path, key_path: Path, out_dir: Path, options: BundleOptions) -> Manifest:
    import keras

    if served_run(run_dir) != run_dir:
        log.info("the blend's weight leaves one model: bundling %s alone", served_run(run_dir).name)
        return build_bundle(served_run(run_dir), key_path, out_dir, options)

    for target in options.targets:  # device ids become topic levels (see shared.topics)
        check_name(target, "target device id")
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("model") in SEQUENCE_MODELS:
        return _build_sequence_bundle(run_dir, key_path, out_dir, options, config)
    model = keras.models.load_model(run_dir / "model.keras")
    history_length = int(config["history_length"])
    weights = extract_weights(model)
    histories = np.load(run_dir / "histories.npz")
    items, hist_weights = histories["items"], histories["weights"]
    catalog_bytes = (run_dir / "catalog.json").read_bytes()
    calibration = (items, hist_weights)
    assortment = None
    if options.assortment is not None:
        assortment, weights, catalog_bytes, calibration = _for_store(
            options.assortment, options.assortment_history, weights, catalog_bytes, items, hist_weights)
    top_k = min(options.top_k, weights.num_items)

    exported = export_checked(model, weights, history_length, top_k, options.variant, calibration, histories,
                              assortment, options.explanations, options.force)
    contract = ModelContract(
        variant=exported.variant,
        signature=litert_runner(exported.model_bytes)[0],
        history_length=history_length,
        top_k=top_k,
        num_items=weights.num_items,
        history_only_items=weights.num_history_items - weights.num_items,
    )
    training: dict[str, object] = {"run": run_dir.name, "parity": exported.parity.to_json(),
                                   "quality_gate": exported.gate.to_json() if exported.gate else None}
    if exported.refused:
        training["variants_refused"] = exported.refused
    if assortment is not None and options.assortment is not None:
        training["assortment"] = {"file": options.assortment.name, **assortment.to_json()}
    return write_bundle(out_dir, exported.model_bytes, catalog_bytes, contract, key_path, options, training)


def _build_sequence_bundle(run_dir: Path, key_path: Path, out_dir: Path, options: BundleOptions,
                           config: dict[str, object]) -> Manifest:
    """A transformer's or a blend's bundle: contract version 3 (agents before it refuse the bundle)."""
    kind = str(config.get("model"))
    if options.assortment is not None:
        raise AssortmentError(f"--assortment is not available for --model {kind} yet")
    model, num_items = sequence_model(run_dir, config)
    history_length = int(str(config["history_length"]))
    histories = np.load(run_dir / "histories.npz")
    top_k = min(options.top_k, num_items)
    exported = export_checked(model, None, history_length, top_k, options.variant,
                              (histories["items"], histories["weights"]), histories, None, options.explanations,
                              options.force)
    contract = ModelContract(variant=exported.variant, signature=litert_runner(exported.model_bytes)[0],
                             history_length=history_length, top_k=top_k, num_items=num_items,
                             contract_version=SEQUENCE_CONTRACT_VERSION)
    training: dict[str, object] = {"run": run_dir.name, "model": kind, "parity": exported.parity.to_json(),
                                   "quality_gate": exported.gate.to_json() if exported.gate else None}
    if isinstance(model, BlendReference):
        training["blend_weight"] = model.weights.a
    if exported.refused:
        training["variants_refused"] = exported.refused
    return write_bundle(out_dir, exported.model_bytes, (run_dir / "catalog.json").read_bytes(), contract, key_path,
                        options, training)


def write_bundle(
    out_dir: Path,
    model_bytes: bytes,
    catalog_bytes: bytes,
    contract: ModelContract,
    key_path: Path,
    options: BundleOptions,
    training: dict[str, object],
) -> Manifest:
    """Write ``model.tflite``, ``catalog.json`` and the signed manifest describing them."""
    parse_catalog(catalog_bytes, contract.num_items, contract.history_only_items)  # as the agent will, first
    now = datetime.now(UTC)
    manifest = Manifest(
        fleet=options.fleet,
        version=options.version or int(time.time()),
        created=iso_utc(now),
        expires=iso_utc(now + timedelta(days=options.valid_days)),
        chunk_size=options.chunk_size,
        files={MODEL_FILE: file_entry(model_bytes, options.chunk_size),
               CATALOG_FILE: file_entry(catalog_bytes, options.chunk_size)},
        model=contract,
        training=training,
        channels=tuple(c for c in CHANNELS if c in options.channels),
        targets=tuple(dict.fromkeys(options.targets)),
    )
    if options.origin_url is not None:
        manifest = with_origin(manifest, options.origin_url)
    key = load_private_key(key_path.read_bytes())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(model_bytes)
    (out_dir / CATALOG_FILE).write_bytes(catalog_bytes)
    (out_dir / ENVELOPE_FILE).write_bytes(sign(manifest.to_json(), key))
    return manifest

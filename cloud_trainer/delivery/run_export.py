"""A run's model, exported and checked: the export ``export`` bundles and ``cloud-trainer evaluate``
scores (the variant ``auto`` picks, after the parity check and the quantization quality gate), and
which model of a run serves (a blend whose weight leaves one model: that model).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud_trainer.delivery.assortment import Assortment
from cloud_trainer.delivery.export import to_tflite
from cloud_trainer.delivery.gates import ParityReport, QualityGate, check_parity, quality_gate
from cloud_trainer.errors import ParityError, QualityGateError
from cloud_trainer.models.blend import BlendReference
from cloud_trainer.models.dot_product import ModelWeights

log = logging.getLogger(__name__)

#: ``auto`` tries these in turn and bundles the first that passes the parity check and the quality gate.
AUTO_VARIANTS = ("int8", "float16")
#: Models whose bundles are of contract version 3 (shared.sequence inputs).
SEQUENCE_MODELS = ("transformer", "blend")


@dataclass
class Exported:
    """A checked export: the variant bundled, its bytes and checks, and the variants refused before it."""

    variant: str
    model_bytes: bytes
    parity: ParityReport
    gate: QualityGate | None
    refused: dict[str, str]


def export_checked(model: object, weights: ModelWeights | None, history_length: int, top_k: int, variant: str,
                   calibration: tuple[np.ndarray, np.ndarray], histories: np.lib.npyio.NpzFile,
                   assortment: Assortment | None = None, explanations: bool = True,
                   force: bool = False) -> Exported:
    """The export the bundle ships: ``variant``, or for ``auto`` the first of :data:`AUTO_VARIANTS`
    that passes its checks (``force`` applies to the last one tried). ``cloud-trainer evaluate``
    scores the same choice."""
    variants = AUTO_VARIANTS if variant == "auto" else (variant,)
    refused: dict[str, str] = {}
    for candidate in variants:
        last = candidate == variants[-1]
        try:
            model_bytes, parity, gate = _export_one(model, weights, history_length, top_k, candidate, calibration,
                                                    histories, assortment, explanations, force=force and last)
            return Exported(candidate, model_bytes, parity, gate, refused)
        except (ParityError, QualityGateError) as refusal:
            if last:
                raise
            refused[candidate] = str(refusal)
            log.warning("variant auto: %s; trying %s", refusal, variants[variants.index(candidate) + 1])
    raise AssertionError("unreachable")


def sequence_histories(histories: np.lib.npyio.NpzFile) -> dict[str, np.ndarray] | None:
    """A sequence model's sample histories' kinds and gaps by input name; None for a pooled model's."""
    if "kinds" not in histories.files:
        return None
    return {"history_kinds": histories["kinds"], "history_gaps": histories["gaps"]}


def _export_one(model: object, weights: ModelWeights | None, history_length: int, top_k: int, variant: str,
                calibration: tuple[np.ndarray, np.ndarray], histories: np.lib.npyio.NpzFile,
                assortment: Assortment | None, explanations: bool,
                force: bool) -> tuple[bytes, ParityReport, QualityGate | None]:
    """The ``variant`` export with its parity check and quality gate; a failed one raises unless ``force``."""
    items, hist_weights = histories["items"], histories["weights"]
    sequence = sequence_histories(histories)
    log.info("exporting %s TFLite %s model (top-%d in the graph)", variant, "pooled" if sequence is None else
             "sequence", top_k)
    if isinstance(model, BlendReference):  # --model blend (contract version 3)
        from cloud_trainer.delivery.export_blend import blend_to_tflite

        model_bytes = blend_to_tflite(model.weights, top_k, variant, {"history_items": calibration[0], **sequence},
                                      explanations)
    elif sequence is not None:  # --model transformer (contract version 3)
        from cloud_trainer.delivery.export_sequence import sequence_to_tflite

        model_bytes = sequence_to_tflite(model, history_length, top_k, variant,  # type: ignore[arg-type]
                                         {"history_items": calibration[0], **sequence}, explanations)
    else:
        assert weights is not None
        model_bytes = to_tflite(weights, history_length, top_k, variant, calibration, explanations)
    parity = check_parity(model, model_bytes, variant, items, hist_weights, assortment, sequence)
    log.info(
        "parity vs Keras on %d real histories: top-10 overlap %.3f (min %.2f), max score error %.4f (max %.4f)",
        parity.histories, parity.mean_overlap_at_10, parity.min_overlap_at_10,
        parity.max_relative_score_error, parity.allowed_relative_score_error,
    )
    if not parity.ok and not force:
        raise ParityError(
            f"the {variant} model differs from the Keras model beyond tolerance "
            f"({parity.to_json()}); use --force to bundle it anyway"
        )
    gate = None
    if "targets" in histories.files:  # runs from before the gate have no targets
        gate = quality_gate(model, model_bytes, variant, items, hist_weights, histories["targets"], assortment,
                            sequence)
        log.info("quality gate on %d real histories: Recall@20 Keras %.4f, %s %.4f (%.1f%% lower; at most %.0f%%)",
                 gate.histories, gate.float_recall_at_20, variant, gate.exported_recall_at_20,
                 100 * gate.relative_drop, 100 * gate.max_relative_drop)
        if not gate.ok and not force:
            raise QualityGateError(
                f"the {variant} model's Recall@20 ({gate.exported_recall_at_20}) is "
                f"{100 * gate.relative_drop:.1f}% below the float model's ({gate.float_recall_at_20}); at most "
                f"{100 * gate.max_relative_drop:.0f}% is allowed. Use --force to bundle it anyway")
    return model_bytes, parity, gate


def served_run(run_dir: Path) -> Path:
    """The run whose model serves ``run_dir``: itself, or for a blend whose weight is 0 or 1 the one
    model that weight leaves (the same ranking as the blend's graph, without the other model's cost)."""
    blend = run_dir / "blend.json"
    if not blend.exists():
        return run_dir
    a = float(json.loads(blend.read_text())["a"])
    return run_dir / "factorized" if a == 0.0 else run_dir / "transformer" if a == 1.0 else run_dir


def sequence_model(run_dir: Path, config: dict[str, object]) -> tuple[object, int]:
    """(a sequence run's float model, items it ranks): the transformer's Keras model, or the
    blend's float reference (:class:`~cloud_trainer.models.blend.BlendReference`)."""
    import keras

    import cloud_trainer.models.transformer  # noqa: F401  (registers the encoder layer for loading)

    if config.get("model") == "blend":
        from cloud_trainer.blend_training import load_blend

        blend = load_blend(run_dir)
        return BlendReference(blend), blend.num_items
    model = keras.models.load_model(run_dir / "model.keras")
    return model, int(model.get_layer("item_vectors").get_weights()[1].shape[0])

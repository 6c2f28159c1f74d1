"""The gates an export passes before it is bundled: parity with the Keras model, and the
quantization quality gate (Recall@20 of the export against the float model's, on real histories
and their next baskets; Recall@K as every evaluation computes it, :mod:`cloud_trainer.evaluation.metrics`).

A store's bundle (an :class:`~cloud_trainer.delivery.assortment.Assortment`) is compared with the
Keras model's scores of the store's items, on the histories as the store's agent reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from cloud_trainer.delivery.litert import litert_runner
from cloud_trainer.evaluation.metrics import recall_at

if TYPE_CHECKING:
    import keras

    from cloud_trainer.delivery.assortment import Assortment

#: Parity tolerances per variant: mean top-10 overlap with Keras, and the largest score error on
#: the returned items, relative to the range (max - min) of Keras scores for that history: int8
#: quantizes scores in steps of about range / 255, whatever the scores' distribution. (Measured
#: on Online Retail's default model: 1e-6, 2e-4 and 0.037; int8 reaches 0.15 on the tests' model
#: trained on five weeks.)
TOLERANCES = {
    "float32": {"min_overlap_at_10": 0.99, "max_relative_score_error": 1e-3},
    "float16": {"min_overlap_at_10": 0.95, "max_relative_score_error": 0.05},
    "int8": {"min_overlap_at_10": 0.80, "max_relative_score_error": 0.25},
}

#: Export refuses an int8 or float16 model whose Recall@20 is more than this much (relative) below
#: the float Keras model's on the same histories, unless forced.
MAX_RECALL_DROP = 0.02
GATE_K = 20


@dataclass
class ParityReport:
    variant: str
    histories: int
    mean_overlap_at_10: float
    max_relative_score_error: float
    min_overlap_at_10: float
    allowed_relative_score_error: float

    @property
    def ok(self) -> bool:
        return (
            self.mean_overlap_at_10 >= self.min_overlap_at_10
            and self.max_relative_score_error <= self.allowed_relative_score_error
        )

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def _queries(model: keras.Model, items: np.ndarray, weights: np.ndarray, assortment: Assortment | None,
             sequence: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(the export's history items, its weights, the Keras scores of the items it ranks, rows kept).
    ``sequence``: a sequence model's other inputs by name (its Keras model takes no weights)."""
    if sequence is not None:
        inputs = {"history_items": items, **sequence}
        return items, weights, np.asarray(model.predict(inputs, batch_size=256, verbose=0)), \
            np.ones(len(items), dtype=bool)
    if assortment is None:
        return items, weights, np.asarray(model.predict([items, weights], batch_size=256, verbose=0)), \
            np.ones(len(items), dtype=bool)
    keras_items, keras_weights, items, weights, rows = assortment.histories(items, weights)
    scores = np.asarray(model.predict([keras_items, keras_weights], batch_size=256, verbose=0))
    return items, weights, scores[:, assortment.sold], rows


def _row(sequence: dict[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    return {} if sequence is None else {name: column[n : n + 1] for name, column in sequence.items()}


def check_parity(
    model: keras.Model, model_bytes: bytes, variant: str, items: np.ndarray, weights: np.ndarray,
    assortment: Assortment | None = None, sequence: dict[str, np.ndarray] | None = None,
) -> ParityReport:
    """Compare TFLite (in LiteRT) against the Keras model on the given histories (run indices)."""
    _, runner = litert_runner(model_bytes)
    items, weights, keras_scores, _ = _queries(model, items, weights, assortment, sequence)
    overlaps, errors = [], []
    for n in range(len(items)):
        out = runner(items[n : n + 1], weights[n : n + 1], **_row(sequence, n))
        got_items, got_scores = out["item_indices"][0], out["scores"][0]
        expected = np.argsort(-keras_scores[n], kind="stable")[:10]
        overlaps.append(len(set(expected.tolist()) & set(got_items[:10].tolist())) / 10)
        spread = float(np.ptp(keras_scores[n])) or 1.0
        errors.append(float(np.max(np.abs(keras_scores[n][got_items] - got_scores))) / spread)
    tolerance = TOLERANCES[variant]
    return ParityReport(
        variant=variant,
        histories=len(items),
        mean_overlap_at_10=float(np.mean(overlaps)),
        max_relative_score_error=float(np.max(errors)),
        min_overlap_at_10=tolerance["min_overlap_at_10"],
        allowed_relative_score_error=tolerance["max_relative_score_error"],
    )


@dataclass
class QualityGate:
    """Recall@20 of the Keras model and of its export on the same real histories and next baskets."""

    variant: str
    histories: int
    float_recall_at_20: float
    exported_recall_at_20: float
    max_relative_drop: float = MAX_RECALL_DROP

    @property
    def relative_drop(self) -> float:
        if self.float_recall_at_20 <= 0:
            return 0.0
        return (self.float_recall_at_20 - self.exported_recall_at_20) / self.float_recall_at_20

    @property
    def ok(self) -> bool:
        return round(self.relative_drop, 6) <= self.max_relative_drop  # 0.5 -> 0.49 is 2%, not 2.0000000001%

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "relative_drop": round(self.relative_drop, 4), "ok": self.ok}


def quality_gate(
    model: keras.Model, model_bytes: bytes, variant: str, items: np.ndarray, weights: np.ndarray, targets: np.ndarray,
    assortment: Assortment | None = None, sequence: dict[str, np.ndarray] | None = None,
) -> QualityGate:
    """Compare Recall@20 of the Keras model and of the exported model (in LiteRT) on the same queries
    (run indices; a store's bundle: the store's items of each next basket are its targets)."""
    _, runner = litert_runner(model_bytes)
    items, weights, keras_scores, rows = _queries(model, items, weights, assortment, sequence)
    if assortment is not None:
        targets = assortment.targets(targets[rows])
    keras_ranked = np.argsort(-keras_scores, axis=1, kind="stable")[:, :GATE_K]
    exported = np.stack([
        runner(items[n : n + 1], weights[n : n + 1], **_row(sequence, n))["item_indices"][0][:GATE_K]
        for n in range(len(items))
    ])
    return QualityGate(variant, len(items), round(recall_at(keras_ranked, targets, GATE_K), 4),
                       round(recall_at(exported, targets, GATE_K), 4))

"""TFLite export of ``--model blend`` (:mod:`cloud_trainer.models.blend`): a contract version 3
graph, as the transformer's (:mod:`cloud_trainer.delivery.export_sequence`), so every agent that
serves a transformer serves the blend unchanged.

Inputs: ``history_items``, ``history_kinds``, ``history_gaps`` (int32 [1, L], L the longer of the
two models' histories) and ``item_allowed`` (bool [1, N]). Outputs: ``item_indices``, ``scores``
and, with explanations, ``contributions`` [1, E, K]: each position's share of each returned item's
blended score, the two models' explanations (exact for the factorized part, attention-based for the
transformer's) on the blend's scale, plus the repeat term where a position holds the very item.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cloud_trainer.delivery.export import EXPLAINED_POSITIONS, FILTER_GAP, _blocked_top_k, _with_repeats
from cloud_trainer.delivery.export_sequence import FLOAT_OPS as SEQUENCE_FLOAT_OPS
from cloud_trainer.delivery.export_sequence import sequence_module_to_tflite
from cloud_trainer.models.blend import BlendGraph, BlendWeights
from cloud_trainer.models.transformer import explain_positions
from shared.recommendation import ALLOWED_INPUT
from shared.sequence import SEQUENCE_INPUTS

#: Ops kept in float in int8: the transformer's, and the standard deviations' arithmetic (per query, [D] sized).
FLOAT_OPS = (*SEQUENCE_FLOAT_OPS, "SQRT", "MAXIMUM", "SUM", "CONCATENATION")


def _rows(t: tf.Tensor, rows: int) -> tf.Tensor:
    """``t`` [r, K] padded with zero rows to ``rows``."""
    return tf.pad(t, [[0, rows - int(t.shape[0])], [0, 0]])


def _recommend_module(weights: BlendWeights, top_k: int, explanations: bool) -> tf.Module:
    length, n = weights.history_length, weights.num_items
    lf, lt = weights.factorized_length, weights.transformer.length
    signature = [tf.TensorSpec([1, length], tf.int32, name=name) for name in SEQUENCE_INPUTS]
    signature.append(tf.TensorSpec([1, n], tf.bool, name=ALLOWED_INPUT))
    graph = BlendGraph(weights)
    repeats = bool(weights.factorized.repeat_weight)

    class Recommend(tf.Module):
        @tf.function(input_signature=signature)
        def recommend(self, history_items: tf.Tensor, history_kinds: tf.Tensor, history_gaps: tf.Tensor,
                      item_allowed: tf.Tensor) -> dict[str, tf.Tensor]:
            parts = graph.parts(history_items, history_kinds, history_gaps)
            scores = graph.scores(parts, with_repeats=False)  # [1, N]
            low = tf.reduce_min(scores)  # filtered items below every allowed one (see export.py)
            filtered = tf.where(item_allowed, scores, low - FILTER_GAP * (tf.reduce_max(scores) - low))
            top_scores, top_items = _blocked_top_k(filtered, top_k)
            f_items, present = history_items[0][:lf], history_kinds[0][:lf] > 0
            if repeats:  # the factorized model's repeat term, on the blend's scale
                top_scores, top_items = _with_repeats(scores, top_items, f_items, present, parts["counts"][0],
                                                      item_allowed[0], parts["repeat"][0], top_k)
            if not explanations:
                return {"item_indices": top_items, "scores": top_scores}
            e = min(length, EXPLAINED_POSITIONS)
            e_f, e_t = min(lf, e), min(lt, e)
            h = parts["h"][0][:e_f]
            projected = h if graph.identity else tf.matmul(h, graph.f_w)
            own = parts["coefficients"][0][:e_f, None] * projected * parts["scale_f"][0]  # [e_f, D_f]
            attended = explain_positions(graph.t_p, parts["shares"], parts["residual"], parts["x0"])[0][:e_t]
            attended = tf.matmul(attended, graph.t_w) * parts["scale_t"][0]  # [e_t, D_t]
            contributions = (_rows(tf.matmul(own, tf.gather(graph.e_f, top_items[0]), transpose_b=True), e)
                             + _rows(tf.matmul(attended, tf.gather(graph.e_t, top_items[0]), transpose_b=True), e))
            if repeats:
                same = tf.equal(f_items[:e_f, None], top_items[0][None, :]) & present[:e_f, None]
                contributions += _rows(parts["repeat"][0] * tf.cast(same, tf.float32), e)
            return {"item_indices": top_items, "scores": top_scores, "contributions": contributions[None]}

    return Recommend()


def blend_to_tflite(weights: BlendWeights, top_k: int, variant: str, calibration: dict[str, np.ndarray],
                    explanations: bool = True) -> bytes:
    """The .tflite bytes; ``calibration``: real histories by input name ([n, L] each)."""
    return sequence_module_to_tflite(_recommend_module(weights, top_k, explanations), weights.num_items, variant,
                                     calibration, FLOAT_OPS)

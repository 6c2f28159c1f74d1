"""TFLite export of a sequence model (``--model transformer``, contract version 3): the encoder of
:mod:`cloud_trainer.models.transformer` on the trained weights as constants, scoring, the filter
mask and top-K in the graph, as :mod:`cloud_trainer.delivery.export` does for pooled models.

Inputs: ``history_items``, ``history_kinds``, ``history_gaps`` (int32 [1, L], :mod:`shared.sequence`)
and ``item_allowed`` (bool [1, N]). Outputs: ``item_indices``, ``scores`` and, with explanations,
``contributions`` [1, E, K]: attention-based attribution (in the graph): each position's share of
the user vector (:func:`cloud_trainer.models.transformer.explain_positions`: the last block's
value-weighted attention from position 0, plus position 0's own residual stream, linearised through
the final normalisation) projected and dotted with each returned item's vector.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from cloud_trainer.delivery.export import EXPLAINED_POSITIONS, FILTER_GAP, _blocked_top_k, convert
from cloud_trainer.models.transformer import encode, explain_positions
from shared.recommendation import ALLOWED_INPUT
from shared.sequence import SEQUENCE_INPUTS

#: Ops the int8 export keeps in float (selective quantization, TensorFlow's QuantizationDebugger):
#: the attention and normalisation arithmetic, on [L, D] tensors. Fully quantized, their int8
#: steps cost the planted test's model a 0.35 relative score error (parity allows 0.25); kept in
#: float, 0.03. The matmuls (FULLY_CONNECTED: the projections and the [D] x [D, N] scoring), the
#: embedding gathers and top-K stay int8: they hold the weights and the time that grow with N.
FLOAT_OPS = ("BATCH_MATMUL", "SOFTMAX", "MEAN", "RSQRT", "SQUARED_DIFFERENCE", "SUB", "MUL", "ADD", "TRANSPOSE",
             "RESHAPE", "STRIDED_SLICE", "PAD")


def _recommend_module(model: keras.Model, history_length: int, top_k: int, explanations: bool) -> tf.Module:
    encoder = model.get_layer("sequence_encoder")
    projection, projection_bias = model.get_layer("user_projection").get_weights()
    item_vectors, item_bias = model.get_layer("item_vectors").get_weights()
    num_items = int(item_bias.shape[0])
    signature = [tf.TensorSpec([1, history_length], tf.int32, name=name) for name in SEQUENCE_INPUTS]
    signature.append(tf.TensorSpec([1, num_items], tf.bool, name=ALLOWED_INPUT))

    class Recommend(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = encoder.constants()
            self.w, self.b = tf.constant(projection), tf.constant(projection_bias)
            self.e, self.e_bias = tf.constant(item_vectors.T), tf.constant(item_bias)  # [N, D], [N]

        @tf.function(input_signature=signature)
        def recommend(self, history_items: tf.Tensor, history_kinds: tf.Tensor, history_gaps: tf.Tensor,
                      item_allowed: tf.Tensor) -> dict[str, tf.Tensor]:
            hidden, shares, residual, x0 = encode(self.p, history_items, history_kinds, history_gaps,
                                                  encoder.blocks, encoder.heads)
            user = tf.matmul(hidden, self.w) + self.b  # [1, D]
            scores = tf.matmul(user, self.e, transpose_b=True) + self.e_bias  # [1, N]
            low = tf.reduce_min(scores)  # filtered items below every allowed one (see export.py)
            filtered = tf.where(item_allowed, scores, low - FILTER_GAP * (tf.reduce_max(scores) - low))
            top_scores, top_items = _blocked_top_k(filtered, top_k)
            if not explanations:
                return {"item_indices": top_items, "scores": top_scores}
            e = min(history_length, EXPLAINED_POSITIONS)
            parts = explain_positions(self.p, shares, residual, x0)[0][:e]  # [E, D]
            contributions = tf.matmul(tf.matmul(parts, self.w), tf.gather(self.e, top_items[0]), transpose_b=True)
            return {"item_indices": top_items, "scores": top_scores, "contributions": contributions[None]}

    return Recommend()


def sequence_to_tflite(model: keras.Model, history_length: int, top_k: int, variant: str,
                       calibration: dict[str, np.ndarray], explanations: bool = True) -> bytes:
    """The .tflite bytes; ``calibration``: real histories by input name ([n, L] each)."""
    module = _recommend_module(model, history_length, top_k, explanations)
    num_items = int(model.get_layer("item_vectors").get_weights()[1].shape[0])
    return sequence_module_to_tflite(module, num_items, variant, calibration)


def sequence_module_to_tflite(module: tf.Module, num_items: int, variant: str, calibration: dict[str, np.ndarray],
                              float_ops: tuple[str, ...] = FLOAT_OPS) -> bytes:
    """The .tflite bytes of a sequence model's ``module.recommend`` (contract version 3 inputs);
    int8 keeps ``float_ops`` in float."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.recommend.get_concrete_function()], module)
    if variant == "int8":
        everything = np.ones((1, num_items), dtype=bool)
        rng = np.random.default_rng(0)
        count = len(calibration["history_items"])

        def representative() -> Iterator[dict[str, np.ndarray]]:
            for i in range(count):  # every other query filters half the items, as for pooled models
                allowed = everything if i % 2 == 0 else rng.random((1, num_items)) < 0.5
                yield {**{name: calibration[name][i : i + 1] for name in SEQUENCE_INPUTS}, ALLOWED_INPUT: allowed}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative,
                                                                 debug_options=options)
            return bytes(debugger.get_nondebug_quantized_model())
    return convert(converter, variant)

"""TFLite export with scoring and top-K inside the graph.

The exported graph is built from the trained weights as constants (so the converter sees a frozen
graph) and computes exactly what :mod:`cloud_trainer.models.dot_product` computes, then
``top_k``, plus each history position's contribution to every returned item (the agent's
explanations). Variants: int8 (full integer quantization calibrated on real histories), float16,
float32. The parity check and the quantization quality gate are in
:mod:`cloud_trainer.delivery.gates`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from cloud_trainer.models.dot_product import ModelWeights, distinct_positions, history_counts, history_present
from shared.recommendation import ALLOWED_INPUT

#: Explanations cover the most recent this many history positions ("because you bought X"
#: names one of them): with a 200-event history, explaining all of it cost 0.7 ms a query.
EXPLAINED_POSITIONS = 50

#: How far below the lowest score items a filter leaves out are put, as a share of the score range.
FILTER_GAP = 0.02

#: Items per block in :func:`_blocked_top_k`.
TOP_K_BLOCK = 128


def _blocked_top_k(scores: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Exactly ``tf.math.top_k(scores, k)`` for one row [1, N], in about a quarter of the time for large N.

    The items are cut into blocks of :data:`TOP_K_BLOCK`; only the ``k`` blocks with the highest
    maxima are searched, plus the leftover tail. That is exact: if an item of the true top k sat in
    a block outside those k, each of the k blocks would hold an item scoring above it, so k items
    would beat it. (Ties at the k-th score may resolve to a different, equally scored item.)
    On 100k items in LiteRT int8: 0.42 -> 0.34 ms for matmul plus top-100 (see bench/).
    """
    n = int(scores.shape[1])
    full = n // TOP_K_BLOCK
    if full < 2 * k:  # too few blocks to gain anything
        return tf.math.top_k(scores, k=k)
    grid = tf.reshape(scores[:, : full * TOP_K_BLOCK], [full, TOP_K_BLOCK])
    _, best_blocks = tf.math.top_k(tf.reduce_max(grid, axis=1), k=k)
    candidates = tf.concat(
        [tf.reshape(tf.gather(grid, best_blocks), [1, k * TOP_K_BLOCK]), scores[:, full * TOP_K_BLOCK :]], axis=1
    )
    top_scores, position = tf.math.top_k(candidates, k=k)
    position = position[0]
    in_blocks = position < k * TOP_K_BLOCK
    block_item = tf.gather(best_blocks, tf.minimum(position // TOP_K_BLOCK, k - 1)) * TOP_K_BLOCK
    items = tf.where(in_blocks, block_item + position % TOP_K_BLOCK, full * TOP_K_BLOCK + position - k * TOP_K_BLOCK)
    return top_scores, items[None]


def _with_repeats(scores: tf.Tensor, top_items: tf.Tensor, history: tf.Tensor, present: tf.Tensor,
                  counts: tf.Tensor, allowed: tf.Tensor, weight: float, k: int,
                  history_only: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Top k of ``scores + weight * counts`` over the allowed items, from the top k of the allowed
    items by ``scores`` alone, plus the history.

    Exact: the repeat term is >= 0 and only history items get it, so every item of the final top
    k is among the k best allowed by ``scores`` or in the history. Adding it to all N scores instead would
    be simpler, but in int8 the whole score vector would then share one scale stretched by the
    repeat term, and the order of new items would blur (mode new lost 2.1% against 1.3% here).
    Duplicates (an item both in the top k and the history, or repeated in it) and padding are
    pushed below every real candidate (to their minimum minus 1: a tight int8 range).

    ``history_only``: the history may hold items the model does not rank (indices from N, the
    width of ``scores``, on; see :class:`cloud_trainer.models.dot_product.ModelWeights`). They are
    no candidates: they stand in as the best item of the top k (a duplicate, pushed below).
    """
    candidates = tf.concat([top_items[0], history], axis=0)  # [k + L] history indices
    slots = tf.range(tf.shape(candidates)[0])
    first_slot = tf.math.unsorted_segment_min(slots, candidates, num_segments=tf.shape(counts)[0])  # [N_h]
    real = tf.concat([tf.ones([k], tf.bool), present], axis=0) & tf.equal(tf.gather(first_slot, candidates), slots)
    repeats = weight * tf.cast(tf.gather(counts, candidates), tf.float32)
    if history_only:
        ranked = candidates < tf.shape(scores)[1]
        candidates = tf.where(ranked, candidates, top_items[0][0])
        real &= ranked
    rescored = tf.gather(scores[0], candidates) + repeats
    real &= tf.gather(allowed, candidates)
    rescored = tf.where(real, rescored, tf.reduce_min(rescored) - 1.0)
    top_scores, position = tf.math.top_k(rescored[None], k=k)
    return top_scores, tf.gather(candidates, position[0])[None]


def _input_signature(history_length: int, num_items: int) -> list[tf.TensorSpec]:
    """The graph's inputs: one shopper's history (items and weights) and the items a filter allows."""
    return [
        tf.TensorSpec([1, history_length], tf.int32, name="history_items"),
        tf.TensorSpec([1, history_length], tf.float32, name="history_weights"),
        tf.TensorSpec([1, num_items], tf.bool, name=ALLOWED_INPUT),
    ]


def _recommend_module(weights: ModelWeights, history_length: int, top_k: int, explanations: bool) -> tf.Module:
    # the factorized model has no projection: skipping it saves an [L, D] x [D, D] matmul per query
    identity = bool(np.array_equal(weights.projection, np.eye(len(weights.projection)))
                    and not weights.projection_bias.any())
    class Recommend(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h = tf.constant(weights.history_embedding)
            self.w = tf.constant(weights.projection)
            self.b = tf.constant(weights.projection_bias)
            self.e = tf.constant(weights.item_vectors.T)  # [N, D]: one copy serves scoring and explaining
            self.e_bias = tf.constant(weights.item_bias)

        @tf.function(input_signature=_input_signature(history_length, weights.num_items))
        def recommend(self, history_items: tf.Tensor, history_weights: tf.Tensor,
                      item_allowed: tf.Tensor) -> dict[str, tf.Tensor]:
            present = history_present(history_items, history_weights)  # [1, L]
            counts = None
            if weights.pooling == "distinct" or weights.repeat_weight:
                counts = history_counts(history_items, present, weights.num_history_items)  # [1, N_h] int32
            if weights.pooling == "distinct":
                coefficients = distinct_positions(history_items, present, counts, weights.recency)  # [1, L]
            else:
                coefficients = history_weights
            h = tf.gather(self.h, history_items)  # [1, L, D]
            pooled = tf.matmul(coefficients[:, None, :], h)[:, 0, :]  # [1, D]
            user = pooled if identity else tf.matmul(pooled, self.w) + self.b  # [1, D]
            scores = tf.matmul(user, self.e, transpose_b=True) + self.e_bias  # [1, N]
            # Filters rank the whole catalogue: items not allowed drop below the lowest score of
            # all, so they come back only after every allowed item (the agent drops them; see
            # shared.recommendation). The gap is a share of the score range, so that it survives
            # int8, whose steps are range / 255 (calibration includes filtered queries).
            low = tf.reduce_min(scores)
            filtered = tf.where(item_allowed, scores, low - FILTER_GAP * (tf.reduce_max(scores) - low))
            top_scores, top_items = _blocked_top_k(filtered, top_k)
            if weights.repeat_weight:  # the shopper's own items: + weight x times in the history
                top_scores, top_items = _with_repeats(scores, top_items, history_items[0], present[0], counts[0],
                                                      item_allowed[0], weights.repeat_weight, top_k,
                                                      weights.num_history_items > weights.num_items)
            if not explanations:
                return {"item_indices": top_items, "scores": top_scores}
            # The user vector is linear in the history, so each position's share of a returned
            # item's score is exact: c_l * (h_l @ W) . e_item (the biases are shared by all), plus
            # the repeat term for the positions holding that very item. Only the most recent
            # EXPLAINED_POSITIONS positions are explained: the matmul below is [E, D] x [D, K].
            e = min(history_length, EXPLAINED_POSITIONS)
            projected = h[0][:e] if identity else tf.matmul(h[0][:e], self.w)  # [E, D]
            per_position = coefficients[0][:e, None] * projected
            top_vectors = tf.gather(self.e, top_items[0])  # [K, D]
            contributions = tf.matmul(per_position, top_vectors, transpose_b=True)  # [E, K]
            if weights.repeat_weight:
                same = tf.equal(history_items[0][:e, None], top_items[0][None, :]) & present[0][:e, None]
                contributions += weights.repeat_weight * tf.cast(same, tf.float32)
            return {"item_indices": top_items, "scores": top_scores, "contributions": contributions[None]}

    return Recommend()


def to_tflite(
    weights: ModelWeights,
    history_length: int,
    top_k: int,
    variant: str,
    calibration: tuple[np.ndarray, np.ndarray],
    explanations: bool = True,
) -> bytes:
    """The .tflite bytes; ``calibration`` is (items [n, L], weights [n, L]) of real histories.

    With ``explanations`` the graph also outputs ``contributions`` [1, E, K] for the most recent
    E = min(L, EXPLAINED_POSITIONS) positions. In int8 this costs a
    second copy of the item vectors (the scoring matmul wants them per-channel quantized, the
    gather per-tensor): about +30% file size, and a little time per query (see bench/).
    """
    module = _recommend_module(weights, history_length, top_k, explanations)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.recommend.get_concrete_function()], module
    )
    if variant == "int8":
        cal_items, cal_weights = calibration

        # every other calibration query filters half the items, so the int8 range holds the gap
        everything = np.ones((1, weights.num_items), dtype=bool)
        rng = np.random.default_rng(0)

        def representative() -> Iterator[dict[str, np.ndarray]]:
            for i in range(len(cal_items)):
                allowed = everything if i % 2 == 0 else rng.random((1, weights.num_items)) < 0.5
                yield {"history_items": cal_items[i : i + 1], "history_weights": cal_weights[i : i + 1],
                       ALLOWED_INPUT: allowed}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return convert(converter, variant)


def convert(converter: tf.lite.TFLiteConverter, variant: str) -> bytes:
    """The .tflite bytes of ``converter`` in ``variant``: float16 and float32 are set here, int8's
    calibration is the caller's (it depends on the graph's inputs)."""
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant not in ("int8", "float32"):
        raise ValueError(f"unknown variant {variant!r}; use int8, float16 or float32")
    with warnings.catch_warnings():
        # int8 calibration runs TensorFlow's own deprecated tf.lite.Interpreter internally
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return bytes(converter.convert())


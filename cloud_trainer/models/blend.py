"""``--model blend``: the factorized default and the transformer in one graph, each model's scores
standardised over the catalogue and mixed by a weight ``a`` chosen on the validation window
(:mod:`cloud_trainer.models.blend_choice`).

Shapes (B batch, L history length, N items; D_f and D_t the two models' dimensions)::

    history_items, history_kinds, history_gaps   int32 [B, L]   contract version 3 (shared.sequence)
    u_f = distinct pooling of the last L_f events (the factorized user vector)     [B, D_f]
    u_t = the transformer's user vector over the last L_t events                   [B, D_t]
    s_m = u_m . item_vectors_m + item_bias_m        each model's scores             [B, N]
    blend = (1 - a) s_f / sd(s_f) + a s_t / sd(s_t) + (1 - a) repeat_weight counts / sd(s_f)

``sd`` is the standard deviation of a model's scores of this shopper over the whole catalogue
(their mean shifts every item alike and does not change the ranking). It costs no pass over the
N items: with ``v = [u, 1]`` and ``C`` the covariance of the item rows ``[vector, bias]``,
``sd^2 = v C v`` ([D + 1]^2 work per query). Ranking costs the two models' scoring matmuls, as one
model of dimension D_f + D_t would. The factorized model's repeat term keeps its place relative
to its own scores.

Positions are most recent first, so the transformer reads the first L_t of the L_f positions the
factorized model reads: the agent builds one set of inputs (its kinds and gaps are the same at
any length, :func:`shared.sequence.sequence_inputs`). The factorized model's presence mask is
``kinds > 0``, exact in any graph. Items the transformer never saw (the factorized model's
cold-start items, after the trained ones) are read as zero embeddings and scored at the mean
item vector and bias: the transformer has no opinion on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from cloud_trainer.models.dot_product import ModelWeights, distinct_positions, history_counts
from cloud_trainer.models.transformer import encode

if TYPE_CHECKING:
    import keras

#: The weights of the transformer the choice tries (0: the factorized model alone; 1: the transformer's scores).
BLEND_WEIGHTS = tuple(round(float(a), 2) for a in np.linspace(0.0, 1.0, 11))
#: Floor of a score variance (a shopper whose scores are all alike).
VARIANCE_FLOOR = 1e-6
BATCH = 256


def augmented(vectors: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item rows ``[vector, bias]`` [N, D + 1], their covariance over the items [D + 1, D + 1])."""
    rows = np.concatenate([vectors.T, bias[:, None]], axis=1).astype(np.float64)
    centred = rows - rows.mean(axis=0)
    return rows.astype(np.float32), (centred.T @ centred / len(rows)).astype(np.float32)


@dataclass
class TransformerWeights:
    """A trained transformer over a given catalogue: its encoder's parameters (the input item
    table with zero rows for items it never saw), user projection and output item vectors."""

    encoder: dict[str, np.ndarray]
    blocks: int
    heads: int
    length: int
    projection: np.ndarray  # [D, D]
    projection_bias: np.ndarray  # [D]
    item_vectors: np.ndarray  # [D, N]
    item_bias: np.ndarray  # [N]

    @classmethod
    def of(cls, model: keras.Model, index: np.ndarray) -> TransformerWeights:
        """The transformer ``model`` over a catalogue whose item j is its item ``index[j]`` (-1: one it never saw)."""
        layer = model.get_layer("sequence_encoder")
        params = {name: np.asarray(v.numpy()) for name, v in layer.params.items()}
        projection, projection_bias = model.get_layer("user_projection").get_weights()
        vectors, bias = model.get_layer("item_vectors").get_weights()  # [D, N_t], [N_t]
        seen = index >= 0
        table = np.zeros((len(index), params["item"].shape[1]), dtype=np.float32)
        table[seen] = params["item"][index[seen]]
        out_vectors = np.repeat(vectors.mean(axis=1, keepdims=True), len(index), axis=1).astype(np.float32)
        out_vectors[:, seen] = vectors[:, index[seen]]
        out_bias = np.full(len(index), bias.mean(), dtype=np.float32)
        out_bias[seen] = bias[index[seen]]
        return cls({**params, "item": table}, layer.blocks, layer.heads, layer.length, projection, projection_bias,
                   out_vectors, out_bias)

    def constants(self) -> dict[str, tf.Tensor]:
        return {name: tf.constant(value) for name, value in self.encoder.items()}


@dataclass
class BlendWeights:
    """The blend over one catalogue: both models' weights and the transformer's weight ``a``."""

    factorized: ModelWeights
    transformer: TransformerWeights
    a: float
    factorized_length: int

    def __post_init__(self) -> None:
        if self.factorized.pooling != "distinct":
            raise ValueError("the blend takes a factorized model (distinct pooling)")
        if self.factorized.num_history_items != self.factorized.num_items:
            raise ValueError("the blend does not take a store's assortment yet")
        if self.transformer.item_bias.shape[0] != self.factorized.num_items:
            raise ValueError("the two models must rank the same catalogue")
        if not 0.0 <= self.a <= 1.0:
            raise ValueError(f"the blend weight must be between 0 and 1, not {self.a}")

    @property
    def num_items(self) -> int:
        return self.factorized.num_items

    @property
    def history_length(self) -> int:
        """Positions the graph takes: the longer of the two models' histories."""
        return max(self.factorized_length, self.transformer.length)


def _sd(v: tf.Tensor, covariance: tf.Tensor) -> tf.Tensor:
    """[B, 1]: the standard deviation over the items of the scores ``v . [vector, bias]``."""
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.matmul(v, covariance) * v, axis=1, keepdims=True), VARIANCE_FLOOR))


class BlendGraph:
    """The blend's arithmetic on constants, shared by the float reference and the exported graph."""

    def __init__(self, weights: BlendWeights) -> None:
        f, t = weights.factorized, weights.transformer
        self.w = weights
        self.identity = bool(np.array_equal(f.projection, np.eye(len(f.projection))) and not f.projection_bias.any())
        self.h = tf.constant(f.history_embedding)
        self.f_w, self.f_b = tf.constant(f.projection), tf.constant(f.projection_bias)
        self.t_p = t.constants()
        self.t_w, self.t_b = tf.constant(t.projection), tf.constant(t.projection_bias)
        self.e_f, self.b_f = tf.constant(f.item_vectors.T), tf.constant(f.item_bias)  # [N, D_f], [N]
        self.e_t, self.b_t = tf.constant(t.item_vectors.T), tf.constant(t.item_bias)
        self.c_f = tf.constant(augmented(f.item_vectors, f.item_bias)[1])
        self.c_t = tf.constant(augmented(t.item_vectors, t.item_bias)[1])

    def parts(self, items: tf.Tensor, kinds: tf.Tensor, gaps: tf.Tensor) -> dict[str, tf.Tensor]:
        """The query's pieces: the user vectors ``u_f``, ``u_t`` and their scales ``scale_f``,
        ``scale_t`` [B, 1] (the weight over the standard deviation), ``repeat`` [B] (the repeat
        term's weight per occurrence), ``counts`` [B, N], the factorized ``coefficients`` and
        history vectors ``h`` [B, L_f, D_f], and the transformer's encoder outputs."""
        w = self.w
        lf, lt = w.factorized_length, w.transformer.length
        f_items, f_kinds = items[:, :lf], kinds[:, :lf]
        present = f_kinds > 0
        counts = history_counts(f_items, present, w.num_items)
        coefficients = distinct_positions(f_items, present, counts, w.factorized.recency)
        h = tf.gather(self.h, f_items)  # [B, L_f, D_f]
        pooled = tf.matmul(coefficients[:, None, :], h)[:, 0, :]
        u_f = pooled if self.identity else tf.matmul(pooled, self.f_w) + self.f_b
        hidden, shares, residual, x0 = encode(self.t_p, items[:, :lt], kinds[:, :lt], gaps[:, :lt],
                                              w.transformer.blocks, w.transformer.heads)
        u_t = tf.matmul(hidden, self.t_w) + self.t_b
        ones = tf.ones_like(u_f[:, :1])
        v_f, v_t = tf.concat([u_f, ones], axis=1), tf.concat([u_t, ones], axis=1)
        scale_f, scale_t = (1.0 - w.a) / _sd(v_f, self.c_f), w.a / _sd(v_t, self.c_t)  # [B, 1]
        return {"u_f": u_f, "u_t": u_t, "repeat": w.factorized.repeat_weight * scale_f[:, 0], "counts": counts,
                "coefficients": coefficients, "h": h, "scale_f": scale_f, "scale_t": scale_t, "shares": shares,
                "residual": residual, "x0": x0}

    def scores(self, parts: Mapping[str, tf.Tensor], with_repeats: bool = True) -> tf.Tensor:
        """[B, N]: the blended scores (with the repeat term unless told otherwise).

        For int8, each model's user vector is scaled *before* its scoring matmul, so the matmul
        outputs standardised scores, whose range is alike for every shopper: the factorized
        model's raw scores grow with the distinct items of a history (0 to 17 over the planted
        test shop's calibration histories, against a spread of 0.3 within one), and quantizing
        them in steps of range / 255 lost the order (top-10 parity 0.44). One matmul over both
        models' concatenated vectors would share one activation scale between two differently
        scaled halves (parity 0.54): each model has its own."""
        scale_f, scale_t = parts["scale_f"], parts["scale_t"]
        scores = (tf.matmul(parts["u_f"] * scale_f, self.e_f, transpose_b=True) + scale_f * self.b_f
                  + tf.matmul(parts["u_t"] * scale_t, self.e_t, transpose_b=True) + scale_t * self.b_t)
        if with_repeats and self.w.factorized.repeat_weight:
            scores += parts["repeat"][:, None] * tf.cast(parts["counts"], tf.float32)
        return scores


class BlendReference:
    """The blend in float TensorFlow, as the parity check and the quality gate take a Keras model:
    ``predict(inputs by name)`` gives every item's blended score."""

    def __init__(self, weights: BlendWeights) -> None:
        self.weights = weights
        self.graph = BlendGraph(weights)

    def predict(self, inputs: Mapping[str, np.ndarray], batch_size: int = BATCH, verbose: int = 0) -> np.ndarray:
        del verbose  # the signature of keras.Model.predict, as the gates call it
        items, kinds, gaps = (np.asarray(inputs[name], dtype=np.int32)
                              for name in ("history_items", "history_kinds", "history_gaps"))
        out = []
        for first in range(0, len(items), batch_size):
            part = slice(first, first + batch_size)
            out.append(self.graph.scores(self.graph.parts(items[part], kinds[part], gaps[part])).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.weights.num_items), dtype=np.float32)

"""A SASRec-style user tower (Kang and McAuley, ICDM 2018): causal self-attention over the last L
events, for ``--model transformer``.

Shapes (B batch, L history length, D dimension, H heads, N items); positions as
:mod:`shared.sequence` orders them, most recent first (position 0), zero-padded::

    history_items  int32 [B, L]   item indices
    history_kinds  int32 [B, L]   0 padding, 1 view, 2 cart, 3 purchase
    history_gaps   int32 [B, L]   log-spaced time since the previous event (shared.sequence.gap_buckets)
    x = item[items] + kind[kinds] + gap[gaps] + position[0..L)       [B, L, D], padding zeroed
    blocks (pre-norm): x += attention(norm(x)); x += ffn(norm(x))    causal: a position sees itself
                                                                    and the older positions only
    u = W @ norm(x[:, 0]) + b                                       [B, D]  the user vector
    scores = u @ item_vectors + item_bias                           [B, N]

The same :func:`encode` runs in Keras (training, on variables) and in the exported graph (on
constants; :mod:`cloud_trainer.delivery.export_sequence`), so the two compute alike. The output
layers carry the two-tower model's names (``user_projection``, ``item_vectors``), so its training
task (:class:`cloud_trainer.models.retrieval.RetrievalTask`: in-batch softmax with log-Q
correction, tf.distribute) trains this model unchanged. Input item embeddings and output item
vectors are separate tables (not tied).

**Attention without -inf.** A masked position's logit is lowered by :data:`MASK_PENALTY` (its
weight drops by e^-16, about 1e-7), not by -1e9: in an int8 graph every tensor's range is
calibrated, and a -1e9 would leave the real logits no resolution. (Renormalising a masked softmax
instead needs an int8 division, which LiteRT refuses when a denominator quantizes to zero.)
A padded query position sees no key at all: its uniform weights are harmless, as nothing reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import keras
import tensorflow as tf

from shared.sequence import NUM_GAP_BUCKETS, NUM_KIND_CODES, SEQUENCE_INPUTS

EPSILON = 1e-5
MASK_PENALTY = 16.0


def _norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)
    return centred * tf.math.rsqrt(variance + EPSILON) * gamma + beta


def visible(kinds: tf.Tensor) -> tf.Tensor:
    """float [B, L, L]: 1 where query position i may attend to key position j (j >= i: the same
    or an older event, and present); padding is kind 0, exact in any graph."""
    length = kinds.shape[1]
    causal = tf.constant([[1.0 if j >= i else 0.0 for j in range(length)] for i in range(length)])
    present = tf.cast(kinds > 0, tf.float32)  # [B, L]
    return causal[None] * present[:, None, :]


def encode(p: Mapping[str, tf.Tensor], items: tf.Tensor, kinds: tf.Tensor, gaps: tf.Tensor, blocks: int,
           heads: int, dropout: float = 0.0,
           training: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(normalised hidden state of position 0 [B, D], the last block's per-position attention
    contributions to it [B, L, D] (value-weighted, see :func:`explain_positions`), the residual
    stream at position 0 entering the last block's attention [B, D], position 0's state before
    the final normalisation [B, D])."""
    present = tf.cast(kinds > 0, tf.float32)[:, :, None]  # [B, L, 1]
    length = items.shape[1]
    x = (tf.gather(p["item"], items) + tf.gather(p["kind"], kinds) + tf.gather(p["gap"], gaps)
         + p["position"][None, :length]) * present
    if training and dropout:
        x = tf.nn.dropout(x, dropout)
    mask = visible(kinds)[:, None]  # [B, 1, L, L]
    dim = int(p["item"].shape[1])
    per_head = dim // heads
    shares = residual = x[:, 0]
    for b in range(blocks):
        a = _norm(x, p[f"b{b}_norm1_g"], p[f"b{b}_norm1_b"])

        def split(t: tf.Tensor) -> tf.Tensor:  # [B, L, D] -> [B, H, L, D/H]
            return tf.transpose(tf.reshape(t, [-1, length, heads, per_head]), [0, 2, 1, 3])

        q, k, v = (split(tf.matmul(a, p[f"b{b}_{n}"])) for n in ("q", "k", "v"))
        logits = tf.matmul(q, k, transpose_b=True) / math.sqrt(per_head) + (mask - 1.0) * MASK_PENALTY
        weights = tf.nn.softmax(logits, axis=-1)  # [B, H, L, L]
        attended = tf.reshape(tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3]), [-1, length, dim])
        if b == blocks - 1:
            residual = x[:, 0]
            # position j's share of position 0's attention output: sum_h w[h, 0, j] * v_h[j] @ Wo_h
            wo = tf.reshape(p[f"b{b}_o"], [heads, per_head, dim])
            shares = tf.einsum("bhj,bhjd,hde->bje", weights[:, :, 0, :], v, wo)
        out = tf.matmul(attended, p[f"b{b}_o"])
        if training and dropout:
            out = tf.nn.dropout(out, dropout)
        x = x + out
        f = _norm(x, p[f"b{b}_norm2_g"], p[f"b{b}_norm2_b"])
        f = tf.nn.relu(tf.matmul(f, p[f"b{b}_ffn1"]) + p[f"b{b}_ffn1_b"])
        f = tf.matmul(f, p[f"b{b}_ffn2"]) + p[f"b{b}_ffn2_b"]
        if training and dropout:
            f = tf.nn.dropout(f, dropout)
        x = x + f
    return _norm(x[:, 0], p["final_g"], p["final_b"]), shares, residual, x[:, 0]


def explain_positions(p: Mapping[str, tf.Tensor], shares: tf.Tensor, residual: tf.Tensor,
                      x0: tf.Tensor) -> tf.Tensor:
    """[B, L, D]: each position's part of the (pre-projection) user vector, linearised: the last
    block's attention shares, plus position 0's own residual stream, through the final
    normalisation's scale (its statistics taken from the actual forward pass ``x0``)."""
    mean = tf.reduce_mean(x0, axis=-1, keepdims=True)
    scale = tf.math.rsqrt(tf.reduce_mean(tf.square(x0 - mean), axis=-1, keepdims=True) + EPSILON)  # [B, 1]
    length = shares.shape[1]
    own = tf.pad(residual[:, None, :], [[0, 0], [0, length - 1], [0, 0]])  # position 0's own stream
    parts = shares + own  # [B, L, D]
    parts = parts - tf.reduce_mean(parts, axis=-1, keepdims=True)
    return parts * scale[:, :, None] * p["final_g"]


def parameter_shapes(num_items: int, dim: int, length: int, blocks: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"item": (num_items, dim), "kind": (NUM_KIND_CODES, dim),
                                          "gap": (NUM_GAP_BUCKETS, dim), "position": (length, dim),
                                          "final_g": (dim,), "final_b": (dim,)}
    for b in range(blocks):
        shapes.update({f"b{b}_norm1_g": (dim,), f"b{b}_norm1_b": (dim,), f"b{b}_norm2_g": (dim,),
                       f"b{b}_norm2_b": (dim,), f"b{b}_q": (dim, dim), f"b{b}_k": (dim, dim), f"b{b}_v": (dim, dim),
                       f"b{b}_o": (dim, dim), f"b{b}_ffn1": (dim, 2 * dim), f"b{b}_ffn1_b": (2 * dim,),
                       f"b{b}_ffn2": (2 * dim, dim), f"b{b}_ffn2_b": (dim,)})
    return shapes


@keras.saving.register_keras_serializable(package="edge_recommender")
class SequenceEncoder(keras.layers.Layer):
    """The encoder's variables and :func:`encode` over them: [B, D], position 0's normalised state."""

    def __init__(self, num_items: int, dim: int, length: int, blocks: int = 2, heads: int = 2,
                 dropout: float = 0.1, l2: float = 1e-6, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"the dimension ({dim}) must be a multiple of the heads ({heads})")
        self.num_items, self.dim, self.length = num_items, dim, length
        self.blocks, self.heads, self.dropout, self.l2 = blocks, heads, dropout, l2

    def build(self, input_shape: object) -> None:
        self.params = {}
        for name, shape in parameter_shapes(self.num_items, self.dim, self.length, self.blocks).items():
            if name.endswith("_g"):
                init: keras.initializers.Initializer = keras.initializers.Ones()
            elif name.endswith("_b"):
                init = keras.initializers.Zeros()
            else:
                init = keras.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(shape[-1]))
            regularizer = keras.regularizers.L2(self.l2) if name == "item" else None
            self.params[name] = self.add_weight(shape=shape, initializer=init, regularizer=regularizer, name=name)

    def call(self, items: tf.Tensor, kinds: tf.Tensor, gaps: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        params = {name: tf.convert_to_tensor(v) for name, v in self.params.items()}
        return encode(params, items, kinds, gaps, self.blocks, self.heads, self.dropout, bool(training))[0]

    def constants(self) -> dict[str, tf.Tensor]:
        """The trained parameters as constants (for the exported graph)."""
        return {name: tf.constant(v.numpy()) for name, v in self.params.items()}

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim, "length": self.length,
                "blocks": self.blocks, "heads": self.heads, "dropout": self.dropout, "l2": self.l2}


def build_model(num_items: int, dim: int, history_length: int, l2: float = 1e-6, blocks: int = 2,
                heads: int = 2, dropout: float = 0.1) -> keras.Model:
    inputs = [keras.Input((history_length,), dtype="int32", name=name) for name in SEQUENCE_INPUTS]
    hidden = SequenceEncoder(num_items, dim, history_length, blocks, heads, dropout, l2, name="sequence_encoder")(
        *inputs)
    user = keras.layers.Dense(dim, name="user_projection")(hidden)
    scores = keras.layers.Dense(num_items, name="item_vectors", kernel_regularizer=keras.regularizers.L2(l2))(user)
    return keras.Model(inputs, scores, name="edge_recommender_sequence")

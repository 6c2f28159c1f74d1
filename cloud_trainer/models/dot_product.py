"""The embedding dot-product model (Keras) and the weights the TFLite export is built from.

Shapes (B batch, L history length, D dimension, N items)::

    history_items   int32   [B, L]   item indices, zero-padded
    history_weights float32 [B, L]   from shared.events.history_inputs (sum to 1; 0 = padding)
    h = history_embedding[history_items]          [B, L, D]
    u = W @ (sum_l history_weights * h) + b        [B, D]    the user vector
    scores = u @ item_vectors + item_bias           [B, N]    dot(user vector, item vectors)

The user tower depends only on the history, so shoppers unseen in training and events posted a
moment ago are served on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import keras
import numpy as np
import tensorflow as tf


@dataclass
class ModelWeights:
    """A trained model's weights. History rows and item columns are the same N items, except in a
    store's bundle (:mod:`cloud_trainer.delivery.assortment`): there the first N rows are the N
    items sold and ranked, the rows after them items read in histories only ([N_h, D], N_h >= N)."""

    history_embedding: np.ndarray  # [N_h, D]
    projection: np.ndarray  # [D, D]
    projection_bias: np.ndarray  # [D]
    item_vectors: np.ndarray  # [D, N]
    item_bias: np.ndarray  # [N]
    pooling: str = "weighted"  # or "distinct"
    repeat_weight: float = 0.0
    #: Distinct pooling only: history position p (0 = the most recent event) counts ``recency**p``.
    recency: float = 1.0

    @property
    def num_items(self) -> int:
        """Items ranked (the scores' width)."""
        return int(self.item_bias.shape[0])

    @property
    def num_history_items(self) -> int:
        """Items a history may hold (the history embedding's rows)."""
        return int(self.history_embedding.shape[0])

    def first_items(self, count: int) -> ModelWeights:
        """The same model over its first ``count`` items only."""
        return replace(self, history_embedding=self.history_embedding[:count],
                       item_vectors=self.item_vectors[:, :count], item_bias=self.item_bias[:count])


def history_present(items: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """bool [B, L]: which positions hold an event. Padding is a suffix of item 0 with weight 0.

    Not ``weights > 0`` alone: in an int8 graph the weights input is quantized in steps of about
    1/255, so the old positions of a long history (weights ~0.002) would read as padding. Item
    ids are int32 and exact, so a history runs up to its last position holding a nonzero item or
    a nonzero weight; only item 0 among the very oldest events of a long history can be missed.
    """
    marked = tf.not_equal(items, 0) | (weights > 0)
    positions = tf.range(1, tf.shape(items)[1] + 1)[None, :]  # 1-based
    length = tf.reduce_max(tf.where(marked, positions, tf.zeros_like(positions)), axis=1, keepdims=True)
    return positions <= length


def history_counts(items: tf.Tensor, present: tf.Tensor, num_items: int) -> tf.Tensor:
    """int32 [B, N]: how many present positions (:func:`history_present`) of each history hold each item."""
    batch, length = tf.shape(items)[0], tf.shape(items)[1]
    rows = tf.repeat(tf.range(batch), length)
    flat = rows * num_items + tf.reshape(items, [-1])
    counts = tf.math.unsorted_segment_sum(tf.reshape(tf.cast(present, tf.int32), [-1]), flat, batch * num_items)
    return tf.reshape(counts, [batch, num_items])


def distinct_positions(items: tf.Tensor, present: tf.Tensor, counts: tf.Tensor, recency: float = 1.0) -> tf.Tensor:
    """float [B, L]: ``recency**p`` / (occurrences of the item) at each position p holding it (p = 0
    the most recent event), 0 for padding.

    So each distinct history item is pooled once in total, however often it appears, with the mean
    of its positions' recency weights (``recency`` 1: all alike); ``present`` is
    :func:`history_present`, ``counts`` :func:`history_counts`. One scatter and one gather:
    cheaper in the graph than comparing every position with every other. Used by the Keras model
    and the TFLite graph alike.
    """
    occurrences = tf.gather(counts, items, batch_dims=1)  # [B, L]
    coefficients = tf.where(present, 1.0 / tf.cast(tf.maximum(occurrences, 1), tf.float32), 0.0)
    if recency == 1.0:
        return coefficients
    decay = tf.pow(tf.constant(recency, tf.float32), tf.cast(tf.range(tf.shape(items)[1]), tf.float32))
    return coefficients * decay[None, :]


@keras.saving.register_keras_serializable(package="edge_recommender")
class DistinctPooling(keras.layers.Layer):
    def __init__(self, num_items: int, recency: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_items, self.recency = num_items, recency

    def call(self, items: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        present = history_present(items, weights)
        return distinct_positions(items, present, history_counts(items, present, self.num_items), self.recency)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "num_items": self.num_items, "recency": self.recency}


@keras.saving.register_keras_serializable(package="edge_recommender")
class RepeatCount(keras.layers.Layer):
    """``weight * count(i in history)`` for every item i: [B, N]."""

    def __init__(self, num_items: int, weight: float = 0.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_items, self.initial_weight = num_items, weight

    def build(self, input_shape: object) -> None:
        self.weight = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_weight),
                                      name="weight")

    def call(self, items: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        present = history_present(items, weights)
        return self.weight * tf.cast(history_counts(items, present, self.num_items), tf.float32)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "num_items": self.num_items, "weight": self.initial_weight}


def build_model(num_items: int, dim: int, history_length: int, l2: float = 1e-6, pooling: str = "weighted",
                repeat_weight: float | None = None, recency: float = 1.0) -> keras.Model:
    items = keras.Input((history_length,), dtype="int32", name="history_items")
    weights = keras.Input((history_length,), dtype="float32", name="history_weights")
    h = keras.layers.Embedding(
        num_items, dim, name="history_embedding", embeddings_regularizer=keras.regularizers.L2(l2)
    )(items)
    coefficients = weights
    if pooling == "distinct":
        coefficients = DistinctPooling(num_items, recency, name="distinct_pooling")(items, weights)
    pooled = keras.layers.Dot(axes=(1, 1), name="weighted_mean")([coefficients, h])
    user = keras.layers.Dense(dim, name="user_projection")(pooled)
    scores = keras.layers.Dense(
        num_items, name="item_vectors", kernel_regularizer=keras.regularizers.L2(l2)
    )(user)
    if repeat_weight is not None:
        scores = keras.layers.Add(name="with_repeats")(
            [scores, RepeatCount(num_items, repeat_weight, name="repeat_count")(items, weights)])
    return keras.Model([items, weights], scores, name="edge_recommender")


def model_from_weights(weights: ModelWeights, history_length: int) -> keras.Model:
    """A Keras model computing exactly what ``weights`` describe (for fitted, not trained, weights)."""
    model = build_model(weights.num_items, int(weights.projection.shape[0]), history_length,
                        pooling=weights.pooling, repeat_weight=weights.repeat_weight or None,
                        recency=weights.recency)
    model.get_layer("history_embedding").set_weights([weights.history_embedding])
    model.get_layer("user_projection").set_weights([weights.projection, weights.projection_bias])
    model.get_layer("item_vectors").set_weights([weights.item_vectors, weights.item_bias])
    return model


def extract_weights(model: keras.Model) -> ModelWeights:
    (embedding,) = model.get_layer("history_embedding").get_weights()
    projection, projection_bias = model.get_layer("user_projection").get_weights()
    item_vectors, item_bias = model.get_layer("item_vectors").get_weights()
    names = {layer.name for layer in model.layers}
    pooling = "distinct" if "distinct_pooling" in names else "weighted"
    repeat = float(model.get_layer("repeat_count").get_weights()[0]) if "repeat_count" in names else 0.0
    recency = float(model.get_layer("distinct_pooling").recency) if pooling == "distinct" else 1.0
    return ModelWeights(embedding, projection, projection_bias, item_vectors, item_bias, pooling, repeat, recency)

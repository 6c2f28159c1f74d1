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

from dataclasses import dataclass

import keras
import numpy as np


@dataclass
class ModelWeights:
    history_embedding: np.ndarray  # [N, D]
    projection: np.ndarray  # [D, D]
    projection_bias: np.ndarray  # [D]
    item_vectors: np.ndarray  # [D, N]
    item_bias: np.ndarray  # [N]

    @property
    def num_items(self) -> int:
        return int(self.item_bias.shape[0])


def build_model(num_items: int, dim: int, history_length: int, l2: float = 1e-6) -> keras.Model:
    items = keras.Input((history_length,), dtype="int32", name="history_items")
    weights = keras.Input((history_length,), dtype="float32", name="history_weights")
    h = keras.layers.Embedding(
        num_items, dim, name="history_embedding", embeddings_regularizer=keras.regularizers.L2(l2)
    )(items)
    pooled = keras.layers.Dot(axes=(1, 1), name="weighted_mean")([weights, h])
    user = keras.layers.Dense(dim, name="user_projection")(pooled)
    scores = keras.layers.Dense(
        num_items, name="item_vectors", kernel_regularizer=keras.regularizers.L2(l2)
    )(user)
    return keras.Model([items, weights], scores, name="edge_recommender")


def extract_weights(model: keras.Model) -> ModelWeights:
    (embedding,) = model.get_layer("history_embedding").get_weights()
    projection, projection_bias = model.get_layer("user_projection").get_weights()
    item_vectors, item_bias = model.get_layer("item_vectors").get_weights()
    return ModelWeights(embedding, projection, projection_bias, item_vectors, item_bias)

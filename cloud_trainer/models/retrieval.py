"""The two-tower model's training: its loss, its batches and its loop, apart from the served graph.

**The choice.** The served model (:func:`cloud_trainer.models.dot_product.build_model`) scores every
item; a full softmax needs those scores for every example, O(B * N * D) a batch: 99k items made
training impractical (issue 17). The training loss is therefore an **in-batch softmax with a log-Q
correction** (Yi et al., RecSys 2019; TensorFlow Recommenders' ``Retrieval`` task): the candidates
of a batch are its own target items, so an item is drawn as a negative as often as it is a target,
and each candidate's logit is lowered by the log of that sampling probability,
``log Q(j) = log(count(j as a target) / examples)``, which undoes the popularity bias of in-batch
sampling. Accidental hits (the row's own target item again among the candidates) are removed.
Cost: O(b * G * D) a batch for G candidates, whatever N is; what still grows with N is one pass
over the item variables a step (their L2 penalty and the Adam update), O(N * D).

The full softmax is kept (``--softmax full``): a few lines, exact, and affordable for a small
catalogue. In-batch is the default. On Online Retail (3,619 items, test from 2011-11-09, the
defaults: dim 32, 8 epochs) the two are equal within one standard error: Recall@20 0.184 (in-batch)
and 0.187 (full) over all purchases, 0.089 and 0.087 over new ones, with training 39 s and 64 s.

**The item bias starts at log Q** (the trainer sets it): an item is a candidate only in the batches
where it is a target, so a rare item's bias would hardly move from its start, and from 0 the rare
items outrank the popular ones when the model is served (Recall@20 0.092 instead of 0.184 above).
From log Q the served score of the untrained model is popularity, and training corrects it.

**Across replicas.** The candidates are the *global* batch: each replica all-gathers the target
ids (integers: no gradient through the collective) and reads their vectors from its copy of the
item variables. The batches (:func:`training_batches`) are the same on every worker, fixed by the
seed alone, and the gradient of the item variables is summed before Adam sees it
(:func:`summed_gradient`). So one worker and several train the same loss on the same global
batches, equal up to float32 summation order (tests/test_distribute.py).

Shapes (b local batch, G global batch, D dimension, N items)::

    user     float32 [b, D]   the user tower's output
    targets  int32   [b]      the item each example predicts
    ids      int32   [G]      every replica's targets, replica 0 first
    logits   float32 [b, G]   user @ item_vectors[:, ids] + item_bias[ids] - log_q[ids]

The exported graph and :class:`~cloud_trainer.models.dot_product.ModelWeights` are unchanged: the
task only reads the served model's ``item_vectors`` kernel and bias.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from cloud_trainer.data.training_set import TrainingSet

log = logging.getLogger(__name__)
#: A logit that takes no part in the softmax (an accidental hit), finite so gradients stay finite.
MASKED = -1e9


@tf.custom_gradient
def summed_gradient(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """The identity, whose gradient is a dense tensor: a gathered variable's gradient is one slice
    per gathered row, and Adam squares each slice (Keras applies ``square`` to the slices), so an
    item gathered twice would get (g1^2 + g2^2) in place of (g1 + g2)^2, and splitting a batch over
    replicas, which changes the slices, would change the update. Summed first, it does not."""

    def gradient(dy: tf.Tensor | tf.IndexedSlices) -> tf.Tensor:
        return tf.convert_to_tensor(dy)

    return tf.identity(x), gradient


def log_sampling_probability(targets: np.ndarray, num_items: int) -> np.ndarray:
    """float32 [N]: log Q(j), the log of the share of examples whose target is item j. An item that
    is never a target is never a candidate either; it gets the value of one occurrence."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_items)
    return np.log(np.maximum(counts, 1) / max(len(targets), 1)).astype(np.float32)


def in_batch_softmax(user: tf.Tensor, targets: tf.Tensor, ids: tf.Tensor, item_vectors: tf.Tensor,
                     item_bias: tf.Tensor, log_q: tf.Tensor) -> tf.Tensor:
    """float32 [b]: each example's loss, ``-log softmax`` of its target over the candidates ``ids``
    with log-Q corrected logits and accidental hits removed. ``item_vectors`` [D, N], ``item_bias``
    and ``log_q`` [N]. The target's own logit is computed from ``targets``, so it need not be found
    among ``ids``: any copy of the target item among the candidates is an accidental hit."""
    if user.shape.rank != 2 or targets.shape.rank != 1 or ids.shape.rank != 1:
        raise ValueError(f"expected user [b, D], targets [b], ids [G]; got {user.shape}, {targets.shape}, {ids.shape}")
    candidates = tf.gather(item_vectors, ids, axis=1)  # [D, G]
    logits = tf.matmul(user, candidates) + tf.gather(item_bias - log_q, ids)[None, :]  # [b, G]
    logits = tf.where(targets[:, None] == ids[None, :], tf.constant(MASKED, logits.dtype), logits)
    positive = (tf.reduce_sum(user * tf.transpose(tf.gather(item_vectors, targets, axis=1)), axis=1)
                + tf.gather(item_bias - log_q, targets))  # [b]
    everything = tf.concat([positive[:, None], logits], axis=1)  # [b, 1 + G]
    return tf.reduce_logsumexp(everything, axis=1) - positive


def full_softmax(user: tf.Tensor, targets: tf.Tensor, item_vectors: tf.Tensor, item_bias: tf.Tensor) -> tf.Tensor:
    """float32 [b]: each example's ``-log softmax`` of its target over the whole catalogue."""
    logits = tf.matmul(user, item_vectors) + item_bias[None, :]  # [b, N]
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def training_batches(data: TrainingSet, batch_size: int, epochs: int, seed: int,
                     columns: tuple[np.ndarray, ...] | None = None) -> tuple[tf.data.Dataset, int]:
    """(every epoch's batches in one stream, batches per epoch) of ``((history_items, history_weights),
    target)``: int32 [B, L], float32 [B, L], int32 [B]; ``columns``: other history columns in place
    of those two (a sequence model's items, kinds and gaps).

    Epoch e is a permutation of the examples shuffled with seed ``seed + e`` and cut into full
    batches (the last ``len(data) % batch_size`` examples of each permutation wait for another
    epoch). Fixed by the seed alone, not by how often the stream is iterated, and with no short
    batch, so splitting a global batch over replicas never depends on its neighbours. Every worker
    builds the same stream and keeps its part of each batch (auto-shard policy DATA: the events are
    one file, so there are no files to share out).
    """
    examples = len(data)
    steps = examples // batch_size
    if steps == 0:
        raise ValueError(f"{examples} training examples make no batch of {batch_size}: lower --batch-size")
    pairs = tf.data.Dataset.from_tensor_slices((data.example_row, data.example_target))
    epoch = [pairs.shuffle(examples, seed=seed + e, reshuffle_each_iteration=False)
             .batch(batch_size, drop_remainder=True) for e in range(epochs)]
    stream = epoch[0]
    for more in epoch[1:]:
        stream = stream.concatenate(more)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    inputs = (data.hist_items, data.hist_weights) if columns is None else columns
    batches = (stream.map(lambda r, t: (tuple(tf.gather(c, r) for c in inputs), t),
                          num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE)
               .with_options(options))
    return batches, steps


class RetrievalTask:
    """The loss ``served`` (built by ``build_model``, without a repeat term) is trained with, on
    ``((history_items, history_weights), target)`` batches: :func:`in_batch_softmax` (or
    :func:`full_softmax`) per example, summed over the replica's batch and divided by the global
    batch, plus the layers' L2 penalties divided by the replicas; the strategy sums the replicas'
    gradients, so they are exactly those of the mean over the global batch."""

    def __init__(self, served: keras.Model, log_q: np.ndarray, full_softmax: bool = False) -> None:
        self.served, self.full = served, full_softmax
        self.user_tower = keras.Model(served.inputs, served.get_layer("user_projection").output, name="user_tower")
        self.items = served.get_layer("item_vectors")
        self.log_q = tf.constant(log_q, dtype=tf.float32)

    def loss(self, inputs: tuple[tf.Tensor, tf.Tensor], targets: tf.Tensor) -> tf.Tensor:
        """This replica's share of the global batch's loss (call in a replica context)."""
        user = self.user_tower(inputs, training=True)  # [b, D]
        targets = tf.cast(tf.reshape(targets, [-1]), tf.int32)
        ids = tf.distribute.get_replica_context().all_gather(targets, axis=0)  # [G]; one replica: targets
        kernel = summed_gradient(tf.convert_to_tensor(self.items.kernel))
        bias = summed_gradient(tf.convert_to_tensor(self.items.bias))
        if self.full:
            per_example = full_softmax(user, targets, kernel, bias)
        else:
            per_example = in_batch_softmax(user, targets, ids, kernel, bias, self.log_q)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss = tf.reduce_sum(per_example) / tf.cast(tf.shape(ids)[0], tf.float32)
        penalties = [tf.reduce_sum(penalty) for penalty in self.served.losses]  # the L2 terms, once in all
        return loss + tf.add_n(penalties) / replicas if penalties else loss


def fit(task: RetrievalTask, optimizer: keras.optimizers.Optimizer, batches: tf.data.Dataset, steps: int,
        epochs: int, strategy: tf.distribute.Strategy) -> list[float]:
    """Train ``task.served`` on ``batches`` (:func:`training_batches`): the mean loss of each epoch.

    A loop of its own rather than ``keras.Model.fit``: under MultiWorkerMirroredStrategy, Keras 3's
    ``fit`` fails before the first step (it reduces a peeked batch across workers; keras-team/keras
    issue 20585). Create ``task`` and ``optimizer`` under ``strategy.scope()``.
    """
    variables = task.served.trainable_variables

    def replica_step(batch: tuple[tuple[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
        inputs, targets = batch
        with tf.GradientTape() as tape:
            loss = task.loss(inputs, targets)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))  # sums replicas
        return loss

    @tf.function
    def step(iterator: tf.distribute.DistributedIterator) -> tf.Tensor:
        return strategy.reduce("SUM", strategy.run(replica_step, args=(next(iterator),)), axis=None)

    iterator = iter(strategy.experimental_distribute_dataset(batches))
    losses = []
    for epoch in range(epochs):
        started = time.monotonic()
        total = 0.0
        for _ in range(steps):
            total += float(step(iterator))
        losses.append(total / steps)
        log.info("epoch %d/%d: loss %.4f (%d steps, %.1f s)", epoch + 1, epochs, losses[-1], steps,
                 time.monotonic() - started)
    return losses

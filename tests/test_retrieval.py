"""The two-tower model's training task (cloud_trainer.models.retrieval) on cases small enough to
check by hand: the log-Q corrected in-batch softmax, the sampling probabilities, the dense
gradient Adam needs, and the batches every worker builds alike."""

from __future__ import annotations

import math

import numpy as np
import pytest


def test_log_sampling_probability_is_each_items_share_of_the_targets() -> None:
    from cloud_trainer.models.retrieval import log_sampling_probability

    # targets 0, 0, 1, 3 over 5 items: shares 2/4, 1/4, -, 1/4, -; never a target counts as once
    got = log_sampling_probability(np.array([0, 0, 1, 3]), 5)
    np.testing.assert_allclose(got, np.log([0.5, 0.25, 0.25, 0.25, 0.25]), rtol=1e-6)


def test_in_batch_softmax_on_a_hand_computed_case() -> None:
    import tensorflow as tf

    from cloud_trainer.models.retrieval import in_batch_softmax

    # D = 1, two items: vectors 1.0 and 0.5, biases 0.1 and -0.1, sampled with Q = 0.5 and 0.25.
    # A corrected logit is u * v + b - log Q: the item terms are c0 = 0.1 - ln 0.5 = 0.793147 and
    # c1 = -0.1 - ln 0.25 = 1.286294. The global batch's targets are 0, 1, 0 (the third example
    # on another replica); this replica holds the first two, users 1.0 and 2.0.
    user = tf.constant([[1.0], [2.0]])
    targets = tf.constant([0, 1])
    ids = tf.constant([0, 1, 0])
    vectors, bias = tf.constant([[1.0, 0.5]]), tf.constant([0.1, -0.1])
    log_q = tf.constant([math.log(0.5), math.log(0.25)])
    got = in_batch_softmax(user, targets, ids, vectors, bias, log_q).numpy()
    c0, c1 = 0.1 - math.log(0.5), -0.1 - math.log(0.25)
    # row 0 (target 0): both copies of item 0 are accidental hits; against item 1 alone
    positive, negative = 1.0 * 1.0 + c0, 1.0 * 0.5 + c1
    row0 = math.log(math.exp(positive) + math.exp(negative)) - positive  # 0.689727
    # row 1 (target 1): item 0 twice among the candidates, so twice in the denominator
    positive, negative = 2.0 * 0.5 + c1, 2.0 * 1.0 + c0
    row1 = math.log(math.exp(positive) + 2 * math.exp(negative)) - positive  # 1.463282
    np.testing.assert_allclose(got, [row0, row1], rtol=1e-5)


def test_in_batch_softmax_says_which_shape_is_wrong() -> None:
    import tensorflow as tf

    from cloud_trainer.models.retrieval import in_batch_softmax

    with pytest.raises(ValueError, match=r"user \[b, D\].*\(2,\)"):
        in_batch_softmax(tf.zeros([2]), tf.zeros([2], tf.int32), tf.zeros([2], tf.int32), tf.zeros([1, 2]),
                         tf.zeros([2]), tf.zeros([2]))


def test_full_softmax_is_the_cross_entropy_over_every_item() -> None:
    import tensorflow as tf

    from cloud_trainer.models.retrieval import full_softmax

    # user 1.0, items 1.0, 0.5, 0.0 without bias: -log(e^1 / (e^1 + e^0.5 + e^0)) for target 0
    got = full_softmax(tf.constant([[1.0]]), tf.constant([0]), tf.constant([[1.0, 0.5, 0.0]]), tf.zeros([3]))
    expected = math.log(math.e + math.exp(0.5) + 1.0) - 1.0
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-6)


def test_a_gathered_rows_gradient_is_summed_before_the_optimizer_sees_it() -> None:
    import tensorflow as tf

    from cloud_trainer.models.retrieval import summed_gradient

    x = tf.Variable([1.0, 2.0])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(tf.gather(summed_gradient(tf.convert_to_tensor(x)), [0, 0, 1]))
    gradient = tape.gradient(y, x)
    # without summed_gradient: IndexedSlices with values [1, 1, 1] at rows 0, 0, 1; Adam would
    # square each slice and see 1 + 1 for row 0 in place of (1 + 1)^2
    assert not isinstance(gradient, tf.IndexedSlices)
    np.testing.assert_array_equal(gradient.numpy(), [2.0, 1.0])


def test_every_epoch_is_a_seeded_permutation_in_full_batches() -> None:
    from cloud_trainer.data.training_set import TrainingSet
    from cloud_trainer.models.retrieval import training_batches

    examples = 10  # batches of 4: 2 an epoch, 2 examples of each permutation left for another epoch
    data = TrainingSet(hist_items=np.arange(examples * 3, dtype=np.int32).reshape(examples, 3),
                       hist_weights=np.ones((examples, 3), np.float32),
                       example_row=np.arange(examples, dtype=np.int32),
                       example_target=np.arange(100, 100 + examples, dtype=np.int32),
                       example_time=np.zeros(examples))

    def targets() -> list[list[int]]:
        batches, steps = training_batches(data, batch_size=4, epochs=3, seed=7)
        assert steps == 2
        found = []
        for (items, weights), target in batches:
            assert items.shape == (4, 3) and weights.shape == (4, 3) and target.shape == (4,)
            np.testing.assert_array_equal(items.numpy()[:, 0], (target.numpy() - 100) * 3)  # row and target agree
            found.append(sorted(int(t) for t in target))
        return found

    first = targets()
    assert len(first) == 6  # 3 epochs of 2 batches
    for epoch in range(3):
        seen = first[2 * epoch] + first[2 * epoch + 1]
        assert len(set(seen)) == 8  # no example twice in an epoch
    assert first[0:2] != first[2:4]  # each epoch its own order
    assert targets() == first  # fixed by the seed: every worker builds the same stream


def test_no_batch_at_all_is_an_error_that_names_the_fix() -> None:
    from cloud_trainer.data.training_set import TrainingSet
    from cloud_trainer.models.retrieval import training_batches

    data = TrainingSet(np.zeros((3, 2), np.int32), np.zeros((3, 2), np.float32), np.arange(3, dtype=np.int32),
                       np.arange(3, dtype=np.int32), np.zeros(3))
    with pytest.raises(ValueError, match="--batch-size"):
        training_batches(data, batch_size=4, epochs=1, seed=0)

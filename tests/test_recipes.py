"""Recipe settings every method shares: the optimizer by name, the schedules."""

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import pytest
import tensorflow as tf

from training.recipes import Recipe, recipe_for
from zoo.optimizers import AdamCoupledDecay


def test_the_optimizer_is_chosen_by_name_with_coupled_decay_except_excluded_variables():
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'"):
        Recipe(epochs=1, batch_size=8, optimizer_name="rmsprop")
    optimizer = Recipe(epochs=1, batch_size=8, optimizer_name="adam", learning_rate=0.5, weight_decay=0.1).optimizer()
    assert isinstance(optimizer, AdamCoupledDecay)
    decayed, excluded = tf.Variable([2.0]), tf.Variable([2.0])
    optimizer.exclude_from_weight_decay(var_list=[excluded])
    optimizer.apply_gradients([(tf.constant([0.0]), decayed), (tf.constant([0.0]), excluded)])
    assert decayed.numpy()[0] < 2.0 and excluded.numpy()[0] == 2.0  # Adam moves only a non-zero gradient


def test_cbcn_ranks_under_the_others_cosine_schedule_on_request():
    """The reference step schedule ends its fine-tune at a constant 1e-3 while the other
    recipes anneal to 0: ``schedule="cosine"`` gives CBCN their schedule, centre-loss stage included."""
    step = recipe_for("cbcn_resnet20", 10, 64)
    cosine = recipe_for("cbcn_resnet20", 10, 64, schedule="cosine")
    baseline = recipe_for("bnn_resnet20", 10, 64)
    assert step.schedule == "step" and step.learning_rate_at(9) == pytest.approx(1e-3)
    assert [cosine.learning_rate_at(e) for e in range(10)] == [baseline.learning_rate_at(e) for e in range(10)]
    assert cosine.centre_loss_epochs == step.centre_loss_epochs == 1
    with pytest.raises(ValueError, match="Recipe has no 'step' schedule; it has: cosine"):
        recipe_for("bnn_resnet20", 10, 64, schedule="step")

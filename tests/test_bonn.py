"""BONN (docs/methods/bonn.md): kernel and feature losses, asynchronous backward, trainer, recipe, export."""

import numpy as np
import pytest
import tensorflow as tf
import zoo
from helpers import random_pixels, randomize_batch_norms, relative_error
from larq_compute_engine.tflite.python.interpreter import Interpreter
from training.recipes.bonn import BONNRecipe, decay_free_variables
from zoo.distillation import Distiller
from zoo.export import convert_lce, op_histogram, to_inference
from zoo.schemes import bonn

LAM, NU = 0.3, 0.7  # not the defaults, so that a mixed-up factor shows


def closed_form_kernel_loss(k, w, mu, sigma, lam=LAM, nu=NU):
    """Value and gradients of §2.5, written out in NumPy (float64)."""
    q = w * k
    k_hat = np.where(q >= 0, 1.0, -1.0)
    s = np.where(k >= 0, 1.0, -1.0)
    p = k[..., 0].size  # C_in·kh·kw elements per output channel
    distance = (k - s * mu) ** 2 / sigma**2
    value = (lam / 2 * np.sum((k_hat - q) ** 2) + lam * nu / 2 * np.sum(distance)
             + lam * nu / 2 * np.sum(np.mean(distance + np.log(sigma**2), axis=(0, 1, 2))))
    d_k = lam * (w * (q - k_hat) + nu * (k - s * mu) / sigma**2)
    d_w = lam * np.sum((q - k_hat) * k, axis=(2, 3), keepdims=True)
    # the spec's case split: +μ for k ≥ 0, −μ for k < 0
    d_mu = lam * nu / p * np.sum(np.where(k >= 0, mu - k, mu + k) / sigma**2, axis=(0, 1, 2))
    d_sigma = lam * nu / p * np.sum(-np.where(k >= 0, k - mu, k + mu) ** 2 / sigma**3 + 1 / sigma, axis=(0, 1, 2))
    return value, d_k, d_w, d_mu, d_sigma


def test_kernel_loss_and_its_gradients_match_the_closed_form():
    rng = np.random.default_rng(0)
    k = rng.normal(0, 0.3, (3, 3, 2, 4))
    w = rng.uniform(0.5, 4.0, (3, 3, 1, 1))
    mu, sigma = rng.uniform(0.1, 0.5, 4), rng.uniform(0.1, 0.4, 4)
    variables = [tf.Variable(v.astype(np.float32)) for v in (k, w, mu, sigma)]
    with tf.GradientTape() as tape:
        loss = bonn.bayesian_kernel_loss(*variables, kernel_loss_weight=LAM, nu=NU)
    grads = tape.gradient(loss, variables)
    value, *expected = closed_form_kernel_loss(k, w, mu, sigma)
    assert loss.numpy() == pytest.approx(value, rel=1e-5)
    for name, got, want in zip(("k", "w", "mu", "sigma"), grads, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7, err_msg=name)


def test_the_kernel_loss_is_minimised_at_the_mixture_modes():
    mu, sigma = 0.4, 0.15
    one = np.ones((1, 1, 1, 1), np.float32)

    def loss(k):
        return float(bonn.bayesian_kernel_loss(k * one, one / mu, [mu], [sigma], LAM, NU))

    grid = np.round(np.linspace(-1.0, 1.0, 201), 6)
    values = np.array([loss(k) for k in grid])
    minima = grid[values <= values.min() + 1e-9]
    np.testing.assert_allclose(sorted(minima), [-mu, mu], atol=1e-6)  # both modes, nothing else

    # a whole layer sitting on the modes (one μ for all channels, w = 1/μ): zero kernel gradient,
    # and any nudge that keeps the signs costs loss
    rng = np.random.default_rng(1)
    k = tf.Variable(np.where(rng.normal(size=(3, 3, 4, 6)) >= 0, mu, -mu).astype(np.float32))
    args = (np.full((3, 3, 1, 1), 1 / mu, np.float32), np.full(6, mu, np.float32), np.full(6, sigma, np.float32))
    with tf.GradientTape() as tape:
        at_modes = bonn.bayesian_kernel_loss(k, *args, LAM, NU)
    assert np.abs(tape.gradient(at_modes, k).numpy()).max() < 1e-5
    for seed in range(5):
        nudge = np.random.default_rng(seed).uniform(-0.1, 0.1, k.shape).astype(np.float32)
        assert bonn.bayesian_kernel_loss(k + nudge, *args, LAM, NU).numpy() > at_modes.numpy()


def built_layer(cin=3, filters=4, seed=0):
    layer = bonn.BONNConv2D(filters, 3, kernel_loss_weight=LAM, nu=NU, name="conv")
    layer.build((None, 6, 6, cin))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(0, 0.3, layer.kernel.shape).astype(np.float32))
    return layer, rng


def test_priors_start_from_the_kernel_and_the_layer_adds_its_kernel_loss():
    layer, _ = built_layer()
    layer.initialize_priors()
    magnitudes = np.abs(layer.kernel.numpy())
    np.testing.assert_allclose(layer.w.numpy(), 1 / magnitudes.mean(), rtol=1e-5)
    np.testing.assert_allclose(layer.mu.numpy(), magnitudes.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(layer.sigma().numpy(), magnitudes.std(axis=(0, 1, 2)), rtol=1e-4)
    assert len(layer.losses) == 1
    value, *_ = closed_form_kernel_loss(layer.kernel.numpy(), layer.modulation().numpy(), layer.mu.numpy(),
                                        layer.sigma().numpy())
    assert layer.losses[0].numpy() == pytest.approx(value, rel=1e-5)
    assert bonn.BONNConv2D.from_config(layer.get_config()).get_config() == layer.get_config()


def reference_forward(kernel, w, x):
    """§2.4 in NumPy: (1/w̄)·conv(sign(x), sign(w∘k)), +1 padding of the binarized input."""
    kh, kw, _, _ = kernel.shape
    binary_k = np.where(w.reshape(kh, kw, 1, 1) * kernel >= 0, 1.0, -1.0)
    binary_x = np.pad(np.where(x >= 0, 1.0, -1.0), [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", binary_x[:, i:i + kh, j:j + kw, :], binary_k)
    return out / w.mean()


def test_forward_and_asynchronous_task_backward_follow_the_spec():
    layer, rng = built_layer()
    w = rng.uniform(0.5, 6.0, 9).astype(np.float32)
    w[4] = -1.5  # a negative modulation flips those signs of k̂; some |w∘k| > 1 are clipped
    layer.w.assign(w)
    x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    upstream = tf.constant(rng.normal(size=(2, 6, 6, 4)), tf.float32)
    with tf.GradientTape() as tape:
        out = layer(x)
        task = tf.reduce_sum(out * upstream)
    d_k, d_w, d_mu, d_rho = tape.gradient(task, [layer.kernel, layer.w, layer.mu, layer.rho])
    np.testing.assert_allclose(out.numpy(), reference_forward(layer.kernel.numpy(), w, x), rtol=1e-5, atol=1e-4)
    assert d_mu is None and d_rho is None  # the prior enters only through the kernel loss

    k, q = layer.kernel.numpy(), layer.modulation().numpy() * layer.kernel.numpy()
    binary = tf.constant(np.where(q >= 0, 1.0, -1.0), tf.float32)
    padded = tf.pad(tf.where(x >= 0, 1.0, -1.0), [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0)
    with tf.GradientTape() as tape:
        tape.watch(binary)
        same_task = tf.reduce_sum(tf.nn.conv2d(padded, binary, 1, "VALID") / w.mean() * upstream)
    d_binary = tape.gradient(same_task, binary).numpy()  # ∂L_S/∂k̂
    passed = d_binary * (np.abs(q) <= 1.0)
    assert 0 < np.mean(np.abs(q) <= 1.0) < 1  # the indicator matters in this test
    np.testing.assert_allclose(d_k.numpy(), passed * layer.modulation().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_w.numpy(), np.sum(passed * k, axis=(2, 3)).ravel(), rtol=1e-5, atol=1e-5)


def test_feature_loss_and_centre_update_follow_the_centre_loss():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([0, 1, 1, 2])
    centres = rng.normal(size=(3, 3)).astype(np.float32)
    log_var = tf.Variable(rng.normal(0, 0.5, (3, 3)).astype(np.float32))
    features = tf.constant(f)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = bonn.bayesian_feature_loss(features, labels, centres, log_var, feature_loss_weight=0.2)
    d_f, d_log_var = tape.gradient(loss, [features, log_var])
    sq = (f - centres[labels]) ** 2
    lv = log_var.numpy()[labels]
    assert loss.numpy() == pytest.approx(0.1 * np.mean(np.sum(sq + sq * np.exp(-lv) + lv, axis=1)), rel=1e-5)
    np.testing.assert_allclose(d_f.numpy(), 0.1 * 2 * (f - centres[labels]) * (1 + np.exp(-lv)) / 4, rtol=1e-5)
    expected = np.zeros((3, 3), np.float32)
    np.add.at(expected, labels, 0.1 * (1 - sq * np.exp(-lv)) / 4)
    np.testing.assert_allclose(tf.convert_to_tensor(d_log_var).numpy(), expected, rtol=1e-4, atol=1e-7)

    # the rule by hand: class 0 has two samples, class 1 one, class 2 none
    c = tf.Variable([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    bonn.centre_update(c, tf.constant([[2.0, 0.0], [4.0, 0.0], [1.0, 3.0]]), tf.constant([0, 0, 1]), rate=0.5)
    np.testing.assert_allclose(c.numpy(), [[1.0, 0.0], [1.0, 1.5], [5.0, 5.0]])


def trained_looking_bonn(name, seed=5):
    model = zoo.load(name, weights=None, input_shape=(28, 28, 1), classifier_activation=None)
    randomize_batch_norms(model)
    rng = np.random.default_rng(seed)
    for layer in bonn.bonn_layers(model):
        w = rng.uniform(0.2, 3.0, layer.w.shape)
        w[rng.integers(len(w))] *= -1  # signs of k̂ differ from those of k
        layer.w.assign(w.astype(np.float32))
    return model


@pytest.mark.parametrize("name", ["bonn_resnet20", "bonn_vgg_small"])
def test_export_is_plain_binary_convs_with_the_modulated_signs(name):
    model = trained_looking_bonn(name)
    inference = to_inference(model)
    x = random_pixels((28, 28, 1), batch=8)
    assert relative_error(model(x).numpy(), inference(x).numpy()) <= 1e-4
    assert "BONNConv2D" not in {type(layer).__name__ for layer in inference.layers}
    assert not any(part in w.name for w in inference.weights for part in ("/w:", "/mu:", "/rho:"))
    layer = bonn.bonn_layers(model)[0]
    exported = inference.get_layer(layer.name).get_weights()[0]
    np.testing.assert_array_equal(exported, np.where(layer.modulation().numpy() * layer.kernel.numpy() >= 0, 1, -1))


def test_real_steps_lower_the_loss_report_every_term_and_run_in_lce(fashion_mnist_data_dir):
    """3 × 8 real Fashion-MNIST steps with the BONN recipe, then the briefly trained model
    (realistic BN margins, unlike random weights) through LCE."""
    recipe = BONNRecipe.for_model("bonn_resnet20", epochs=3, batch_size=64)
    data = zoo.load_dataset("fashion_mnist", "train", batch_size=64, take=512, data_dir=fashion_mnist_data_dir, seed=0)
    model = zoo.load("bonn_resnet20", weights=None, input_shape=(28, 28, 1))
    priors = [v.numpy().copy() for v in bonn.bonn_layers(model)[0].weights]
    trainer = recipe.wrap(model)
    assert isinstance(trainer, bonn.BONNTrainer) and trainer.student is model
    recipe.compile(trainer)
    history = trainer.fit(data, epochs=recipe.epochs, callbacks=recipe.callbacks("bonn_resnet20"), verbose=0).history

    for term in ("loss", "kernel_loss", "feature_loss", "total_loss", "accuracy"):
        assert len(history[term]) == 3 and np.all(np.isfinite(history[term])), term
    assert history["total_loss"][-1] < history["total_loss"][0]
    assert history["loss"][-1] < history["loss"][0]  # the task loss alone too
    assert min(history["kernel_loss"]) > 0 and min(history["feature_loss"]) > 0
    total = np.array(history["loss"]) + history["kernel_loss"] + np.array(history["feature_loss"])
    np.testing.assert_allclose(history["total_loss"], total, rtol=1e-5)
    assert history["lr"][-1] < history["lr"][0]
    for before, after in zip(priors, bonn.bonn_layers(model)[0].weights):  # kernel, w, mu, rho all learn
        assert not np.allclose(before, after.numpy()), after.name
    assert np.abs(trainer.centres.numpy()).max() > 0 and np.abs(trainer.log_variances.numpy()).max() > 0

    flatbuffer = convert_lce(model)
    ops = op_histogram(flatbuffer)
    assert ops["LceBconv2d"] == 18 and ops.get("CONV_2D") == 1
    images, _ = next(iter(zoo.load_dataset("fashion_mnist", "test", batch_size=128, data_dir=fashion_mnist_data_dir)))
    expected = to_inference(model).predict(images.numpy(), verbose=0)
    actual = Interpreter(flatbuffer, num_threads=2).predict(images.numpy())
    print("max |probability difference| LCE vs Keras:", np.abs(expected - actual).max(),
          "predicted classes:", np.bincount(expected.argmax(1), minlength=10))
    assert np.mean(expected.argmax(1) == actual.argmax(1)) >= 0.99


def test_weights_round_trip_through_hdf5(tmp_path):
    model = trained_looking_bonn("bonn_resnet20")
    rng = np.random.default_rng(7)
    for layer in bonn.bonn_layers(model):
        layer.mu.assign(rng.uniform(0.1, 1.0, layer.mu.shape).astype(np.float32))
        layer.rho.assign(rng.normal(size=layer.rho.shape).astype(np.float32))
    model.save_weights(tmp_path / "bonn.h5")
    loaded = zoo.load("bonn_resnet20", weights=str(tmp_path / "bonn.h5"), input_shape=(28, 28, 1),
                      classifier_activation=None)
    for original, restored in zip(bonn.bonn_layers(model), bonn.bonn_layers(loaded)):
        assert [w.name for w in original.weights] == [w.name for w in restored.weights]
        for a, b in zip(original.weights, restored.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = random_pixels((28, 28, 1))
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())
    assert loaded.losses[0].numpy() == model.losses[0].numpy()


def test_recipe_settings_wrapping_and_weight_decay():
    cifar, imagenet = BONNRecipe.for_model("bonn_resnet20"), BONNRecipe.for_model("bonn_resnet18")
    assert (cifar.epochs, cifar.batch_size, imagenet.epochs, imagenet.batch_size) == (200, 256, 70, 256)
    assert (cifar.learning_rate, cifar.momentum, cifar.weight_decay) == (0.1, 0.9, 1e-4)
    assert cifar.feature_loss_weight == 1e-3 and cifar.centre_rate == 0.5
    assert cifar.learning_rate_at(100) == pytest.approx(0.05)

    baseline = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1))
    assert cifar.wrap(baseline) is baseline  # a baseline gets the optimizer and schedule only
    teacher = zoo.load("fp_resnet20", weights=None, input_shape=(28, 28, 1))
    assert isinstance(cifar.wrap(zoo.load("bonn_resnet20", weights=None, input_shape=(28, 28, 1)), teacher),
                      Distiller)  # distillation, as every recipe gives with a teacher

    trainer = cifar.wrap(zoo.load("bonn_resnet20", weights=None, input_shape=(28, 28, 1)))
    cifar.compile(trainer)
    excluded = {id(v) for v in decay_free_variables(trainer)}
    assert len(excluded) == 18 * 4 + 1  # kernel, w, mu, rho of each BONN conv + the feature log-variances
    variables = trainer.trainable_variables
    before = [v.numpy().copy() for v in variables]
    trainer.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for v, old in zip(variables, before):
        if id(v) in excluded:
            np.testing.assert_array_equal(v.numpy(), old)
        else:  # coupled decay, lr 0.1, wd 1e-4 (BN γ/β, stem, dense)
            np.testing.assert_allclose(v.numpy(), old * (1 - 0.1 * 1e-4), rtol=1e-6)


def test_the_recipe_sets_its_kernel_loss_weight_on_the_bonn_layers_for_the_run():
    model = zoo.load("bonn_resnet20", weights=None, input_shape=(28, 28, 1))
    book = float(tf.add_n(model.losses))
    BONNRecipe.for_model("bonn_resnet20", kernel_loss_weight=1e-5).wrap(model)
    assert {layer.kernel_loss_weight for layer in bonn.bonn_layers(model)} == {1e-5}
    assert float(tf.add_n(model.losses)) == pytest.approx(book / 10, rel=1e-4)  # λ scales every term
    BONNRecipe.for_model("bonn_resnet20").wrap(model)  # no λ of its own: the layers keep theirs
    assert {layer.kernel_loss_weight for layer in bonn.bonn_layers(model)} == {1e-5}
    with pytest.raises(ValueError, match="kernel_loss_weight must be a non-negative number, got -1e-05."):
        BONNRecipe.for_model("bonn_resnet20", kernel_loss_weight=-1e-5)
    with pytest.raises(ValueError, match="bnn_resnet20 has no BONN layers for λ to weigh"):
        BONNRecipe.for_model("bnn_resnet20", kernel_loss_weight=1e-5).wrap(
            zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1)))


def test_trainer_needs_a_classifier():
    with pytest.raises(ValueError, match="'predictions'"):
        bonn.BONNTrainer(zoo.load("bonn_resnet20", weights=None, include_top=False, pooling="avg"))


def test_wide_resnets_have_the_reference_size_and_the_paper_numbers():
    assert abs(zoo.load("bonn_wrn40", weights=None).count_params() - 8.9e6) / 8.9e6 < 0.01  # WRN-40-4, Zagoruyko
    narrow = zoo.load("bonn_wrn22", weights=None, width=1)
    assert [narrow.get_layer(f"stage{i}_block1_conv1").filters for i in (1, 2, 3)] == [16, 32, 64]
    assert len(bonn.bonn_layers(narrow)) == 18
    with pytest.raises(ValueError, match="width"):
        zoo.load("bonn_wrn22", weights=None, width=0)
    assert "bnn_wrn22" not in zoo.list_models()
    details = zoo.info("bonn_wrn22", input_shape=(28, 28, 1))
    assert [(r["dataset"], r["top1"]) for r in details["reported"]] == [("cifar10", 87.34), ("cifar100", 60.91)]
    assert details["binary_convs"] == 18

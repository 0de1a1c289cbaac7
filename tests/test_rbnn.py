"""RBNN (docs/methods/rbnn.md): rotations, the training-aware sign, gradient flow, export, training."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import zoo
from helpers import random_pixels, randomize_batch_norms, relative_error
from larq_compute_engine.tflite.python.interpreter import Interpreter
from training.recipes.rbnn import RBNNRecipe
from zoo.export import convert_lce, op_histogram, to_inference
from zoo.optimizers import SGDCoupledDecay
from zoo.schemes import rbnn


def built_layer(cin=32, filters=24, kernel=3, seed=0):
    layer = rbnn.RBNNConv2D(filters, kernel, name="conv")
    layer.build((None, 8, 8, cin))
    layer.kernel.assign(np.random.default_rng(seed).normal(size=layer.kernel.shape).astype(np.float32))
    return layer


@pytest.mark.parametrize("n, expected", [(144, (12, 12)), (288, (16, 18)), (576, (24, 24)), (1152, (32, 36)),
                                         (2304, (48, 48)), (4608, (64, 72)), (64, (8, 8)), (128, (8, 16))])
def test_rotation_shapes_follow_the_spec_table(n, expected):
    assert rbnn.rotation_shape(n) == expected


def test_rotations_stay_orthogonal_and_the_objective_does_not_decrease():
    layer = built_layer()
    x = layer.standardized_weights().numpy().astype(np.float64)
    r1, r2 = layer.r1.numpy().astype(np.float64), layer.r2.numpy().astype(np.float64)
    before = rbnn.rotation_objective(x, r1, r2)
    for _ in range(3):
        new_r1, new_r2 = rbnn.fit_rotations(x, r1, r2, sweeps=1)
        assert rbnn.rotation_objective(x, new_r1, new_r2) >= rbnn.rotation_objective(x, r1, r2) - 1e-9
        r1, r2 = new_r1, new_r2
    assert rbnn.rotation_objective(x, r1, r2) > before

    model = keras.Sequential([keras.Input((8, 8, 32)), layer])
    flips = rbnn.update_rotations(model)
    for r in (layer.r1.numpy(), layer.r2.numpy()):
        assert np.abs(r.T @ r - np.eye(len(r))).max() < 1e-5
    assert 0.3 < flips < 0.7  # the paper: rotation flips about half the signs


def test_sign_schedule_values():
    first, last = rbnn.sign_schedule(0, 1000), rbnn.sign_schedule(999, 1000)
    assert first["t_weights"] == pytest.approx(0.01) and first["k_weights"] == pytest.approx(100)
    assert first["t_activations"] == 1.0 and first["k_activations"] == 1.0
    assert last["t_weights"] == pytest.approx(9.93, rel=1e-3) and last["k_weights"] == 1.0
    # the spec table: at epoch 667 the weight F' peak √2·t is 1.417
    assert math.sqrt(2) * rbnn.sign_schedule(667, 1000)["t_weights"] == pytest.approx(1.417, abs=5e-4)


@pytest.mark.parametrize("epoch", [0, 500, 667, 999])
def test_sign_backward_matches_its_formula(epoch):
    values = rbnn.sign_schedule(epoch, 1000)
    x = tf.constant(np.linspace(-3, 3, 601), tf.float32)
    for t, k in ((values["t_weights"], values["k_weights"]), (values["t_activations"], values["k_activations"])):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = rbnn.rbnn_sign(x, tf.constant(t, tf.float32), tf.constant(k, tf.float32))
        grad = tape.gradient(y, x).numpy()
        expected = k * np.maximum(0.0, math.sqrt(2) * t - t * t * np.abs(x.numpy()))
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y.numpy(), np.where(x.numpy() >= 0, 1.0, -1.0))
        # F' is the derivative of F: finite differences of the closed form of F agree.
        xs = np.array([-0.3, 0.05, 0.2]) / max(t, 1e-2)
        f = lambda v: k * (-np.sign(v) * t * t * v * v / 2 + math.sqrt(2) * t * v)  # noqa: E731
        numeric = (f(xs + 1e-4) - f(xs - 1e-4)) / 2e-4
        np.testing.assert_allclose(k * np.maximum(0, math.sqrt(2) * t - t * t * np.abs(xs)), numeric, rtol=1e-3)


def test_the_schedule_callback_sets_every_layer():
    model = zoo.load("rbnn_resnet20", weights=None, input_shape=(28, 28, 1))
    callback = rbnn.SignSchedule(epochs=10)
    callback.set_model(model)
    callback.on_epoch_begin(5)
    expected = rbnn.sign_schedule(5, 10)
    layers = rbnn.rbnn_layers(model)
    assert len(layers) == 18
    for layer in layers:
        assert layer.kernel_quantizer.t.numpy() == pytest.approx(expected["t_weights"])
        assert layer.input_quantizer.t.numpy() == pytest.approx(expected["t_activations"])


def test_latent_weights_start_with_zero_task_gradient_and_decay_unlocks_theta():
    layer = built_layer()
    assert layer.theta.dtype == tf.float32 and np.all(np.sin(layer.theta.numpy()) == 1.0)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 8, 8, 32)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * tf.random.normal((2, 8, 8, 24), seed=1))
    kernel_grad, theta_grad = tape.gradient(loss, [layer.kernel, layer.theta])
    assert np.all(kernel_grad.numpy() == 0.0)  # ∂w̃/∂ŵ = (1 − |sin θ|) = 0 at θ = π/2
    assert np.abs(theta_grad.numpy()).max() < 1e-3

    # weight decay on θ (and on every other variable) pulls it off π/2
    optimizer = SGDCoupledDecay(learning_rate=0.1, momentum=0.0, coupled_decay=1e-4)
    theta = layer.theta.numpy().copy()
    optimizer.apply_gradients([(tf.zeros_like(layer.theta), layer.theta)])
    np.testing.assert_allclose(layer.theta.numpy(), theta * (1 - 0.1 * 1e-4), rtol=1e-6)

    layer.theta.assign(np.full(24, 1.2, np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * tf.random.normal((2, 8, 8, 24), seed=1))
    assert np.abs(tape.gradient(loss, layer.kernel).numpy()).max() > 0


def trained_looking_rbnn(name, shape=(28, 28, 1)):
    model = zoo.load(name, weights=None, input_shape=shape, classifier_activation=None)
    randomize_batch_norms(model)
    rng = np.random.default_rng(5)
    rbnn.update_rotations(model)
    for layer in rbnn.rbnn_layers(model):
        layer.theta.assign(rng.uniform(0, np.pi, layer.theta.shape).astype(np.float32))
        layer.alpha.assign(rng.normal(0, 1, layer.alpha.shape).astype(np.float32))  # negative ones too
    return model


@pytest.mark.parametrize("name", ["rbnn_resnet20", "rbnn_resnet20_bireal", "rbnn_vgg_small"])
def test_export_is_plain_binary_convs_with_centring_and_matches(name):
    model = trained_looking_rbnn(name)
    inference = to_inference(model)
    x = random_pixels((28, 28, 1), batch=8)
    assert relative_error(model(x).numpy(), inference(x).numpy()) <= 1e-4
    kinds = {type(layer).__name__ for layer in inference.layers}
    assert "RBNNConv2D" not in kinds and "CenterActivations" in kinds
    assert not any("r1" in w.name or "theta" in w.name for w in inference.weights)


def test_lce_runs_the_exported_rbnn(fashion_mnist_data_dir):
    model = trained_looking_rbnn("rbnn_resnet20")
    flatbuffer = convert_lce(model)
    ops = op_histogram(flatbuffer)
    assert ops["LceBconv2d"] == 18 and ops.get("CONV_2D") == 1
    assert ops["MEAN"] == 18 + 1  # one centring per binary conv + the global pool
    images, _ = next(iter(zoo.load_dataset("fashion_mnist", "test", batch_size=128, data_dir=fashion_mnist_data_dir)))
    expected = to_inference(model).predict(images.numpy(), verbose=0)
    actual = Interpreter(flatbuffer, num_threads=2).predict(images.numpy())
    print("max |logit difference| LCE vs Keras:", np.abs(expected - actual).max())
    assert np.mean(expected.argmax(1) == actual.argmax(1)) >= 0.99


def test_real_training_steps_lower_the_loss_with_the_callbacks(fashion_mnist_data_dir):
    recipe = RBNNRecipe.for_model("rbnn_resnet20", epochs=3, batch_size=64)
    assert recipe.warmup_epochs == 0 and recipe.learning_rate_at(0) == pytest.approx(0.1)
    data = zoo.load_dataset("fashion_mnist", "train", batch_size=64, take=640, data_dir=fashion_mnist_data_dir, seed=0)
    model = zoo.load("rbnn_resnet20", weights=None, input_shape=(28, 28, 1))
    r1_before = rbnn.rbnn_layers(model)[0].r1.numpy().copy()
    model.compile(recipe.optimizer(), "sparse_categorical_crossentropy")
    history = model.fit(data, epochs=recipe.epochs, callbacks=recipe.callbacks("rbnn_resnet20"), verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert all(0.0 < f < 1.0 for f in history.history["rbnn_sign_flips"])
    assert not np.allclose(rbnn.rbnn_layers(model)[0].r1.numpy(), r1_before)
    assert history.history["lr"][-1] < history.history["lr"][0]


def test_recipe_learning_rate_follows_the_paper():
    recipe = RBNNRecipe.for_model("rbnn_resnet20")
    assert (recipe.epochs, recipe.batch_size, recipe.warmup_epochs) == (1000, 256, 5)
    assert [round(recipe.learning_rate_at(e), 4) for e in range(5)] == [0.02, 0.04, 0.06, 0.08, 0.1]
    assert recipe.learning_rate_at(999) < 1e-6
    # a shortened run keeps the warm-up's share of the 1000 epochs (it used to keep 5 of 15)
    assert [RBNNRecipe.for_model("rbnn_resnet20", epochs=e).warmup_epochs for e in (3, 15, 200, 1000)] == [0, 0, 1, 5]
    imagenet = RBNNRecipe.for_model("rbnn_resnet18")
    assert (imagenet.epochs, imagenet.batch_size, imagenet.warmup_epochs) == (150, 512, 0)
    assert imagenet.learning_rate_at(0) == pytest.approx(0.1)
    assert imagenet.learning_rate_at(75) == pytest.approx(0.05)


def test_the_recipe_starts_theta_uniformly_only_when_asked_and_only_in_rbnn_layers():
    model = zoo.load("rbnn_resnet20", weights=None, input_shape=(28, 28, 1))
    RBNNRecipe.for_model("rbnn_resnet20").wrap(model)
    assert all(np.all(layer.theta.numpy() == np.float32(math.pi / 2)) for layer in rbnn.rbnn_layers(model))
    keras.utils.set_random_seed(3)
    RBNNRecipe.for_model("rbnn_resnet20", theta_init="uniform").wrap(model)
    thetas = np.concatenate([layer.theta.numpy() for layer in rbnn.rbnn_layers(model)])
    assert 0 < thetas.min() and thetas.max() < math.pi / 2 and abs(thetas.mean() - math.pi / 4) < 0.05
    keras.utils.set_random_seed(3)  # the run's seed fixes the draw
    RBNNRecipe.for_model("rbnn_resnet20", theta_init="uniform").wrap(model)
    np.testing.assert_array_equal(np.concatenate([layer.theta.numpy() for layer in rbnn.rbnn_layers(model)]), thetas)
    RBNNRecipe.for_model("rbnn_resnet20", theta_init="half_pi").wrap(model)
    assert all(np.all(layer.theta.numpy() == np.float32(math.pi / 2)) for layer in rbnn.rbnn_layers(model))
    with pytest.raises(ValueError, match="bnn_resnet20 has no RBNN layers for θ to start in"):
        RBNNRecipe.for_model("bnn_resnet20", theta_init="uniform").wrap(zoo.load("bnn_resnet20", weights=None))
    with pytest.raises(ValueError, match="Unknown theta_init 'zero'"):
        RBNNRecipe.for_model("rbnn_resnet20", theta_init="zero")


def test_fit_users_get_the_callbacks_in_one_line():
    assert [type(c).__name__ for c in zoo.callbacks("rbnn_resnet20", 10)] == ["RotationUpdate", "SignSchedule"]
    assert zoo.callbacks("bnn_resnet20", 10) == []


def test_info_reports_the_paper_numbers():
    details = zoo.info("rbnn_resnet20_bireal")
    assert [(r["dataset"], r["top1"]) for r in details["reported"]] == [("cifar10", 87.8)]
    assert details["binary_convs"] == 18
    assert zoo.info("rbnn_resnet18")["reported"][0]["top5"] == 81.9


def reference_forward(layer, x):
    """docs/methods/rbnn.md#what-the-layer-computes written again in NumPy, reference (OIHW) layout, +1 padding."""
    w = layer.kernel.numpy().transpose(3, 2, 0, 1)  # OIHW
    co, ci, kh, kw = w.shape
    rows = w.reshape(co, -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    rows = rows / (rows.std(axis=1, ddof=1, keepdims=True) + 1e-8)
    a, b = layer.rotation_shape
    xw = rows.reshape(co, a, b)
    rotated = layer.r1.numpy().T @ xw @ layer.r2.numpy()
    s = np.abs(np.sin(layer.theta.numpy()))[:, None, None]
    binary_w = np.where(xw + s * (rotated - xw) >= 0, 1.0, -1.0).reshape(co, ci, kh, kw)
    centered = x - x.mean(axis=(1, 2, 3), keepdims=True)
    std = centered.reshape(len(x), -1).std(axis=1, ddof=1)[:, None, None, None]
    standardized = centered / (std + rbnn.ACTIVATION_STD_EPS)
    binary_x = np.pad(np.where(standardized >= 0, 1.0, -1.0), [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
    out = np.zeros((len(x), x.shape[1], x.shape[2], co))
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            patch = binary_x[:, i:i + kh, j:j + kw, :]  # (N, kh, kw, ci)
            out[:, i, j, :] = np.einsum("nhwc,ochw->no", patch, binary_w)
    return out * layer.alpha.numpy()


def test_layer_forward_matches_the_reference_pseudo_code():
    layer = built_layer(cin=4, filters=3)
    rng = np.random.default_rng(2)
    layer.theta.assign(rng.uniform(0, np.pi, 3).astype(np.float32))
    layer.alpha.assign(np.array([0.7, -1.1, 0.3], np.float32))
    model = keras.Sequential([keras.Input((6, 6, 4)), layer])
    rbnn.update_rotations(model)
    x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), reference_forward(layer, x), rtol=1e-5, atol=1e-4)
    rows = layer.standardized_weights().numpy().reshape(3, -1)
    np.testing.assert_allclose(rows.std(axis=1, ddof=1), 1.0, rtol=1e-5)


def test_rotations_and_schedule_position_travel_with_the_weights_file(tmp_path):
    model = zoo.load("rbnn_resnet20", weights=None, input_shape=(28, 28, 1))
    rbnn.update_rotations(model)
    schedule = rbnn.SignSchedule(epochs=10)
    schedule.set_model(model)
    schedule.on_epoch_begin(7)
    model.save_weights(tmp_path / "rbnn.h5")

    loaded = zoo.load("rbnn_resnet20", weights=str(tmp_path / "rbnn.h5"), input_shape=(28, 28, 1))
    for original, restored in zip(rbnn.rbnn_layers(model), rbnn.rbnn_layers(loaded)):
        np.testing.assert_array_equal(original.r1.numpy(), restored.r1.numpy())
        assert restored.kernel_quantizer.t.numpy() == pytest.approx(rbnn.sign_schedule(7, 10)["t_weights"])
    x = random_pixels((28, 28, 1))
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())


def test_the_storage_form_has_the_same_outputs_and_survives_float16():
    """fold_rotations (the storage rule): identity rotations and a kernel whose signs are
    w̃'s and far from zero, so float16 latent kernels change no binary weight."""
    model = zoo.load("rbnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    randomize_batch_norms(model)
    layers = rbnn.rbnn_layers(model)
    rng = np.random.default_rng(0)
    for layer in layers:
        layer.theta.assign(rng.uniform(0.3, 3.0, layer.theta.shape).astype(np.float32))
    layers[0].alpha.assign(-layers[0].alpha)
    x = random_pixels((28, 28, 1), batch=16)
    before = model(x, training=False).numpy()
    inference = to_inference(model)
    kernels = [inference.get_layer(layer.name).get_weights()[0] for layer in layers]
    trained_scales = [np.std(layer.kernel.numpy(), axis=(0, 1, 2)) for layer in layers]

    assert zoo.schemes.base.apply_storage_rules(model) == [layer.name for layer in layers]
    for layer, trained_scale in zip(layers, trained_scales):
        np.testing.assert_array_equal(layer.r1.numpy(), np.eye(layer.r1.shape[0]))
        # each output channel keeps the trained scale, so a fine-tune's steps are as large as training's
        np.testing.assert_allclose(np.std(layer.kernel.numpy(), axis=(0, 1, 2)), trained_scale, rtol=1e-4)
        layer.kernel.assign(layer.kernel.numpy().astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(model(x, training=False).numpy(), before)
    inference = to_inference(model)
    for layer, kernel in zip(layers, kernels):
        np.testing.assert_array_equal(inference.get_layer(layer.name).get_weights()[0], kernel)


def test_the_storage_form_of_single_signed_rows():
    """A w̃ row of positive signs only becomes equal entries (standardized: 0, sign +1);
    one of negative signs only has no standardized form and leaves the layer as it is."""
    layer = rbnn.RBNNConv2D(3, 3)
    layer.build((None, 8, 8, 4))
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, *layer.rotation_shape)).astype(np.float32)
    target[1] = np.abs(target[1])
    layer.mixed_weights = lambda: tf.constant(target)  # what the trained rotations would give
    kernel_before = layer.kernel.numpy()
    assert rbnn.fold_rotations(layer)
    del layer.mixed_weights
    folded = layer.kernel_quantizer(layer.mixed_weights()).numpy()
    np.testing.assert_array_equal(folded, np.where(target >= 0, 1.0, -1.0))
    assert np.all(layer.kernel.numpy()[..., 1] == 2.0 ** np.round(np.log2(np.std(kernel_before[..., 1]))))

    kernel = layer.kernel.numpy()
    target[2] = -np.abs(target[2])
    layer.mixed_weights = lambda: tf.constant(target)
    assert not rbnn.fold_rotations(layer)
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)


@pytest.mark.parametrize("name, expected", [
    ("rbnn_resnet20", "tiny"), ("rbnn_resnet18", "tiny"), ("rbnn_resnet18_cifar", "uniform"),
    ("rbnn_vgg_small", "ones"), ("bnn_resnet20", "ones"),
])
def test_batch_norm_gamma_starts_as_the_reference_initialises_it(name, expected):
    """§1.7: γ = 1e-8 in every BatchNorm2d of the CIFAR ResNet-20 and the ImageNet ResNets and
    U(0, 1) in the head's BatchNorm1d; PyTorch 1.1's U(0, 1) in the CIFAR ResNet-18; 1 in VGG-small."""
    model = zoo.load(name, weights=None, input_shape=(32, 32, 3), classes=10)
    gammas = {layer.name: layer.gamma.numpy() for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)}
    head = gammas.pop("head_bn", None)
    body = np.concatenate(list(gammas.values()))
    if expected == "ones":
        assert np.all(body == 1.0) and (head is None or np.all(head == 1.0))
        return
    for values in ([body, head] if expected == "uniform" else [head]):
        assert np.all((values >= 0) & (values < 1)) and values.std() > 0.1
    if expected == "tiny":
        np.testing.assert_array_equal(body, np.float32(1e-8))


def test_with_the_references_tiny_gamma_the_gradients_reach_the_first_blocks():
    """γ = 1e-8 makes every block's output ~1e-8; the per-sample standardisation in front of
    each binary conv must undo that scale backwards too, as the reference's plain division by
    the std does (an ε of 1e-5 in it shrank the first blocks' gradients ~400x and the network
    did not learn)."""
    model = zoo.load("rbnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    x, y = random_pixels((28, 28, 1), batch=32), np.arange(32) % 10
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
    first, last = tape.gradient(loss, [model.get_layer(name).gamma
                                       for name in ("stage1_block1_bn1", "stage3_block3_bn2")])
    assert float(tf.norm(first)) > 0.05 * float(tf.norm(last))

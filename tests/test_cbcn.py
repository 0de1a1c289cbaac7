"""CBCN (docs/methods/cbcn.md): circulant filters, CBConv, CBP, the N× width, export, training."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import zoo
from helpers import random_pixels, randomize_batch_norms, relative_error
from larq_compute_engine.tflite.python.interpreter import Interpreter
from training.recipes.cbcn import CBCNRecipe
from zoo import registry
from zoo.export import convert_lce, op_histogram, to_inference
from zoo.profile import costs
from zoo.schemes import cbcn

N = 4
# docs/methods/cbcn.md#circulant-filter: for 90°·r the 3×3 source tap p (row-major 1…9) lands on tap TABLE[r][p − 1]
TABLE = {
    0: [1, 2, 3, 4, 5, 6, 7, 8, 9],
    1: [3, 6, 9, 2, 5, 8, 1, 4, 7],
    2: [9, 8, 7, 6, 5, 4, 3, 2, 1],
    3: [7, 4, 1, 8, 5, 2, 9, 6, 3],
}


def test_the_index_formula_reproduces_the_reference_table():
    index = cbcn.circulant_index(N, 3)
    for r, destinations in TABLE.items():
        for o in range(N):  # source orientation o lands in input orientation slot (o + r) mod N
            for p, q in enumerate(destinations):
                y, x = divmod(q - 1, 3)
                assert index[y, x, (o + r) % N, r] == o * 9 + p, (r, o, p + 1)
    assert sorted(index[:, :, :, 1].ravel().tolist()) == list(range(36))  # each copy uses every weight once


def reference_kernel(latent):
    """``K[i·N + r, j·N + o'] = rot_r(V[i, j, (o' − r) mod N])``, OIHW, written out."""
    c_out, c_in, n, k, _ = latent.shape
    kernel = np.zeros((c_out * n, c_in * n, k, k), np.float32)
    for i in range(c_out):
        for j in range(c_in):
            for r in range(n):
                for o in range(n):
                    kernel[i * n + r, j * n + o] = np.rot90(latent[i, j, (o - r) % n], k=-r)
    return kernel


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_the_gather_builds_the_circulant_filter_of_the_spec(kernel_size):
    latent = np.random.default_rng(0).normal(size=(3, 2, N, kernel_size, kernel_size)).astype(np.float32)
    kernel = cbcn.circulant_kernel(tf.constant(latent), cbcn.circulant_index(N, kernel_size)).numpy()
    np.testing.assert_array_equal(kernel.transpose(3, 2, 0, 1), reference_kernel(latent))


def test_circulant_back_propagation_sums_the_copies_gradients():
    rng = np.random.default_rng(1)
    latent = tf.Variable(rng.normal(size=(2, 3, N, 3, 3)).astype(np.float32))
    upstream = rng.normal(size=(3, 3, 3 * N, 2 * N)).astype(np.float32)  # dL/dK, HWIO
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(cbcn.circulant_kernel(latent, cbcn.circulant_index(N, 3)) * upstream)
    grad = tape.gradient(loss, latent).numpy()
    # CBP written out: undo each copy's rotation and shift, then sum the N copies.
    expected = np.zeros_like(grad)
    upstream_oihw = upstream.transpose(3, 2, 0, 1)
    for i in range(2):
        for j in range(3):
            for r in range(N):
                for o in range(N):
                    expected[i, j, (o - r) % N] += np.rot90(upstream_oihw[i * N + r, j * N + o], k=r)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def built_layer(c_in=3, c_out=2, kernel_size=3, strides=1, seed=0):
    layer = cbcn.CirculantBinaryConv2D(c_out * N, kernel_size, strides, name="cbconv")
    layer.build((None, 7, 7, c_in * N))
    layer.latent.assign(np.random.default_rng(seed).normal(size=layer.latent.shape).astype(np.float32))
    return layer


def rho(x, rotate_orientations=True):
    """Rotate each feature map 90° clockwise and roll the orientations: new[o] = old[(o − 1) mod N]."""
    x = np.rot90(x, k=-1, axes=(1, 2))
    if rotate_orientations:
        b, h, w, c = x.shape
        x = np.roll(x.reshape(b, h, w, c // N, N), 1, axis=-1).reshape(b, h, w, c)
    return np.ascontiguousarray(x)


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_rotating_the_input_permutes_the_outputs_as_the_spec_states(kernel_size):
    layer = built_layer(kernel_size=kernel_size)
    x = np.random.default_rng(2).normal(size=(2, 7, 7, 3 * N)).astype(np.float32)
    y = layer(x).numpy()
    np.testing.assert_allclose(layer(rho(x)).numpy(), rho(y), rtol=1e-6, atol=1e-5)
    # the orientation roll is part of it: a bare spatial rotation is not an equivariance
    assert np.abs(layer(rho(x)).numpy() - rho(y, rotate_orientations=False)).max() > 1e-2


def test_layer_forward_is_the_scaled_binary_conv_and_alpha_is_differentiable():
    layer = built_layer()
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 7, 7, 3 * N)).astype(np.float32))
    latent = layer.latent.numpy()
    kernel = np.where(reference_kernel(latent) >= 0, 1.0, -1.0)  # OIHW
    padded = np.pad(np.where(x.numpy() >= 0, 1.0, -1.0), [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
    expected = np.zeros((2, 7, 7, 2 * N))
    for i in range(7):
        for j in range(7):
            expected[:, i, j] = np.einsum("nhwc,ochw->no", padded[:, i:i + 3, j:j + 3], kernel)
    alpha = np.abs(latent).mean()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        scale = layer.scale()
    np.testing.assert_allclose(y.numpy(), alpha * expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(scale, layer.latent).numpy(), np.sign(latent) / latent.size, rtol=1e-5)
    # ApproxSign backward on the activations: 2 − 2|x| inside [−1, 1], 0 outside
    x_grad = tape.gradient(y, x).numpy()
    assert np.all(x_grad[np.abs(x.numpy()) > 1] == 0) and np.any(x_grad[np.abs(x.numpy()) < 1] != 0)


def test_the_initialisation_follows_the_reference():
    layer = cbcn.CirculantBinaryConv2D(64 * N, 3, name="cbconv")
    layer.build((None, 8, 8, 64 * N))
    assert layer.latent.shape == (64, 64, N, 3, 3)
    assert layer.latent.numpy().std() == pytest.approx(np.sqrt(2 / (9 * N * 64)), rel=0.02)


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="multiple of the 4 orientations"):
        cbcn.CirculantBinaryConv2D(6, 3)
    with pytest.raises(ValueError, match="10 channels, not a multiple"):
        cbcn.CirculantBinaryConv2D(8, 3).build((None, 8, 8, 10))
    with pytest.raises(ValueError, match="orientations must be 1, 2 or 4"):
        cbcn.CBCN(orientations=8)
    with pytest.raises(ValueError, match="width_multiplier must be a positive integer"):
        zoo.load("bnn_resnet20", weights=None, width_multiplier=0)


def stage_widths(model):
    return [model.get_layer(f"stage{s}_block1_conv1").filters for s in (1, 2, 3)]


def test_cbcn_networks_are_four_times_wide_and_cost_sixteen_times_the_binary_macs():
    plain = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1))
    wide = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), width_multiplier=N)
    model = zoo.load("cbcn_resnet20", weights=None, input_shape=(28, 28, 1))
    assert stage_widths(plain) == [16, 32, 64]
    assert stage_widths(model) == stage_widths(wide) == [64, 128, 256]
    assert model.get_layer("stem_conv").filters == 64 and model.get_layer("stem_act").weights  # PReLU
    assert model.get_layer("stage1_block1_conv1").latent.shape == (16, 16, N, 3, 3)
    details = zoo.info("cbcn_resnet20", input_shape=(28, 28, 1))
    plain_macs, wide_macs = (costs(m)["binary_macs"] for m in (plain, wide))  # bnn trains as it exports
    assert details["binary_macs"] == wide_macs == 16 * plain_macs
    assert details["width_multiplier"] == N and details["binary_macs_vs_plain_width"] == 16.0
    # latent parameters: N× a plain conv's (docs/methods/cbcn.md#cost-of-the-n-wide-feature-maps)
    latent = sum(int(np.prod(layer.latent.shape)) for layer in model.layers if hasattr(layer, "latent"))
    plain_binary = sum(layer.kernel.shape.num_elements() for layer in plain.layers
                       if isinstance(layer, lq.layers.QuantConv2D))
    assert latent == N * plain_binary


def test_the_reported_anchors_are_the_papers():
    reported = registry.get_model_spec("cbcn_resnet18").scheme.reported
    assert [(r.arch, r.dataset, r.top1) for r in reported] == [
        ("resnet18", "imagenet2012", 61.4), ("resnet18", "imagenet2012", 61.0)]


@pytest.fixture(scope="module")
def trained_looking():
    """A 4x-wide cbcn_resnet20 with non-trivial BN statistics and its export (built once)."""
    keras.utils.set_random_seed(0)
    model = zoo.load("cbcn_resnet20", weights=None, input_shape=(28, 28, 1), classifier_activation=None)
    randomize_batch_norms(model)
    return model, to_inference(model)


def test_export_materialises_the_circulant_expansion_into_pm1_kernels(trained_looking):
    model, inference = trained_looking
    x = random_pixels((28, 28, 1), batch=8)
    assert relative_error(model(x).numpy(), inference(x).numpy()) <= 1e-4
    assert not any(isinstance(layer, cbcn.CirculantBinaryConv2D) for layer in inference.layers)
    layer = model.get_layer("stage2_block1_conv1")
    exported = inference.get_layer("stage2_block1_conv1")
    kernel = exported.get_weights()[0]
    assert isinstance(exported, lq.layers.QuantConv2D) and kernel.shape == (3, 3, 64, 128)
    np.testing.assert_array_equal(kernel, np.where(layer.circulant_kernel().numpy() >= 0, 1.0, -1.0))
    # α is folded into the BN: gamma = γ/√(var + ε) · α
    gamma, _, mean, var = model.get_layer("stage2_block1_bn1").get_weights()
    folded = inference.get_layer("stage2_block1_bn1").get_weights()
    np.testing.assert_allclose(folded[0], gamma / np.sqrt(var + 1e-5) * layer.scale().numpy(), rtol=1e-5)


def test_lce_runs_the_exported_cbcn(trained_looking, fashion_mnist_data_dir):
    model, inference = trained_looking
    flatbuffer = convert_lce(model)
    ops = op_histogram(flatbuffer)
    assert ops["LceBconv2d"] == 18 and ops.get("CONV_2D") == 1
    images, _ = next(iter(zoo.load_dataset("fashion_mnist", "test", batch_size=128, data_dir=fashion_mnist_data_dir)))
    expected = inference.predict(images.numpy(), verbose=0)
    actual = Interpreter(flatbuffer, num_threads=2, use_indirect_bgemm=True).predict(images.numpy())
    print("max |logit difference| LCE vs Keras:", np.abs(expected - actual).max())
    assert np.mean(expected.argmax(1) == actual.argmax(1)) >= 0.99


def test_real_training_steps_lower_the_loss_then_the_centre_loss_stage_starts(fashion_mnist_data_dir):
    data = zoo.load_dataset("fashion_mnist", "train", batch_size=32, take=64, data_dir=fashion_mnist_data_dir,
                            image_size=(14, 14), seed=0)
    model = zoo.load("cbcn_resnet20", weights=None, input_shape=(14, 14, 1))
    recipe = CBCNRecipe.for_model("cbcn_resnet20", epochs=3, batch_size=32, centre_loss_epochs=1)
    trainable = recipe.wrap(model)
    recipe.compile(trainable)
    latent_before = model.get_layer("stage1_block1_conv1").latent.numpy().copy()
    history = trainable.fit(data, epochs=recipe.epochs, callbacks=recipe.callbacks("cbcn_resnet20"), verbose=0).history
    assert history["loss"][1] < history["loss"][0]
    assert not np.allclose(model.get_layer("stage1_block1_conv1").latent.numpy(), latent_before)
    assert history["lr"] == pytest.approx([0.1, 1e-3, 1e-3])  # 2 main epochs: decays at 2/9 and 4/9 of them
    centre_term = np.array(history["loss"]) - np.array(history["task_loss"])
    assert np.all(centre_term[:2] == 0) and centre_term[2] == pytest.approx(1e-3 * history["centre_loss"][2], rel=1e-3)
    assert history["centre_loss"][2] > 0 and np.abs(trainable.centres.numpy()).sum() > 0
    evaluation = trainable.evaluate(data, return_dict=True, verbose=0)
    assert evaluation["task_loss"] > 0 and evaluation["centre_loss"] > 0
    assert evaluation["loss"] == pytest.approx(evaluation["task_loss"] + 1e-3 * evaluation["centre_loss"], rel=1e-5)
    assert trainable.student is model


def test_centre_loss_and_its_wrapper_need_a_classifier():
    centres = tf.Variable([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    features = tf.constant([[2.0, 0.0], [4.0, 0.0], [1.0, 3.0]])
    labels = tf.constant([0, 0, 1])
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = cbcn.centre_loss(features, centres, labels)
    assert loss.numpy() == pytest.approx(0.5 * (4 + 16 + 4) / 3)
    grads = tape.gradient(loss, [features, centres])
    np.testing.assert_allclose(grads[0].numpy(), (features.numpy() - [[0, 0], [0, 0], [1, 1]]) / 3)
    assert grads[1] is None  # the centres follow the update rule, not the gradient
    with pytest.raises(ValueError, match="no 'predictions' layer"):
        cbcn.CentreLossModel(zoo.load("cbcn_resnet20", weights=None, include_top=False))


def test_recipe_follows_the_reference_schedule_then_fine_tunes():
    imagenet = CBCNRecipe.for_model("cbcn_resnet18")
    assert (imagenet.epochs, imagenet.batch_size, imagenet.weight_decay, imagenet.momentum) == (100, 256, 1e-4, 0.9)
    assert (imagenet.main_epochs, imagenet.centre_loss_epochs) == (90, 10)
    assert [imagenet.learning_rate_at(e) for e in (0, 19, 20, 39, 40, 89, 90, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-5, 1e-3, 1e-3])
    short = CBCNRecipe.for_model("cbcn_resnet18", epochs=9, centre_loss_epochs=0)  # the same steps over 9 epochs
    assert [short.learning_rate_at(e) for e in range(9)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    plain = keras.Sequential()
    assert short.wrap(plain) is plain
    assert CBCNRecipe.for_model("cbcn_resnet20").centre_loss_epochs == 20
    assert [CBCNRecipe.for_model("cbcn_resnet20", epochs=e).centre_loss_epochs for e in (4, 5, 30)] == [0, 1, 3]
    with pytest.raises(ValueError, match="at least one main epoch"):
        CBCNRecipe.for_model("cbcn_resnet20", epochs=2, centre_loss_epochs=2)


def test_weights_travel_through_an_hdf5_file(trained_looking, tmp_path):
    model, _ = trained_looking
    model.save_weights(tmp_path / "cbcn.h5")
    loaded = zoo.load("cbcn_resnet20", weights=str(tmp_path / "cbcn.h5"), input_shape=(28, 28, 1),
                      classifier_activation=None)
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(original.numpy(), restored.numpy())
    x = random_pixels((28, 28, 1))
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())


def test_the_layer_round_trips_through_its_config():
    layer = cbcn.CirculantBinaryConv2D(8, 1, strides=2, pad_values=0.0, name="c")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, cbcn.CirculantBinaryConv2D)
    assert (clone.filters, clone.kernel_size, clone.strides, clone.pad_values) == (8, (1, 1), (2, 2), 0.0)

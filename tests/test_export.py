"""to_inference: parity with the training model, ±1 kernels, folding (LCE conversion of every
model: tests/test_deploy.py)."""

import larq as lq
import numpy as np
import pytest
import tf_keras as keras
import zoo
from helpers import randomize_batch_norms, random_pixels, relative_error
from zoo import registry
from zoo.export import binary_exports, binary_weights, to_inference
from zoo.schemes import BinaryExport, export_rule
from zoo.schemes.base import conv_geometry

BINARY_MODELS = [n for n in zoo.list_models() if registry.get_model_spec(n).scheme.binary]


def small_input(name):
    """Exports are checked at small inputs: the graph (and so the check) is the same."""
    return (32, 32, 3) if name.endswith(("_resnet18", "_resnet34")) else (28, 28, 1)


def small_build(name) -> dict:
    """Builder arguments of the checks: small inputs and, for schemes that widen every
    feature map (CBCN, 4x: 16x the binary weights), plain width. The graph, and so the
    check, is the same; tests/test_cbcn.py checks a 4x-wide export and its LCE file."""
    plain_width = {"width_multiplier": 1} if registry.get_model_spec(name).scheme.width_multiplier != 1 else {}
    return {"input_shape": small_input(name), **plain_width}


def build_trained_looking(name):
    model = zoo.load(name, weights=None, classifier_activation=None, **small_build(name))
    randomize_batch_norms(model)
    return model


@pytest.mark.parametrize("name", BINARY_MODELS)
def test_export_parity_and_pm1_kernels(name):
    model = build_trained_looking(name)
    inference = to_inference(model)
    x = random_pixels(small_input(name), batch=4)
    expected = model(x, training=False).numpy()
    assert relative_error(expected, inference(x, training=False).numpy()) <= 1e-4

    binary = [layer for layer in inference.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert binary and len(binary) == len(binary_exports(model))
    for layer in binary:
        kernel = layer.get_weights()[0]
        assert set(np.unique(kernel)) <= {-1.0, 1.0}, layer.name
        assert layer.kernel_constraint is None and not layer.use_bias
        assert isinstance(layer.kernel_quantizer, lq.quantizers.SteSign)
        assert isinstance(layer.input_quantizer, lq.quantizers.SteSign)


def test_full_precision_models_are_left_as_they_are():
    model = build_trained_looking("fp_resnet20")
    inference = to_inference(model)
    x = random_pixels((28, 28, 1))
    np.testing.assert_array_equal(model(x).numpy(), inference(x).numpy())


# A method-like layer: a binary conv whose output is scaled per channel by a fixed α of
# any sign. It checks the extension point the method issues use, and negative scales.
class SignedScaleConv(lq.layers.QuantConv2D):
    def __init__(self, *args, alpha=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = np.asarray(alpha, np.float32)

    def call(self, inputs):
        return super().call(inputs) * self.alpha


@export_rule(SignedScaleConv)
def _export_signed(layer):
    kernel = np.where(layer.get_weights()[0] >= 0, 1.0, -1.0).astype(np.float32)
    return BinaryExport(kernel=kernel, scale=layer.alpha, conv_kwargs=conv_geometry(layer))


def signed_scale_model(after_conv):
    inputs = keras.Input((8, 8, 3))
    x = SignedScaleConv(
        4, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", use_bias=False, alpha=[0.5, -2.0, 1.5, -0.25], name="conv",
    )(inputs)
    x = after_conv(x)
    return keras.Model(inputs, x)


def test_negative_scales_fold_through_max_pooling():
    model = signed_scale_model(
        lambda x: keras.layers.BatchNormalization(name="bn")(keras.layers.MaxPooling2D(2, name="pool")(x))
    )
    randomize_batch_norms(model, seed=3)
    inference = to_inference(model)
    kinds = [type(layer).__name__ for layer in inference.layers[1:]]
    assert kinds == ["QuantConv2D", "MaxPooling2D", "BatchNormalization"]
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype(np.float32)
    assert relative_error(model(x).numpy(), inference(x).numpy()) <= 1e-5
    np.testing.assert_array_equal(inference.get_layer("bn").get_weights()[2], 0.0)
    assert np.all(inference.get_layer("bn").get_weights()[0] * np.sign(model.get_layer("bn").get_weights()[0]) > 0)


def test_a_scale_without_a_following_batch_norm_is_an_error():
    model = signed_scale_model(lambda x: keras.layers.ReLU(name="relu")(x))
    with pytest.raises(ValueError, match="'conv'.*cannot be folded.*'relu'"):
        to_inference(model)


def test_binary_weights_count_every_sign_a_change_flips():
    model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    before = binary_weights(model)
    layer = next(layer for layer in model.layers if layer.name in binary_exports(model))
    kernel = layer.get_weights()[0]
    layer.set_weights([-kernel, *layer.get_weights()[1:]])  # every sign of one layer (none is exactly 0)
    assert np.mean(binary_weights(model) != before) == pytest.approx(kernel.size / before.size)

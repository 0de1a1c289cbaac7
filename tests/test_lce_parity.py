"""The .tflite file computes what its Keras model computes (docs/methods/cbcn.md#export-and-lce-parity).

A binary network's output moves with the runtime where a pre-activation is within the two
runtimes' rounding difference of 0 and its sign flips. LCE's fused bconv output transform
rounds at the scale ``K·|s|`` (``K = kh·kw·C_in``), so the conversion keeps the BNs that
feed the residual stream out of the bconvs and moves the step of each BN that is binarized
next half-way between two sums; what is left is Keras' and TFLite's float rounding, which
the shipped models must survive on 99 % of real images.
"""

import larq as lq
import numpy as np
import pytest
import tf_keras as keras
import zoo
from larq_compute_engine import convert_keras_model
from zoo import registry
from zoo.deploy import lce_interpreter, run_tflite
from zoo.export import (
    binarizing_thresholds_centred,
    binary_exports,
    lce_flatbuffer,
    op_histogram,
    residual_batch_norms_unfused,
    to_inference,
)
from zoo.layers import HardTanh

IMAGES = 512
#: LCE's own tolerance, on each output probability
TOLERANCE = 1e-3
#: share of the images whose every output is within TOLERANCE
AGREEING = 0.99


@pytest.fixture(scope="module")
def test_images(fashion_mnist_data_dir):
    """The first IMAGES test images of each dataset the shipped weights were trained on."""
    cache = {}

    def images(dataset):
        if dataset not in cache:
            batch, _ = next(iter(zoo.load_dataset(dataset, "test", batch_size=IMAGES, data_dir=fashion_mnist_data_dir)))
            cache[dataset] = batch.numpy()
        return cache[dataset]

    return images


@pytest.mark.slow
@pytest.mark.parametrize("entry", registry.manifest_entries(), ids=lambda entry: f"{entry.name}-{entry.tag}")
def test_every_shipped_model_runs_in_lce_as_in_keras_on_real_images(entry, test_images):
    model = zoo.load(entry.name, weights=entry.tag)
    inference = to_inference(model) if binary_exports(model) else model
    images = test_images(entry.dataset)
    expected = inference(images, training=False).numpy()
    actual = run_tflite(lce_interpreter(lce_flatbuffer(inference), threads=1), images)
    within = np.max(np.abs(expected - actual), axis=1) <= TOLERANCE
    assert within.mean() >= AGREEING, (
        f"{entry.name}: {within.sum()} of {len(images)} images within {TOLERANCE} "
        f"(max |Δ| {np.abs(expected - actual).max():.3g})"
    )


def residual_block(channels=256, seed=0):
    """x + BN(bconv(x)): a 4x-wide CBCN stage-3 conv (K = 9·256) feeding the residual stream."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((6, 6, channels))
    conv = lq.layers.QuantConv2D(channels, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                                 kernel_quantizer="ste_sign", use_bias=False, name="conv")
    bn = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")
    outputs = keras.layers.Add(name="add")([bn(conv(inputs)), inputs])
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.where(rng.normal(size=(3, 3, channels, channels)) >= 0, 1.0, -1.0)])
    # trained-like: s = γ/√(var + ε) ≈ 0.05 (a CBCN α times its BN), the bias of the order of s·√K
    bn.set_weights([rng.uniform(0.03, 0.07, channels), rng.normal(0, 2.0, channels),
                    np.zeros(channels), np.full(channels, 1 - 1e-5)])
    return model, rng.normal(0, 3.0, (4, 6, 6, channels)).astype(np.float32)


def exact_output(model, x):
    """The block in float64 (the ±1 sums are exact integers in float32 already)."""
    conv_sums = model.get_layer("conv")(x).numpy().astype(np.float64)
    gamma, beta, mean, variance = (w.astype(np.float64) for w in model.get_layer("bn").get_weights())
    return (conv_sums - mean) * gamma / np.sqrt(variance + 1e-5) + beta + x


def test_the_residual_bn_stays_out_of_the_bconv_and_rounds_as_keras():
    model, x = residual_block()
    ours, lce_fused = lce_flatbuffer(model), convert_keras_model(model)
    assert op_histogram(ours)["DEPTHWISE_CONV_2D"] == 1 and "DEPTHWISE_CONV_2D" not in op_histogram(lce_fused)
    assert op_histogram(ours)["LceBconv2d"] == op_histogram(lce_fused)["LceBconv2d"] == 1
    exact = exact_output(model, x)
    keras_error = np.abs(model(x).numpy() - exact).max()
    our_error, fused_error = (np.abs(run_tflite(lce_interpreter(f), x) - exact).max() for f in (ours, lce_fused))
    print(f"max |error| vs float64: Keras {keras_error:.3g}, ours {our_error:.3g}, LCE fused {fused_error:.3g}")
    # the fused output transform adds terms of size K·|s| ≈ 100 (float32 spacing 7.6e-6)
    assert fused_error > 4 * max(our_error, keras_error)
    assert our_error <= 2 * keras_error + 1e-6


def test_only_batch_norms_between_a_bconv_and_an_add_are_unfused():
    model = zoo.load("cbcn_resnet20", weights=None, input_shape=(28, 28, 1))
    inference = to_inference(model)
    rewritten = residual_batch_norms_unfused(inference)
    depthwise = {layer.name for layer in rewritten.layers if isinstance(layer, keras.layers.DepthwiseConv2D)}
    assert depthwise == {f"stage{s}_block{b}_bn2" for s in (1, 2, 3) for b in (1, 2, 3)}
    assert isinstance(rewritten.get_layer("stage1_block1_bn1"), keras.layers.BatchNormalization)  # binarized next
    assert isinstance(rewritten.get_layer("stem_bn"), keras.layers.BatchNormalization)  # after a float conv
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(rewritten(x).numpy(), inference(x).numpy(), rtol=1e-5, atol=1e-6)
    plain = zoo.load("fp_resnet20", weights=None, input_shape=(28, 28, 1))
    assert residual_batch_norms_unfused(plain) is plain


def binarized_block(channels=256, step=1e-4, seed=0, input_quantizer="ste_sign", kernel_quantizer="ste_sign"):
    """bconv → BN → HardTanh → bconv, the BN's step ``t = −b/s`` a hair above the sum 0 on
    every channel (K = 9·256: LCE's output transform rounds at K·|s| ≈ 100)."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((6, 6, channels))

    def conv(name, quantizer):
        return lq.layers.QuantConv2D(channels, 3, padding="same", pad_values=1.0, input_quantizer=quantizer,
                                     kernel_quantizer=kernel_quantizer, use_bias=False, name=name)

    bn = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")
    outputs = conv("conv2", "ste_sign")(HardTanh(name="act")(bn(conv("conv1", input_quantizer)(inputs))))
    model = keras.Model(inputs, outputs)
    for name in ("conv1", "conv2"):
        model.get_layer(name).set_weights([np.where(rng.normal(size=(3, 3, channels, channels)) >= 0, 1.0, -1.0)])
    s = rng.uniform(0.03, 0.07, channels)
    bn.set_weights([s, -s * step, np.zeros(channels), np.full(channels, 1 - 1e-5)])
    return model, rng.normal(0, 3.0, (4, 6, 6, channels)).astype(np.float32)


def exact_binarized_output(model, x):
    """The block with the BN's sign taken in float64: ``s·acc + b`` is ``s·(acc − t)``."""
    sums = model.get_layer("conv1")(x).numpy().astype(np.float64)
    gamma, beta, mean, variance = (w.astype(np.float64) for w in model.get_layer("bn").get_weights())
    signs = np.where((sums - mean) * gamma / np.sqrt(variance + 1e-5) + beta >= 0, 1.0, -1.0).astype(np.float32)
    return model.get_layer("conv2")(signs).numpy()


def test_a_binarized_bn_step_near_a_sum_is_centred_and_lce_then_computes_it_exactly():
    model, x = binarized_block()
    exact = exact_binarized_output(model, x)
    assert np.mean(model.get_layer("conv1")(x).numpy() == 0) > 0.01  # sums land 1e-4 below the step
    np.testing.assert_array_equal(model(x).numpy(), exact)  # Keras, in float32, gets them right
    centred = binarizing_thresholds_centred(model)
    gamma, beta, _, _ = centred.get_layer("bn").get_weights()
    np.testing.assert_allclose(-beta / gamma, 0.5, rtol=1e-6)  # between the sums 0 and 2
    np.testing.assert_array_equal(centred(x).numpy(), exact)
    ours, lce_fused = lce_flatbuffer(model), convert_keras_model(model)
    flips = lambda flatbuffer: int(np.sum(run_tflite(lce_interpreter(flatbuffer), x) != exact))  # noqa: E731
    print(f"outputs off the exact ones: ours {flips(ours)}, LCE as converted {flips(lce_fused)}")
    assert flips(lce_fused) > 0
    assert flips(ours) == 0


@pytest.mark.parametrize("change", ["magnitude_aware_kernel", "float_input"])
def test_only_steps_over_integer_sums_are_moved(change):
    kwargs = {"magnitude_aware_kernel": dict(kernel_quantizer="magnitude_aware_sign"),
              "float_input": dict(input_quantizer=None)}[change]
    model, _ = binarized_block(channels=8, **kwargs)
    assert binarizing_thresholds_centred(model) is model


def test_the_bns_binarized_next_are_centred_and_the_function_kept():
    model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1))
    inference = to_inference(model)
    rng = np.random.default_rng(0)
    for layer in inference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(-1, 1, gamma.shape), rng.normal(0, 1, beta.shape),
                               rng.normal(0, 5, mean.shape), rng.uniform(1, 50, variance.shape)])
    centred = binarizing_thresholds_centred(inference)
    moved = {layer.name for layer in inference.layers
             if isinstance(layer, keras.layers.BatchNormalization)
             and not np.array_equal(layer.get_weights()[1], centred.get_layer(layer.name).get_weights()[1])}
    assert moved == {f"stage{s}_block{b}_bn1" for s in (1, 2, 3) for b in (1, 2, 3)}
    x = np.random.default_rng(1).uniform(0, 255, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(centred(x).numpy(), inference(x).numpy())

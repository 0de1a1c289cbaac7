"""Compression (zoo.compress): TF-MOT pruning, HRank channel pruning, QAT, the pipeline."""

import json
import logging

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import zoo
from helpers import randomize_batch_norms, relative_error
from larq_compute_engine.tflite.python.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema
from zoo import cli, compress
from zoo.deploy import run_tflite
from zoo.export import convert_lce, op_histogram, to_inference
from zoo.profile import costs

SHAPE = (28, 28, 1)


def fashion(data_dir, split="train", images=128, batch_size=32):
    return zoo.load_dataset("fashion_mnist", split, batch_size=batch_size, take=images, training=False,
                            data_dir=data_dir)


def images_of(dataset):
    return np.concatenate([x.numpy() for x, _ in dataset])


def build(name):
    model = zoo.load(name, weights=None, input_shape=SHAPE, classes=10)
    randomize_batch_norms(model)
    return model


def fit(model, data, callbacks=(), eager=False):
    """One epoch of Adam. ``eager`` skips tracing the train step (most of a few steps' time);
    each kind of model still trains traced in one test here or in the compress pipeline's."""
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", run_eagerly=eager)
    model.fit(data, epochs=1, callbacks=list(callbacks), verbose=0)


def outputs(model, x):
    """Inference outputs by a direct call: ``predict`` would trace a function per model."""
    return model(x, training=False).numpy()


# -- magnitude pruning of the float layers ---------------------------------------------------------------------
def test_pruning_reaches_the_target_on_float_layers_and_strip_leaves_plain_layers(fashion_mnist_data_dir):
    model = build("fp_resnet20")
    pruning = compress.prune(model, 0.7, end_step=2, frequency=1)  # polynomial
    assert pruning.layers == tuple(compress.prunable_layers(model)) and len(pruning.layers) == 20
    fit(pruning.model, fashion(fashion_mnist_data_dir), pruning.callbacks)  # 4 steps: the target at step 2

    stripped = compress.strip(pruning.model)
    assert [type(layer) for layer in stripped.layers] == [type(layer) for layer in model.layers]
    report = {row["layer"]: row for row in compress.sparsity_report(stripped)}
    for name in pruning.layers:
        assert report[name]["sparsity"] == pytest.approx(0.7, abs=1 / report[name]["weights"]), name
    x = images_of(fashion(fashion_mnist_data_dir, "test", 32))
    np.testing.assert_allclose(outputs(stripped, x), outputs(pruning.model, x), atol=1e-6)


@pytest.mark.slow
def test_pruning_leaves_binary_convs_alone_and_the_stripped_model_exports(fashion_mnist_data_dir):
    model = build("rbnn_resnet20")  # its training layers: α is folded into BN on export
    pruning = compress.prune(model, 0.5, schedule="constant", frequency=1)
    assert pruning.layers == ("stem_conv", "predictions")  # the float layers
    fit(pruning.model, fashion(fashion_mnist_data_dir, images=64), pruning.callbacks, eager=True)  # traced: above
    stripped = compress.strip(pruning.model)
    rows = compress.sparsity_report(stripped)
    binary = [row for row in rows if row["kind"] == "binary"]
    assert len(binary) == 18 and all(row["sparsity"] is None for row in binary)
    assert {row["layer"]: round(row["sparsity"], 2) for row in rows if row["kind"] == "float"} == {
        "stem_conv": 0.5, "predictions": 0.5}

    x = images_of(fashion(fashion_mnist_data_dir, "test", 32))
    inference = to_inference(stripped)
    assert relative_error(outputs(stripped, x), outputs(inference, x)) <= 1e-4
    flatbuffer = convert_lce(stripped)
    assert op_histogram(flatbuffer)["LceBconv2d"] == 18
    lce = Interpreter(flatbuffer, num_threads=1).predict(x)
    assert np.mean(lce.argmax(-1) == outputs(inference, x).argmax(-1)) >= 0.9


def test_two_four_structure_zeroes_two_of_every_four_input_weights(fashion_mnist_data_dir):
    model = build("fp_resnet20")
    pruning = compress.prune(model, 0.5, structure="2:4", frequency=1)
    assert "stem_conv" not in pruning.layers  # one input channel: no group of four
    fit(pruning.model, fashion(fashion_mnist_data_dir, images=32), pruning.callbacks, eager=True)
    stripped = compress.strip(pruning.model)
    for name in pruning.layers:
        kernel = stripped.get_layer(name).get_weights()[0]
        rows = np.moveaxis(kernel, -1, 0).reshape(-1, kernel.shape[-2]) if kernel.ndim == 4 else kernel.T
        zeros = (rows.reshape(len(rows), -1, 4) == 0).sum(axis=-1)
        assert zeros.min() >= 2, name


# -- HRank channel pruning --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fp_resnet20", "rbnn_resnet20"])  # rbnn: binary, α folded, centring
def test_channel_pruning_builds_a_narrower_model_equal_to_the_masked_original(name, fashion_mnist_data_dir):
    model = build(name)
    train = fashion(fashion_mnist_data_dir)
    pruning = compress.prune(model, 0.5, structure="channel", data=train, hrank_batches=1)
    convs1 = [f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3)]
    assert sorted(pruning.layers) == sorted(convs1)  # the inner conv of every block, as HRank
    for layer in convs1:
        full = pruning.reference.get_layer(layer).filters
        assert pruning.model.get_layer(layer).filters == len(pruning.kept[layer]) == full // 2
        assert pruning.model.get_layer(layer.replace("conv1", "conv2")).get_weights()[0].shape[2] == full // 2

    x = images_of(fashion(fashion_mnist_data_dir, "test", 64))
    exact = compress.narrow(pruning.reference, pruning.kept)  # before BN recalibration
    narrow = outputs(exact, x)
    reference = outputs(compress.masked(pruning.reference, pruning.kept), x)
    assert relative_error(reference, narrow) <= 1e-5
    original = outputs(pruning.reference, x)
    assert relative_error(original, reference) > 1e-2  # the mask removes something
    for layer in exact.layers:  # the fine-tunable model: the same signs, as small latent weights
        if isinstance(layer, lq.layers.QuantConv2D):
            np.testing.assert_array_equal(pruning.model.get_layer(layer.name).get_weights()[0],
                                          0.01 * layer.get_weights()[0])

    before, after = costs(to_inference(model) if name != "fp_resnet20" else model), costs(to_inference(pruning.model))
    kind = "float_macs" if name == "fp_resnet20" else "binary_macs"
    assert after[kind] <= 0.6 * before[kind]
    assert after["binary_convs"] == before["binary_convs"]
    if name != "fp_resnet20":  # the narrow model still exports: ±1 kernels, same function
        inference = to_inference(pruning.model)
        assert relative_error(outputs(pruning.model, x), outputs(inference, x)) <= 1e-4
        kernels = [layer.get_weights()[0] for layer in inference.layers if isinstance(layer, lq.layers.QuantConv2D)]
        assert len(kernels) == 18 and all(set(np.unique(k)) == {-1.0, 1.0} for k in kernels)


@pytest.mark.parametrize("name", ["fp_resnet20", "rbnn_resnet20"])
def test_faded_channels_end_in_the_narrow_model_computing_the_same(name, fashion_mnist_data_dir):
    model = build(name)
    train = fashion(fashion_mnist_data_dir, images=96)  # 3 steps of 32
    x = images_of(fashion(fashion_mnist_data_dir, "test", 64))
    pruning = compress.channel_prune(model, 0.5, train, batches=1, fade_steps=2)
    fading = pruning.model
    fades = [layer for layer in fading.layers if isinstance(layer, compress.channels.ChannelFade)]
    assert len(fades) == 9 and all(float(layer.level.numpy()) == 1.0 for layer in fades)
    if name == "fp_resnet20":  # at level 1 nothing is removed yet (RBNN centres over the kept channels)
        assert relative_error(outputs(pruning.reference, x), outputs(fading, x)) <= 1e-5
    with pytest.raises(ValueError, match=r"not faded out yet \(stage1_block1_conv2_fade is at level 1.000"):
        compress.strip(fading)

    fit(fading, train, pruning.callbacks, eager=name == "fp_resnet20")  # 3 steps: the levels go 0.5, 0, 0
    assert all(float(layer.level.numpy()) == 0.0 for layer in fades)
    narrow = compress.strip(fading)
    for conv, kept in pruning.kept.items():
        assert narrow.get_layer(conv).filters == len(kept) == pruning.reference.get_layer(conv).filters // 2
    assert not any(isinstance(layer, compress.channels.ChannelFade) for layer in narrow.layers)
    assert relative_error(outputs(fading, x), outputs(narrow, x)) <= 1e-5
    if name != "fp_resnet20":  # the readers are binary convs again, and export as such
        kernels = [layer.get_weights()[0] for layer in to_inference(narrow).layers
                   if compress.common.is_binary_conv(layer)]
        assert len(kernels) == 18 and all(set(np.unique(k)) == {-1.0, 1.0} for k in kernels)
    with pytest.raises(ValueError, match="fade_steps must be a whole number"):
        compress.channel_prune(model, 0.5, train, fade_steps=-1)
    with pytest.raises(ValueError, match="begin_step must be 0"):  # prune's schedule: a fade from step 0
        compress.prune(model, 0.5, structure="channel", data=train, begin_step=5, end_step=9)
    faded_by_prune = compress.prune(model, 0.5, structure="channel", data=train, end_step=7, hrank_batches=1)
    assert [callback.steps for callback in faded_by_prune.callbacks] == [7]


def test_faded_channels_of_a_vgg_end_in_the_narrow_model_computing_the_same():
    model = build("rbnn_vgg_small")  # readers behind max pooling, centring, padding with +1
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (96, *SHAPE)).astype(np.float32)
    train = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 10, 96))).batch(32)
    pruning = compress.channel_prune(model, 0.5, images, batches=1, fade_steps=2)
    fit(pruning.model, train, pruning.callbacks, eager=True)  # traced: the ResNets' fade above
    narrow = compress.strip(pruning.model)
    assert len(pruning.kept) == 5 and all(narrow.get_layer(conv).filters == len(kept)
                                          for conv, kept in pruning.kept.items())
    assert relative_error(outputs(pruning.model, images), outputs(narrow, images)) <= 1e-5


def test_recalibration_gives_each_bn_after_a_narrowed_conv_its_output_statistics_back(fashion_mnist_data_dir):
    train = fashion(fashion_mnist_data_dir, images=64)
    pruning = compress.prune(build("bnn_resnet20"), 0.5, structure="channel", data=train, hrank_batches=2)
    bns = [f"stage{s}_block{b}_bn2" for s in (1, 2, 3) for b in (1, 2, 3)]
    x = images_of(train)

    def moments(model):
        outputs = keras.Model(model.inputs, [model.get_layer(bn).output for bn in bns])(x, training=False)
        return [(o.numpy().mean(axis=(0, 1, 2)), o.numpy().std(axis=(0, 1, 2))) for o in outputs]

    targets = moments(pruning.reference)
    for (mean, std), (target_mean, target_std) in zip(moments(pruning.model), targets):
        np.testing.assert_allclose(mean, target_mean, atol=1e-3 * target_std.max())
        np.testing.assert_allclose(std, target_std, rtol=1e-3)
    uncorrected = moments(compress.narrow(pruning.reference, pruning.kept))
    assert max(np.abs(mean - target[0]).max() for (mean, _), target in zip(uncorrected, targets)) > 0.1


def test_the_fine_tunable_inference_form_computes_the_same_in_training_mode(fashion_mnist_data_dir):
    model = build("rbnn_resnet20")  # α folded into the BNs by to_inference
    train = fashion(fashion_mnist_data_dir, images=64, batch_size=64)
    x = images_of(train)
    folded, restated = to_inference(model), compress.fine_tunable_inference(model, train, batches=1)
    expected = outputs(folded, x)
    assert relative_error(expected, outputs(restated, x)) <= 1e-4
    for name, model_form, expect_same in (("folded", folded, False), ("restated", restated, True)):
        conv_output = keras.Model(model_form.inputs, model_form.get_layer("stage1_block1_conv1").output)(x)
        bn = model_form.get_layer("stage1_block1_bn1")  # α folded into it by to_inference
        at_inference, in_training = bn(conv_output, training=False), bn(conv_output, training=True)
        assert (relative_error(at_inference.numpy(), in_training.numpy()) < 1e-3) == expect_same, name


def test_hrank_ranks_feature_maps_and_keeps_the_highest():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.ReLU(name="act")(x)
    x = keras.layers.Conv2D(2, 3, padding="same", use_bias=False, name="reader")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x))
    kernel = np.zeros((3, 3, 1, 4), np.float32)
    kernel[1, 1, 0, 1] = 1.0  # filter 1 copies the image (full rank); 0, 2 and 3 give constant maps (rank 0)
    kernel[1, 1, 0, 3] = -1.0  # ReLU of a negated positive image: zero (rank 0)
    model.get_layer("conv").set_weights([kernel])
    images = np.random.default_rng(0).uniform(1, 255, (6, 8, 8, 1)).astype(np.float32)
    scores = compress.hrank_scores(model, images)["conv"]
    np.testing.assert_array_equal(scores, [0, 8, 0, 0])
    pruning = compress.channel_prune(model, 0.75, images)
    assert pruning.kept["conv"].tolist() == [1]


def test_channel_pruning_takes_per_layer_ratios_as_hrank_does():
    model = build("bnn_resnet20")
    images = np.random.default_rng(0).uniform(0, 255, (64, *SHAPE)).astype(np.float32)
    ratios = {"stage1_block1_conv1": 0.25, "stage3_block3_conv1": 0.75}
    pruning = compress.prune(model, ratios, structure="channel", data=images, hrank_batches=1)
    assert sorted(pruning.layers) == sorted(ratios)
    assert {name: len(kept) for name, kept in pruning.kept.items()} == {"stage1_block1_conv1": 12,
                                                                        "stage3_block3_conv1": 16}
    assert pruning.model.get_layer("stage2_block1_conv1").filters == 32  # not named: left whole
    with pytest.raises(ValueError, match=r"ratio of 'stage1_block1_conv1' must be a number in \[0, 1\)"):
        compress.channel_prune(model, {"stage1_block1_conv1": 1.0}, images)
    with pytest.raises(ValueError, match="not both"):
        compress.channel_prune(model, ratios, images, layers=["stage1_block1_conv1"])
    with pytest.raises(ValueError, match="Cannot prune the filters of 'stage1_block1_conv2'"):
        compress.channel_prune(model, {"stage1_block1_conv2": 0.5}, images)


# -- quantization-aware training --------------------------------------------------------------------------------
def input_types(flatbuffer: bytes) -> dict[str, set[str]]:
    """Operator kind -> the types of its first input, over the file."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    types = {v: k for k, v in vars(schema.TensorType).items() if k.isupper()}
    kinds = [code.customCode.decode() if code.customCode else names[max(code.builtinCode, code.deprecatedBuiltinCode)]
             for code in model.operatorCodes]
    found: dict[str, set[str]] = {}
    for operator in model.subgraphs[0].operators:
        tensor = model.subgraphs[0].tensors[operator.inputs[0]]
        found.setdefault(kinds[operator.opcodeIndex], set()).add(types[tensor.type])
    return found


def accuracy(predictions, labels):
    return float(np.mean(np.argmax(predictions, -1) == labels))


@pytest.mark.slow
def test_qat_calibrates_fine_tunes_and_converts_with_int8_float_parts(fashion_mnist_data_dir, tmp_path):
    train = fashion(fashion_mnist_data_dir, images=256)
    # the shipped weights: a trained net's outputs are confident, so a rounding difference in the
    # int8 stem that flips one sign in the binary body rarely moves an argmax (a barely trained
    # net's near-uniform outputs made top-1 agreement depend on the worker's earlier tests)
    model = zoo.load("bnn_resnet20")
    fit(model, train, eager=True)
    qat = compress.quantize(model, train, batches=8)  # ranges calibrated on all 256 images
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds.count("QuantConv2D") == 18 and "QuantizeWrapperV2" in kinds  # binary convs: Larq's
    ranges = {w.name.split(":")[0]: w.numpy() for layer in qat.layers for w in layer.weights
              if w.name.split(":")[0].endswith(("_min", "_max"))}
    pixels = images_of(train)
    quantize_input = next(layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer")
    assert [w.numpy() for w in quantize_input.weights if w.name.endswith(("_min:0", "_max:0"))] == [0.0, pixels.max()]
    stem_bn = outputs(keras.Model(model.inputs, model.get_layer("stem_bn").output), pixels)
    np.testing.assert_allclose([ranges["quant_stem_bn/output_min"], ranges["quant_stem_bn/output_max"]],
                               [min(stem_bn.min(), 0), stem_bn.max()], rtol=1e-4)
    kernel = model.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_allclose(ranges["quant_stem_conv/kernel_max"], np.abs(kernel).max(axis=(0, 1, 2)), rtol=1e-6)
    fit(qat, train)

    test = fashion(fashion_mnist_data_dir, "test", 128)
    x, y = images_of(test), np.concatenate([labels.numpy() for _, labels in test])
    report = compress.export(qat, tmp_path / "qat.tflite", verify_data=x[:64])
    flatbuffer = (tmp_path / "qat.tflite").read_bytes()
    assert op_histogram(flatbuffer)["LceBconv2d"] == 18
    types = input_types(flatbuffer)
    assert types["CONV_2D"] == {"INT8"} and types["FULLY_CONNECTED"] == {"INT8"}  # stem and head
    assert types["LceQuantize"] == {"FLOAT32"}  # the binary body stays float (scope "float_layers")
    assert report.parity.top1_agreement >= 0.95
    lce = run_tflite(Interpreter(flatbuffer, num_threads=1), x)
    assert accuracy(lce, y) == pytest.approx(accuracy(outputs(qat, x), y), abs=0.05)


@pytest.mark.slow
def test_qat_of_the_whole_graph_gives_an_int8_binary_body(fashion_mnist_data_dir):
    train = fashion(fashion_mnist_data_dir, images=64)
    qat = compress.quantize(build("rbnn_resnet20"), train, scope="all")
    with compress.quantize_scope():
        flatbuffer = convert_lce(qat)
    types = input_types(flatbuffer)
    assert op_histogram(flatbuffer)["LceBconv2d"] == 18
    assert types["LceQuantize"] == {"INT8"} and types["RELU_N1_TO_1"] == {"INT8"}
    probabilities = run_tflite(Interpreter(flatbuffer, num_threads=1), images_of(train)[:8])
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=0.02)


def test_qat_names_a_layer_it_cannot_quantize_or_leaves_it_float_when_asked(caplog):
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.PReLU(name="prelu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x))
    images = np.random.default_rng(0).uniform(0, 255, (8, *SHAPE)).astype(np.float32)
    with pytest.raises(ValueError, match=r"layer 'prelu' \(PReLU\).*unsupported='float'"):
        compress.quantize(model, images)
    with caplog.at_level(logging.WARNING, logger="zoo.compress.quantization"):
        qat = compress.quantize(model, images, unsupported="float")
    assert "'prelu' (PReLU)" in caplog.text
    assert type(qat.get_layer("prelu")) is keras.layers.PReLU
    assert type(qat.get_layer("quant_conv")).__name__ == "QuantizeWrapperV2"


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_bnn():
    """Built once for the argument checks, which refuse before they change or wrap it."""
    return build("bnn_resnet20")


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, "0.5", None])
def test_sparsity_outside_zero_one_is_an_error(sparsity, untrained_bnn):
    model = untrained_bnn
    for structure in (None, "channel"):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            compress.prune(model, sparsity, structure=structure, end_step=10, data=np.zeros((1, *SHAPE)))


def test_a_model_with_nothing_to_prune_is_an_error():
    inputs = keras.Input(SHAPE)
    x = lq.layers.QuantConv2D(8, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False,
                              name="binary")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x))
    with pytest.raises(ValueError, match="no layer TF-MOT can prune.*structure='channel'"):
        compress.prune(model, 0.5, end_step=10)
    bireal = zoo.load("rbnn_resnet20_bireal", weights=None, input_shape=SHAPE)  # an add after every conv
    with pytest.raises(ValueError, match="no conv that can lose filters"):
        compress.prune(bireal, 0.5, structure="channel", data=np.zeros((2, *SHAPE), np.float32))
    with pytest.raises(ValueError, match="end_step"):
        compress.prune(build("fp_resnet20"), 0.5)  # polynomial: where does it end?
    with pytest.raises(ValueError, match="must be 0.5"):
        compress.prune(build("fp_resnet20"), 0.3, structure="2:4")


@pytest.mark.parametrize("options, message", [
    (["--prune", "1.5"], "in [0, 1)"),
    (["--prune", "0.5", "--fade", "1.5"], "fade must be a fraction of the fine-tune in [0, 1], got 1.5"),
    (["--prune", "0.5", "--learning-rate=-1"], "learning rate must be a positive number, got -1.0"),
    (["--qat", "--qat-learning-rate", "nan"], "QAT learning rate must be a positive number, got nan"),
])
def test_cli_compress_settings_outside_their_range_are_errors(options, message, tmp_path, capsys):
    assert cli.main(["compress", "bnn_resnet20", *options, "--dataset", "fashion_mnist", "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


# -- the pipeline ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_compress_runs_end_to_end_on_real_images(fashion_mnist_data_dir, tmp_path, capsys):
    output = tmp_path / "out"
    status = cli.main(["compress", "bnn_resnet20", "--prune", "0.5", "--qat", "--epochs", "1",
                       "--dataset", "fashion_mnist", "--data-dir", fashion_mnist_data_dir, "--train-images", "128",
                       "--test-images", "128", "--hrank-batches", "1", "--latency-repeats", "3", "--fade", "0.5",
                       "-o", str(output)])
    assert status == 0
    printed = capsys.readouterr()
    assert "[5/5] measuring" in printed.err and "| binary MACs | 30,707,712 | 15,353,856 | 50.0% fewer |" in printed.out
    report = json.loads((output / "report.json").read_text())
    assert report["test_images"] == 128 and report["pruning"]["structure"] == "channel"
    assert report["pruning"]["fade_steps"] == 1  # half of the 2 steps: the filters faded out, then cut
    assert report["gains"]["binary_macs_cut"] == pytest.approx(0.5)
    assert 0.0 <= report["compressed"]["tflite_accuracy"] <= 1.0 and report["compressed"]["latency_ms"] > 0
    assert op_histogram((output / "model.tflite").read_bytes())["LceBconv2d"] == 18
    assert (output / "original.tflite").stat().st_size == report["original"]["tflite_bytes"]
    assert (output / "report.md").read_text().startswith("`bnn_resnet20` on fashion_mnist")

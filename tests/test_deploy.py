"""zoo.convert and zoo.benchmark: every binary model as LceBconv2d, parity through LCE's
interpreter, int8 float parts, QAT and float models through TFLite, bad input, the CLI."""

import json
import logging
import os

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import zoo
from test_export import BINARY_MODELS, build_trained_looking, small_input
from zoo import registry
from zoo.cli import main
from zoo.deploy import ConversionError, lce_interpreter, run_tflite
from zoo.export import binary_exports, lce_flatbuffer, lce_rounding_guarded, op_histogram, to_inference


def _parity_models() -> set[str]:
    """One model per method, the methods spread over the architectures (the max-pool
    fold of VGG-small, the binary 1x1 shortcuts of the CIFAR ResNet-18, ...)."""
    architectures = ("resnet20", "resnet18", "vgg_small", "resnet18_cifar")
    methods = sorted({registry.get_model_spec(n).scheme.name for n in BINARY_MODELS})
    chosen = set()
    for i, method in enumerate(methods):
        preferred = f"{method}_{architectures[i % len(architectures)]}"
        chosen.add(preferred if preferred in BINARY_MODELS else zoo.list_models(f"{method}_*")[0])
    return chosen


PARITY_MODELS = _parity_models()
#: Every binary model but the ResNet-34s: a ResNet-34 is its method's ResNet-18 (same stem,
#: blocks, downsampling and head) with more blocks per stage, and at 21 M weights each one
#: costs the suite 20-40 s to convert. Their export rule is checked in tests/test_export.py.
CONVERTED_MODELS = [name for name in BINARY_MODELS
                    if registry.get_model_spec(name).architecture.name not in ("resnet34", "resnet34_official")]


def real_images(shape, data_dir, count=64, split="test"):
    images, _ = next(iter(zoo.load_dataset(
        "fashion_mnist", split, batch_size=count, take=count, training=False, data_dir=data_dir,
        image_size=shape[:2], channels=shape[2],
    )))
    return images.numpy()


@pytest.mark.parametrize("name", CONVERTED_MODELS)
def test_every_binary_model_converts_with_every_binary_conv_as_bconv(name, fashion_mnist_data_dir, tmp_path):
    model = build_trained_looking(name)
    path = tmp_path / f"{name}.tflite"
    verify = name in PARITY_MODELS
    report = zoo.convert(model, path, verify=verify, data_dir=fashion_mnist_data_dir)

    ops = report.ops
    assert path.stat().st_size == report.file_bytes
    assert op_histogram(path.read_bytes()) == ops
    assert ops["LceBconv2d"] == report.binary_layers == len(binary_exports(model)) > 0
    assert ops["LceQuantize"] <= ops["LceBconv2d"]  # one per distinct binary input
    assert ops.get("CONV_2D", 0) == sum(type(layer) is keras.layers.Conv2D for layer in model.layers)
    assert ops["FULLY_CONNECTED"] == 1
    if not verify:
        return
    # LCE's own tolerance is 1e-3. A rare sample may differ more: LCE's output transform
    # rounds differently from Keras' BN, and a near-zero pre-activation whose sign flips
    # takes that sample down another path. Untrained weights have no margin, so the bar
    # is 95% of the samples (measured on the seven methods' models: 61-64 of 64 within
    # 1e-3, 63-64 of 64 with the same top-1).
    images = real_images(small_input(name), fashion_mnist_data_dir)
    expected = to_inference(model).predict(images, verbose=0)
    actual = run_tflite(lce_interpreter(path.read_bytes()), images)
    per_sample = np.max(np.abs(expected - actual), axis=1) / max(1.0, np.max(np.abs(expected)))
    agreement = np.mean(expected.argmax(1) == actual.argmax(1))
    assert np.mean(per_sample <= 1e-3) >= 0.95
    assert agreement >= 0.95
    assert report.parity.samples == 64 and report.parity.outputs == "logits"
    assert report.parity.top1_agreement == pytest.approx(agreement)
    assert report.parity.max_abs_diff == pytest.approx(np.max(np.abs(expected - actual)), rel=1e-3, abs=1e-6)


def test_the_frozen_graph_route_gives_lce_converters_own_result(fashion_mnist_data_dir):
    from larq_compute_engine import convert_keras_model

    inference = to_inference(build_trained_looking("bnn_resnet20"))
    # the same graph: ours guards the bconvs' output transforms before converting
    ours, theirs = lce_flatbuffer(inference), convert_keras_model(lce_rounding_guarded(inference))
    assert op_histogram(ours) == op_histogram(theirs)
    images = real_images((28, 28, 1), fashion_mnist_data_dir, count=16)
    np.testing.assert_array_equal(
        run_tflite(lce_interpreter(ours), images), run_tflite(lce_interpreter(theirs), images)
    )


def weight_types(flatbuffer: bytes) -> dict[str, set[str]]:
    """Operator kind -> the tensor types of its constant inputs (weights)."""
    from tensorflow.lite.python import schema_py_generated as schema

    tflite_model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    builtin = {value: key for key, value in vars(schema.BuiltinOperator).items() if key.isupper()}
    types = {value: key for key, value in vars(schema.TensorType).items() if key.isupper()}
    graph = tflite_model.subgraphs[0]
    found: dict[str, set[str]] = {}
    for op in graph.operators:
        kind = builtin[tflite_model.operatorCodes[op.opcodeIndex].builtinCode]
        for index in op.inputs[1:2]:  # the weights of CONV_2D and FULLY_CONNECTED
            found.setdefault(kind, set()).add(types[graph.tensors[index].type])
    return found


def test_int8_float_parts_make_a_smaller_file_with_binary_convs_kept(fashion_mnist_data_dir, tmp_path, caplog):
    model = zoo.load("bnn_resnet18", weights=None, input_shape=(32, 32, 3))
    floating = zoo.convert(model, tmp_path / "float.tflite", verify=False)
    with caplog.at_level(logging.WARNING, logger="larq"):
        quantized = zoo.convert(model, tmp_path / "int8.tflite", int8=True, representative_samples=64,
                                verify_samples=16, data_dir=fashion_mnist_data_dir)
    # the int8 graph rebuilds the ±1 inference convs: Larq's training advice does not apply
    assert not [record for record in caplog.records if "starved weights" in record.getMessage()]
    assert quantized.int8 and not floating.int8
    assert quantized.ops["LceBconv2d"] == floating.ops["LceBconv2d"] == 16
    types = weight_types((tmp_path / "int8.tflite").read_bytes())
    assert types["CONV_2D"] == types["FULLY_CONNECTED"] == {"INT8"}
    # the float weights (stem, 1x1 shortcuts, dense: 694k) shrink from 4 bytes to 1
    float_weights = sum(layer.count_params() for layer in model.layers if type(layer) in (keras.layers.Conv2D,
                                                                                          keras.layers.Dense))
    assert floating.file_bytes - quantized.file_bytes >= 0.9 * 3 * float_weights
    assert quantized.parity.samples == 16


def one_binary_layer_model():
    """Stem, one binary conv, pooled head: small enough to train in seconds."""
    inputs = keras.Input((28, 28, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = lq.layers.QuantConv2D(64, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False,
                              name="binary")(x)
    x = keras.layers.BatchNormalization(name="binary_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="one_binary_layer")


def test_int8_float_parts_agree_with_the_float_model(fashion_mnist_data_dir, tmp_path):
    # Trained briefly: random weights give near-tied logits, which any int8 rounding
    # reorders (measured: 25% top-1 agreement untrained, 100% after these 32 steps).
    model = one_binary_layer_model()
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(zoo.load_dataset("fashion_mnist", "train", batch_size=64, take=2048, seed=0,
                               data_dir=fashion_mnist_data_dir), epochs=1, verbose=0)
    calibration = real_images((28, 28, 1), fashion_mnist_data_dir, count=256, split="train")
    report = zoo.convert(model, tmp_path / "int8.tflite", int8=True, representative_data=calibration,
                         inference_input_type=tf.int8, inference_output_type="int8", verify_samples=256,
                         data_dir=fashion_mnist_data_dir)
    assert report.input_type == report.output_type == "int8" and report.ops["LceBconv2d"] == 1
    assert weight_types((tmp_path / "int8.tflite").read_bytes())["CONV_2D"] == {"INT8"}
    assert report.parity.samples == 256 and report.parity.top1_agreement >= 0.95


def test_full_precision_models_take_the_tflite_converter(fashion_mnist_data_dir, tmp_path):
    model = build_trained_looking("fp_resnet20")
    floating = zoo.convert(model, tmp_path / "float.tflite", data_dir=fashion_mnist_data_dir)
    assert floating.converter == "tflite" and floating.binary_layers == 0
    assert not [kind for kind in floating.ops if kind.startswith("Lce")]
    assert floating.parity.top1_agreement == 1.0 and floating.parity.max_abs_diff < 1e-3
    quantized = zoo.convert(model, tmp_path / "int8.tflite", int8=True, representative_samples=128,
                            data_dir=fashion_mnist_data_dir)
    assert quantized.file_bytes < 0.35 * floating.file_bytes
    assert quantized.parity.top1_agreement >= 0.85  # measured 0.95 on these weights


def test_a_qat_model_converts_to_int8_through_tflite(fashion_mnist_data_dir, tmp_path):
    import tensorflow_model_optimization as tfmot

    inputs = keras.Input((28, 28, 1), name="pixels")
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="small_cnn")
    qat = tfmot.quantization.keras.quantize_model(model)
    report = zoo.convert(qat, tmp_path / "qat.tflite", inference_input_type="int8", data_dir=fashion_mnist_data_dir)
    assert report.converter == "tflite" and report.int8 and report.input_type == "int8"
    assert weight_types((tmp_path / "qat.tflite").read_bytes())["CONV_2D"] == {"INT8"}
    assert report.parity.top1_agreement >= 0.95


# ---------------------------------------------------------------------------- bad input


@keras.utils.register_keras_serializable(package="test_deploy")
class SingularValues(keras.layers.Layer):
    """Serialisable, but SVD has no TFLite kernel."""

    def call(self, inputs):
        return inputs + tf.linalg.svd(inputs, compute_uv=False)[..., None]


class Unregistered(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


def toy_binary_model(extra=None, groups=1, binary=True):
    inputs = keras.Input((8, 8, 8), name="pixels")
    x = keras.layers.Conv2D(64, 3, padding="same", name="stem")(inputs)
    if extra is not None:
        x = extra(x)
    if binary:
        x = lq.layers.QuantConv2D(64, 3, padding="same", pad_values=1.0, groups=groups, input_quantizer="ste_sign",
                                  kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False,
                                  name="bconv")(x)
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="toy")


@pytest.mark.parametrize("binary", [True, False], ids=["lce", "tflite"])
def test_a_layer_the_converter_cannot_take_is_named_and_leaves_no_file(binary, tmp_path):
    model = toy_binary_model(SingularValues(name="singular_values"), binary=binary)
    existing = tmp_path / "model.tflite"
    existing.write_bytes(b"previous file")
    with pytest.raises(ConversionError, match=r"layer 'singular_values' \(SingularValues\).*Svd"):
        zoo.convert(model, existing, verify=False)
    assert existing.read_bytes() == b"previous file"
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_a_layer_that_cannot_be_rebuilt_for_export_is_named(tmp_path):
    model = toy_binary_model(Unregistered(name="doubler"))
    with pytest.raises(ConversionError, match=r"export failed at layer 'doubler' \(Unregistered\)"):
        zoo.convert(model, tmp_path / "model.tflite", verify=False)
    assert os.listdir(tmp_path) == []


def test_a_binary_conv_that_did_not_become_bconv_is_an_error_unless_allowed(tmp_path):
    model = toy_binary_model(groups=16)  # 4 input channels per group: LCE needs multiples of 32
    with pytest.raises(ConversionError, match=r"1 of 1 binary layers did not become LceBconv2d.*'bconv'"):
        zoo.convert(model, tmp_path / "model.tflite", verify=False)
    assert os.listdir(tmp_path) == []
    report = zoo.convert(model, tmp_path / "model.tflite", verify=False, allow_float_binary=True)
    assert report.binary_layers == 1 and report.bconv2d == 0 and report.ops["CONV_2D"] == 2


def test_an_unwritable_output_path_fails_first_and_writes_nothing(tmp_path):
    not_a_directory = tmp_path / "file.txt"
    not_a_directory.write_text("x")
    with pytest.raises(ConversionError, match="Cannot write .*file.txt/model.tflite: Not a directory"):
        zoo.convert("no_such_model", not_a_directory / "model.tflite")  # the path is checked before the name
    with pytest.raises(ConversionError, match="Cannot write .*: No such file or directory"):
        zoo.convert("bnn_resnet20", tmp_path / "missing" / "model.tflite")
    with pytest.raises(ConversionError, match="is a directory"):
        zoo.convert("bnn_resnet20", tmp_path)
    assert os.listdir(tmp_path) == ["file.txt"]


def test_data_of_the_wrong_shape_is_a_clear_error(tmp_path):
    model = toy_binary_model()
    with pytest.raises(ConversionError, match=r"representative data has shape \(4, 8, 8, 3\).*\(N, 8, 8, 8\)"):
        zoo.convert(model, tmp_path / "m.tflite", int8=True, representative_data=np.zeros((4, 8, 8, 3)))
    labelled_batches = tf.data.Dataset.from_tensor_slices((np.zeros((6, 8, 8, 3)), np.zeros(6))).batch(2)
    with pytest.raises(ConversionError, match=r"representative data has shape \(4, 8, 8, 3\)"):
        zoo.convert(model, tmp_path / "m.tflite", int8=True, representative_data=labelled_batches,
                    representative_samples=4)
    with pytest.raises(ConversionError, match=r"verification data has shape \(8, 8, 8\)"):
        zoo.convert(model, tmp_path / "m.tflite", verify_data=np.zeros((8, 8, 8)))
    with pytest.raises(ConversionError, match="int8 inputs or outputs need an int8 model"):
        zoo.convert(model, tmp_path / "m.tflite", inference_input_type=tf.int8)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- CLI, benchmark


def test_cli_convert_and_benchmark_round_trip(fashion_mnist_data_dir, tmp_path, capsys):
    weights = tmp_path / "bnn_resnet20.h5"
    zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10).save_weights(weights)
    output = tmp_path / "model.tflite"
    assert main(["convert", "bnn_resnet20", "-o", str(output), "--weights", str(weights), "--input-shape",
                 "28,28,1", "--data-dir", fashion_mnist_data_dir, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "verifying in LCE's interpreter on 64 fashion_mnist test images" in captured.err
    assert report["path"] == str(output) and report["file_bytes"] == output.stat().st_size
    assert report["ops"]["LceBconv2d"] == 18 and report["parity"]["top1_agreement"] >= 0.95

    assert main(["benchmark", str(output), "--vs", "bnn_resnet20", "--input-shape", "28,28,1", "--warmup", "1",
                 "--repeats", "5", "--json"]) == 0
    timing = json.loads(capsys.readouterr().out)
    first, second = timing["results"]
    assert first["model"] == "model.tflite" and first["parameters"] is None
    assert second["model"] == "bnn_resnet20" and second["parameters"] == report["parameters"]
    assert first["file_bytes"] == report["file_bytes"] and first["ops"] == second["ops"]
    assert 0 < first["median_ms"] <= first["p90_ms"] and timing["ratios"][0] == 1.0
    assert timing["interpreter"] == {"use_indirect_bgemm": True, "use_xnnpack": False} and timing["repeats"] == 5

    assert main(["convert", "bnn_resnet20", "-o", str(tmp_path / "missing" / "m.tflite"), "--quiet"]) == 2
    assert "zoo convert: error: Cannot write" in capsys.readouterr().err


def test_benchmark_compares_only_models_of_one_input(tmp_path):
    inputs = keras.Input((4, 4, 1))
    other = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    first = zoo.convert(toy_binary_model(), tmp_path / "a.tflite", verify=False)
    second = zoo.convert(other, tmp_path / "b.tflite", verify=False)
    with pytest.raises(ValueError, match=r"different inputs \[\(1, 4, 4, 1\), \(1, 8, 8, 8\)\]"):
        zoo.benchmark(first.path, vs=second.path, repeats=1, warmup=0)

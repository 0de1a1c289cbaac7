"""zoo.port: official RBNN PyTorch checkpoints, proven against the authors' own forward.

The fixture (tests/fixtures/rbnn_official_resnet20, see its README) was made by running the
authors' code (lmbxmu/RBNN, ``resnet20_1w1a``) on CPU: its state dict, 16 inputs, their
eval-mode logits and the binary kernels sign(w3) of all 18 binary convs. The ImageNet
layout has no such fixture; it is checked against :func:`reference_forward`, docs/methods/rbnn.md
§1.7 written in NumPy with PyTorch's semantics, itself checked against the fixture.
"""

import sys
from pathlib import Path

import larq as lq
import numpy as np
import pytest
import tf_keras as keras
import zoo
from helpers import randomize_batch_norms
from zoo import cli, port
from zoo.export import convert_lce, op_histogram, to_inference
from zoo.layers import MirrorSpatial
from zoo.schemes import rbnn

FIXTURE = Path(__file__).parent / "fixtures" / "rbnn_official_resnet20"
#: a standardized pre-activation closer to zero than this (in units of its per-sample std)
#: may take either sign under a different float summation order: ~100 float32 ulps
ROUNDING_MARGIN = 1e-5
RAW_INPUT = dict(input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0))  # the fixture's inputs are normalised


@pytest.fixture(scope="module")
def official():
    return {
        "state_dict": port.read_state_dict(FIXTURE / "state_dict.npz"),
        "inputs": np.load(FIXTURE / "inputs_nchw.npy").transpose(0, 2, 3, 1),
        "logits": np.load(FIXTURE / "logits.npy"),
        "kernels": dict(np.load(FIXTURE / "binary_kernels.npz")),
    }


@pytest.fixture(scope="module")
def ported(official):
    return port.rbnn_from_pytorch(official["state_dict"], classifier_activation=None, **RAW_INPUT)


def pre_activation_margins(model, x) -> np.ndarray:
    """Per input: the smallest |standardized input| of any binary conv (what ``sign`` sees)."""
    inputs = keras.Model(model.input, [layer.input for layer in rbnn.rbnn_layers(model)])(x)
    margins = []
    for a in inputs:
        centered = a.numpy().astype(np.float64).reshape(len(x), -1)
        centered -= centered.mean(axis=1, keepdims=True)
        margins.append(np.abs(centered).min(axis=1) / centered.std(axis=1, ddof=1))
    return np.min(margins, axis=0)


def per_input_error(expected, actual) -> np.ndarray:
    """max |Δ logit| of each input relative to its largest |logit|."""
    return np.abs(expected - actual).max(axis=1) / np.abs(expected).max(axis=1)


def unmirrored(layer, kernel_hwio):
    return kernel_hwio[::-1, ::-1] if layer.mirrored else kernel_hwio


# -- the CIFAR ResNet-20 against the authors' numbers ---------------------------------------
def test_every_ported_binary_kernel_is_the_official_sign_w3(official, ported):
    layers = {layer.name: layer for layer in rbnn.rbnn_layers(ported)}
    modules = [(m, name) for m, name, kind in port.LAYOUTS["resnet20"].modules() if kind == "binary_conv"]
    assert len(modules) == len(layers) == 18
    exported = to_inference(ported)
    for module, name in modules:
        expected = official["kernels"][f"{module}.binary_kernel"]  # OIHW, ±1
        layer = layers[name]
        kernel = unmirrored(layer, layer.binary_kernel().numpy())
        np.testing.assert_array_equal(kernel.transpose(3, 2, 0, 1), expected, err_msg=module)
        # the exported ±1 kernel carries sign(α) (to_inference folds only |α| into BN)
        alpha_sign = np.where(official["state_dict"][f"{module}.alpha"].ravel() >= 0, 1.0, -1.0)
        exported_kernel = unmirrored(layer, exported.get_layer(name).get_weights()[0])
        np.testing.assert_array_equal(exported_kernel.transpose(3, 2, 0, 1), expected * alpha_sign[:, None, None, None])
    print("smallest |w3| of any layer:", min(float(official["kernels"][f"{m}.w3_min_abs"]) for m, _ in modules))


def test_ported_logits_match_the_official_ones(official, ported):
    x = official["inputs"]
    errors = per_input_error(official["logits"], ported(x, training=False).numpy())
    clear = pre_activation_margins(ported, x) >= ROUNDING_MARGIN
    print(f"{clear.sum()} of {len(x)} inputs have no pre-activation within {ROUNDING_MARGIN:g} std of zero; "
          f"relative logit errors: clear max {errors[clear].max():.2g}, all max {errors.max():.2g}")
    assert clear.sum() >= len(x) // 2  # the comparison covers most inputs, not a convenient few
    assert np.all(errors[clear] <= 1e-4)


def test_todays_rbnn_resnet20_defaults_do_not_compute_the_reference(official, ported):
    """The port needs its own padding: the zoo's rbnn_resnet20 (+1 padding, TF's stride-2
    padding) with the same weights gives other logits — and keeps its defaults."""
    own = zoo.load("rbnn_resnet20", weights=None, classifier_activation=None, **RAW_INPUT)
    own.set_weights(ported.get_weights())
    assert {(layer.pad_values, layer.mirrored) for layer in rbnn.rbnn_layers(own)} == {(1.0, False)}
    assert not any(isinstance(layer, MirrorSpatial) for layer in own.layers)
    errors = per_input_error(official["logits"], own(official["inputs"], training=False).numpy())
    assert np.median(errors) > 0.1

    official_layers = rbnn.rbnn_layers(ported)
    assert {layer.pad_values for layer in official_layers} == {0.0}
    assert [layer.name for layer in official_layers if layer.mirrored] == ["stage2_block1_conv1", "stage3_block1_conv1"]


def test_the_export_and_its_lce_file_compute_the_reference(official, ported):
    """Zero padding and the mirrored stride-2 convs survive to_inference and LCE: the
    .tflite agrees with the Keras model, and so with the authors' logits."""
    x = official["inputs"]
    keras_logits = ported(x, training=False).numpy()
    clear = pre_activation_margins(ported, x) >= ROUNDING_MARGIN
    inference = to_inference(ported)
    assert np.all(per_input_error(keras_logits, inference(x, training=False).numpy())[clear] <= 1e-4)

    from larq_compute_engine.tflite.python.interpreter import Interpreter

    flatbuffer = convert_lce(ported)
    ops = op_histogram(flatbuffer)
    assert ops["LceBconv2d"] == 18 and ops["REVERSE_V2"] == 4 and "CONV_2D" in ops
    lce_logits = Interpreter(flatbuffer, num_threads=1).predict(x)
    lce_errors = per_input_error(keras_logits, lce_logits)
    print(f"LCE vs Keras on {clear.sum()} clear inputs: max {lce_errors[clear].max():.2g}; all inputs: "
          f"{np.sum(lce_errors <= 1e-4)} of {len(x)} within 1e-4")
    assert np.all(lce_errors[clear] <= 1e-4)
    assert np.all(per_input_error(official["logits"], lce_logits)[clear] <= 1e-4)


def test_the_state_dict_round_trip_is_exact(official, ported):
    back = port.rbnn_state_dict(ported)
    assert set(back) == set(official["state_dict"])
    for name, value in official["state_dict"].items():
        if name.endswith("num_batches_tracked"):
            assert back[name].shape == () and back[name] == 0  # not part of the model: written as 0
        else:
            np.testing.assert_array_equal(back[name], value.astype(np.float32), err_msg=name)


def test_zoo_port_writes_weights_zoo_load_reads(official, ported, tmp_path, capsys):
    output = tmp_path / "rbnn.h5"
    assert cli.main(["port", "rbnn", str(FIXTURE / "state_dict.npz"), "-o", str(output)]) == 0
    assert 'zoo.load("rbnn_resnet20_official"' in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["rbnn.h5"]  # no partial file left
    loaded = zoo.load("rbnn_resnet20_official", weights=str(output), classifier_activation=None, **RAW_INPUT)
    x = official["inputs"][:4]
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), ported(x, training=False).numpy())


def test_data_parallel_prefixes_are_dropped(official, ported):
    prefixed = {f"module.{name}": value for name, value in official["state_dict"].items()}
    model = port.rbnn_from_pytorch(prefixed, "resnet20", classifier_activation=None, **RAW_INPUT)
    for a, b in zip(model.get_weights(), ported.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_info_names_the_variant_honestly():
    details = zoo.info("rbnn_resnet20_official")
    assert "PyTorch reference" in details["architecture_description"]
    assert [(r["dataset"], r["top1"]) for r in details["reported"]] == [("cifar10", 86.5)]
    assert details["binary_convs"] == 18
    assert zoo.list_models("rbnn_*_official") == [
        "rbnn_resnet18_official", "rbnn_resnet20_official", "rbnn_resnet34_official"]
    assert zoo.list_models("bnn_*_official") == []


# -- bad checkpoints: one line each ---------------------------------------------------------
def edited(state_dict, **changes):
    result = dict(state_dict)
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            del result[name]
        else:
            result[name] = value
    return result


@pytest.mark.parametrize("change, message", [
    ({"layer2__1__conv1__R2": None}, "lacks 'layer2.1.conv1.R2'"),
    ({"layer1__0__conv1__R1": np.eye(13, dtype=np.float32)}, r"'layer1.0.conv1.R1' has shape \(13, 13\).*\(12, 12\)"),
    ({"layer4__0__conv1__weight": np.zeros((64, 64, 3, 3), np.float32)}, "'layer4.0.conv1.weight' is not part of"),
    ({"bn2__bias": np.full(64, np.nan, np.float32)}, "'bn2.bias' holds non-finite values"),
    ({"layer3__2__bn1__running_var": -np.ones(64, np.float32)}, "negative variances"),
    ({"linear__bias": np.array(["x"] * 10)}, "'linear.bias' has dtype <U1, not a number type"),
    ({"linear__weight": np.zeros(10, np.float32)}, r"lacks 'linear.weight' \(classes × features\)"),
])
def test_bad_state_dicts_name_the_problem(official, change, message):
    with pytest.raises(port.PortError, match=message):
        port.rbnn_from_pytorch(edited(official["state_dict"], **change), "resnet20")


def test_unknown_arch_and_other_inputs(official):
    with pytest.raises(port.PortError, match="Unknown official RBNN architecture 'vgg_small'"):
        port.rbnn_from_pytorch(official["state_dict"], "vgg_small")
    with pytest.raises(port.PortError, match="Expected a state dict"):
        port.rbnn_from_pytorch([1, 2, 3])
    with pytest.raises(port.PortError, match="not an official RBNN layout"):
        port.rbnn_state_dict(zoo.load("rbnn_resnet20", weights=None))


def write_object_npz(path):
    np.savez(path, **{"conv1.weight": np.array([{"a": 1}], dtype=object)})


@pytest.mark.parametrize("filename, write, message", [
    ("missing.npz", None, "does not exist"),
    ("weights.txt", lambda p: p.write_text("x"), "unknown file type '.txt'"),
    ("broken.npz", lambda p: p.write_bytes(b"PK\x03\x04 not a zip"), "not a readable .npz file"),
    ("objects.npz", write_object_npz, "only unpickling could read"),
])
def test_zoo_port_rejects_bad_files_in_one_line(tmp_path, capsys, filename, write, message):
    path = tmp_path / filename
    if write is not None:
        write(path)
    assert cli.main(["port", "rbnn", str(path), "-o", str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out.h5").exists()


def test_zoo_port_rejects_an_unwritable_output(tmp_path, capsys):
    assert cli.main(["port", "rbnn", str(FIXTURE / "state_dict.npz"), "-o", str(tmp_path / "no" / "w.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["port", "rbnn", str(FIXTURE / "state_dict.npz"), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_torch_file_without_torch_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "rbnn.pth"
    path.write_bytes(b"not read: torch is missing")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails, as without the extra
    with pytest.raises(port.PortError, match=r"PyTorch is not installed: install PyTorch \(pip install 'zoo\[torch\]'\)"):
        port.read_state_dict(path)


def test_torch_files_are_read_with_weights_only(official, ported, tmp_path):
    torch = pytest.importorskip("torch")
    checkpoint = {"epoch": 3, "best_prec1": 86.5,  # as the reference's save_checkpoint writes it
                  "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in official["state_dict"].items()}}
    torch.save(checkpoint, tmp_path / "checkpoint.pth.tar.pth")
    model = port.rbnn_from_pytorch(tmp_path / "checkpoint.pth.tar.pth", classifier_activation=None, **RAW_INPUT)
    for a, b in zip(model.get_weights(), ported.get_weights()):
        np.testing.assert_array_equal(a, b)
    in_memory = port.rbnn_from_pytorch(checkpoint["state_dict"], classifier_activation=None, **RAW_INPUT)
    for a, b in zip(in_memory.get_weights(), ported.get_weights()):
        np.testing.assert_array_equal(a, b)

    torch.save({"state_dict": Path("an arbitrary object")}, tmp_path / "pickled.pt")
    with pytest.raises(port.PortError, match=r"weights_only=True\) \(Unsupported global: GLOBAL pathlib.PosixPath"):
        port.read_state_dict(tmp_path / "pickled.pt")


# -- the ImageNet ResNet-18/34 layout (no official checkpoint at hand) ----------------------
def torch_conv(x, w, stride, pad):
    """``F.conv2d`` (NCHW, OIHW, zero padding on every side)."""
    x = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    kh, kw = w.shape[2:]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.tensordot(patches, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def torch_max_pool(x, size, stride, pad):
    x = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(2, 3))[:, :, ::stride, ::stride].max((4, 5))


def reference_forward(sd, x, arch):
    """The official RBNN networks' eval forward (docs/methods/rbnn.md#what-the-layer-computes, #architectures; the fixture's
    README), float64, NCHW: unbiased std, torch.sign (sign(0) = 0), symmetric padding."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}

    def bn(v, m):
        shape = (1, -1) + (1,) * (v.ndim - 2)
        scale = sd[f"{m}.weight"] / np.sqrt(sd[f"{m}.running_var"] + 1e-5)
        return (v - sd[f"{m}.running_mean"].reshape(shape)) * scale.reshape(shape) + sd[f"{m}.bias"].reshape(shape)

    def binary_conv(v, m, stride):
        w = sd[f"{m}.weight"]
        w1 = w - w.mean(axis=(1, 2, 3), keepdims=True)
        w2 = w1 / w1.std(axis=(1, 2, 3), ddof=1, keepdims=True)
        r1, r2 = sd[f"{m}.R1"], sd[f"{m}.R2"]
        w3 = (r1.T @ w2.reshape(len(w), len(r1), len(r2)) @ r2).reshape(w.shape)
        w3 = w2 + np.abs(np.sin(sd[f"{m}.rotate"])) * (w3 - w2)
        a1 = v - v.mean(axis=(1, 2, 3), keepdims=True)
        a2 = a1 / a1.std(axis=(1, 2, 3), ddof=1, keepdims=True)
        return torch_conv(np.sign(a2), np.sign(w3), stride, 1) * sd[f"{m}.alpha"]

    def hardtanh(v):
        return np.clip(v, -1.0, 1.0)

    layout = port.LAYOUTS[arch]
    if arch == "resnet20":
        out = hardtanh(bn(torch_conv(x, sd["conv1.weight"], 1, 1), "bn1"))
    else:
        out = torch_max_pool(hardtanh(bn(torch_conv(x, sd["conv1.weight"], 2, 3), "bn1")), 3, 2, 1)
    for stage, blocks in enumerate(layout.blocks_per_stage, start=1):
        for block in range(blocks):
            m, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            if arch == "resnet20":  # BasicBlock_1w1a, option-A shortcut
                h = hardtanh(bn(binary_conv(out, f"{m}.conv1", stride), f"{m}.bn1"))
                h = bn(binary_conv(h, f"{m}.conv2", 1), f"{m}.bn2")
                shortcut = out
                if stride != 1:
                    planes = h.shape[1]
                    shortcut = np.pad(out[:, :, ::2, ::2], [(0, 0), (planes // 4, planes // 4), (0, 0), (0, 0)])
                out = hardtanh(h + shortcut)
            else:  # Bi-Real block, float 1x1 conv + BN downsampling
                residual = out
                if f"{m}.downsample.0.weight" in sd:
                    residual = bn(torch_conv(out, sd[f"{m}.downsample.0.weight"], stride, 0), f"{m}.downsample.1")
                h = hardtanh(bn(binary_conv(out, f"{m}.conv1", stride), f"{m}.bn1") + residual)
                out = hardtanh(bn(binary_conv(h, f"{m}.conv2", 1), f"{m}.bn2") + h)
    features = bn(out.mean(axis=(2, 3)), "bn2")
    return features @ sd[f"{layout.linear}.weight"].T + sd[f"{layout.linear}.bias"]


def test_the_numpy_reference_reproduces_the_official_logits(official, ported):
    """What vouches for :func:`reference_forward` on the ImageNet layout: on the CIFAR
    network it gives the authors' logits."""
    x = official["inputs"]
    clear = pre_activation_margins(ported, x) >= ROUNDING_MARGIN
    errors = per_input_error(official["logits"], reference_forward(official["state_dict"], x.transpose(0, 3, 1, 2),
                                                                   "resnet20"))
    assert np.all(errors[clear] <= 1e-4)


def trained_looking_official(arch, input_shape=(32, 32, 3), classes=1000):
    model = zoo.load(f"rbnn_{arch}_official", weights=None, input_shape=input_shape, classes=classes,
                     classifier_activation=None, **RAW_INPUT)
    randomize_batch_norms(model)
    rng = np.random.default_rng(7)
    for layer in rbnn.rbnn_layers(model):  # R1, R2 start as random orthogonal matrices
        layer.theta.assign(rng.uniform(0, np.pi, layer.theta.shape).astype(np.float32))
        layer.alpha.assign(rng.normal(0, 1, layer.alpha.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("arch, binary_convs", [("resnet18", 16), ("resnet34", 32)])
def test_imagenet_names_and_shapes(arch, binary_convs):
    """Names as the official models_imagenet/resnet.py would give them (derived from
    docs/methods/rbnn.md#architectures and PyTorch's conventions: ``downsample.0`` conv, ``downsample.1``
    BN, ``fc``; the file itself was not available), shapes from docs/methods/rbnn.md#what-the-layer-computes."""
    sd = port.rbnn_state_dict(trained_looking_official(arch))
    assert sum(name.endswith(".R1") for name in sd) == binary_convs
    assert [n for n in sd if "downsample" in n and n.endswith("weight")] == [
        f"layer{s}.0.downsample.{i}.weight" for s in (2, 3, 4) for i in (0, 1)]
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["fc.weight"].shape == (1000, 512)
    assert sd["bn2.running_var"].shape == (512,) and sd["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert sd["layer4.1.conv1.alpha"].shape == (512, 1, 1) and sd["layer4.1.conv1.rotate"].shape == (512, 1, 1, 1)
    rotations = {(name.split(".")[0], sd[name].shape, sd[name.replace("R1", "R2")].shape)
                 for name in sd if name.endswith("conv2.R1")}
    # docs/methods/rbnn.md#what-the-layer-computes: C_in = 64, 128, 256, 512 → (24, 24), (32, 36), (48, 48), (64, 72)
    assert rotations == {("layer1", (24, 24), (24, 24)), ("layer2", (32, 32), (36, 36)),
                         ("layer3", (48, 48), (48, 48)), ("layer4", (64, 64), (72, 72))}
    assert port.detect_arch(sd) == arch
    extra = {**sd, "bn3.weight": np.ones(1000, np.float32)}  # defined by the reference, unused by its forward
    assert port.rbnn_from_pytorch(extra, input_shape=(32, 32, 3)).name == f"rbnn_{arch}_official"


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet34", marks=pytest.mark.slow)])
def test_imagenet_round_trip_and_the_reference_forward(arch):
    """At 32x32 inputs: every stride-2 conv and pool then sees an even size, where TF's
    padding differs from PyTorch's."""
    model = trained_looking_official(arch, classes=10)
    sd = port.rbnn_state_dict(model)
    back = port.rbnn_from_pytorch(sd, arch, input_shape=(32, 32, 3), classifier_activation=None, **RAW_INPUT)
    for layer in model.layers:
        for a, b in zip(layer.get_weights(), back.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)

    x = np.random.default_rng(3).normal(size=(4, 32, 32, 3)).astype(np.float32)
    keras_logits = back(x).numpy()
    np.testing.assert_array_equal(keras_logits, model(x).numpy())
    clear = pre_activation_margins(back, x) >= ROUNDING_MARGIN
    errors = per_input_error(reference_forward(sd, x.transpose(0, 3, 1, 2), arch), keras_logits)
    print(f"{arch}: {clear.sum()} of {len(x)} clear inputs, relative errors {errors}")
    assert clear.sum() >= 2 and np.all(errors[clear] <= 1e-4)


def test_imagenet_port_exports_with_pm1_kernels():
    model = trained_looking_official("resnet18", classes=10)
    inference = to_inference(model)
    x = np.random.default_rng(4).normal(size=(4, 32, 32, 3)).astype(np.float32)
    clear = pre_activation_margins(model, x) >= ROUNDING_MARGIN
    errors = per_input_error(model(x).numpy(), inference(x).numpy())
    assert clear.sum() >= 2 and np.all(errors[clear] <= 1e-4)
    binary = [layer for layer in inference.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert len(binary) == 16 and all(set(np.unique(layer.get_weights()[0])) <= {-1.0, 1.0} for layer in binary)

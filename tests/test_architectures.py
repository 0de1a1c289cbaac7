"""Every registered model builds; the architectures have the reference sizes and layout."""

import larq as lq
import numpy as np
import pytest
import tf_keras as keras
import zoo
from helpers import random_pixels
from zoo import registry

ALL_MODELS = zoo.list_models()


def _one_model_per_architecture() -> list[str]:
    """The head and pooling are the architecture builder's: one model of each checks them."""
    chosen = {}
    for name in ALL_MODELS:
        chosen.setdefault(registry.get_model_spec(name).architecture.name, name)
    return sorted(chosen.values())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_at_default_input(name):
    spec = registry.get_model_spec(name)
    model = zoo.load(name, weights=None)
    assert model.input_shape[1:] == spec.architecture.default_input_shape
    assert model.output_shape == (None, spec.architecture.default_classes)


@pytest.mark.parametrize("name", _one_model_per_architecture())
def test_builds_as_feature_extractor(name):
    features = zoo.load(name, weights=None, include_top=False)
    assert len(features.output_shape) == 4
    assert "predictions" not in [layer.name for layer in features.layers]
    pooled = zoo.load(name, weights=None, include_top=False, pooling="avg")
    assert len(pooled.output_shape) == 2


@pytest.mark.parametrize(
    "name, reference",
    [
        ("bnn_resnet18", 11_689_512),  # torchvision resnet18
        ("fp_resnet34", 21_797_672),  # torchvision resnet34
        ("xnor_resnet20", 269_722),  # He et al. 2016: 0.27 M
        ("bireal_resnet18_cifar", 11_173_962),  # kuangliu CIFAR ResNet-18
    ],
)
def test_parameter_counts_match_the_reference_architectures(name, reference):
    params = zoo.load(name, weights=None).count_params()
    assert abs(params - reference) / reference < 0.01


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if not n.endswith(("resnet18", "resnet34"))])
def test_cifar_style_models_take_fashion_mnist_shape(name):
    model = zoo.load(name, weights=None, input_shape=(28, 28, 1), classes=10)
    out = model(random_pixels((28, 28, 1), batch=2), training=False).numpy()
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_first_conv_and_last_dense_stay_float_and_block_convs_are_binary():
    model = zoo.load("bnn_resnet18_cifar", weights=None)
    binary = [layer.name for layer in model.layers if isinstance(layer, lq.layers.QuantConv2D)]
    assert len(binary) == 16 + 3  # 3x3 block convs + binary 1x1 shortcuts (docs/methods/rbnn.md#architectures)
    assert type(model.get_layer("stem_conv")) is keras.layers.Conv2D
    assert type(model.get_layer("predictions")) is keras.layers.Dense

    imagenet = zoo.load("bnn_resnet18", weights=None, input_shape=(64, 64, 3))
    shortcuts = [layer for layer in imagenet.layers if "shortcut_conv" in layer.name]
    assert len(shortcuts) == 3 and all(type(layer) is keras.layers.Conv2D for layer in shortcuts)

    fp = zoo.load("fp_resnet20", weights=None)
    assert not any(isinstance(layer, lq.layers.QuantConv2D) for layer in fp.layers)


def test_bireal_puts_a_shortcut_around_every_conv():
    def adds(name):
        return sum(isinstance(layer, keras.layers.Add) for layer in zoo.load(name, weights=None).layers)

    assert adds("bnn_resnet20") == 9
    assert adds("bireal_resnet20") == 18


def test_the_model_normalises_raw_pixels_itself():
    model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), input_mean=[72.94], input_std=[90.02])
    normalize = model.get_layer("normalize")
    x = np.full((1, 28, 28, 1), 72.94, np.float32)
    np.testing.assert_allclose(normalize(x).numpy(), 0.0, atol=1e-5)
    uint8 = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(model.predict(uint8, verbose=0), model.predict(uint8.astype(np.float32), verbose=0))


@pytest.mark.parametrize(
    "name, shape, message",
    [
        ("bnn_resnet18", (16, 16, 3), "too small"),
        ("bnn_resnet20", (4, 4, 1), "too small"),
        ("bnn_resnet20", (32, 32), "height, width, channels"),
        ("bnn_resnet20", (32, 32, 2), "input_mean and input_std"),
    ],
)
def test_bad_input_shapes_are_refused(name, shape, message):
    with pytest.raises(ValueError, match=message):
        zoo.load(name, weights=None, input_shape=shape)


def test_bad_classes_and_pooling_are_refused():
    with pytest.raises(ValueError, match="classes"):
        zoo.load("bnn_resnet20", weights=None, classes=0)
    with pytest.raises(ValueError, match="pooling"):
        zoo.load("bnn_resnet20", weights=None, include_top=False, pooling="mean")


def test_resnet18_cifar_widths_give_the_widened_variants():
    model = zoo.load("bnn_resnet18_cifar", weights=None, widths=(32, 64, 128, 256))
    assert [model.get_layer(f"stage{i}_block1_conv1").filters for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    assert model.get_layer("stem_conv").filters == 32


def _one_model_per_builder() -> list[str]:
    """A model of every architecture builder (RBNN's where it has one: its convs pad themselves)."""
    from zoo.architectures import ARCHITECTURES

    names = []
    for arch in ARCHITECTURES:
        models = zoo.list_models(f"*_{arch.name}")
        models = [m for m in models if registry.get_model_spec(m).architecture is arch]
        names.append(next((m for m in models if m.startswith("rbnn_")), models[0]))
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _one_model_per_builder())
def test_builders_take_keras_applications_arguments(name):
    """keras.applications' own tests: a feature extractor of any image size (None height and
    width), on a given input_tensor, with pooling; here also run on an odd-sized image."""
    from zoo import models

    channels = registry.get_model_spec(name).architecture.default_input_shape[-1]
    pixels = keras.Input(shape=(None, None, channels))
    model = getattr(models, name)(weights=None, include_top=False, input_tensor=pixels, pooling="max")
    assert model.inputs[0] is pixels
    assert len(model.output_shape) == 2 and model.output_shape[0] is None
    features = model(random_pixels((33, 35, channels), batch=1))
    assert features.shape == (1, model.output_shape[1]) and np.all(np.isfinite(features))
    keras.backend.clear_session()


def test_model_functions_have_keras_applications_signature():
    import inspect

    from zoo import models

    expected = list(inspect.signature(keras.applications.VGG16).parameters)
    assert expected == ["include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
                        "classifier_activation"]
    assert list(inspect.signature(models.bnn_resnet20).parameters)[: len(expected)] == expected
    model = models.bnn_resnet20(weights=None, input_shape=(28, 28, 1), classes=7, classifier_activation=None)
    assert model.output_shape == (None, 7) and model.get_layer("predictions").activation is keras.activations.linear


def test_input_tensor_is_built_upon_and_checked():
    image = keras.Input(shape=(32, 32, 3), name="image")
    resized = keras.layers.Resizing(28, 28, name="resize")(image)
    model = zoo.load("xnor_resnet20", weights=None, input_tensor=resized, classes=5)
    assert model.inputs[0] is image and model.input_shape == (None, 32, 32, 3)
    assert model.get_layer("normalize").input_shape == (None, 28, 28, 3)
    with pytest.raises(ValueError, match=r"differs from input_tensor's shape \(28, 28, 3\)"):
        zoo.load("xnor_resnet20", weights=None, input_tensor=resized, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="input_tensor must be a Keras tensor"):
        zoo.load("xnor_resnet20", weights=None, input_tensor=np.zeros((1, 28, 28, 3), np.float32))


def test_variable_image_size_only_without_the_top():
    with pytest.raises(ValueError, match="may be None with include_top=False"):
        zoo.load("bnn_vgg_small", weights=None, input_shape=(None, None, 3))
    model = zoo.load("bnn_vgg_small", weights=None, include_top=False, input_shape=(None, None, 3))
    assert model.output_shape == (None, None, None, 512)


def test_wrn_takes_a_width_multiplier_like_the_resnets():
    model = zoo.load("bonn_wrn22", weights=None, width=1, width_multiplier=2, input_shape=(28, 28, 1))
    assert model.get_layer("stem_conv").filters == 32
    assert [model.get_layer(f"stage{s}_block1_conv1").filters for s in (1, 2, 3)] == [32, 64, 128]
    with pytest.raises(ValueError, match="width_multiplier must be a positive integer"):
        zoo.load("bonn_wrn22", weights=None, width_multiplier=0)

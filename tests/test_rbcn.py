"""RBCN (docs/methods/rbcn.md): rectified conv and kernel loss, adversarial trainer, BN pass, export, recipe."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import zoo
from helpers import random_pixels, randomize_batch_norms, relative_error
from larq_compute_engine.tflite.python.interpreter import Interpreter
from training.loop import prepare_teacher
from training.recipes import Recipe
from training.recipes.rbcn import RBCNRecipe
from zoo import registry
from zoo.distillation import Distiller
from zoo.export import convert_lce, op_histogram, to_inference
from zoo.schemes import rbcn

SHAPE = (28, 28, 1)


def built_layer(variant, cin=5, filters=4, seed=0):
    layer = rbcn.RectifiedBinaryConv2D(filters, 3, variant=variant, name="conv")
    layer.build((None, 6, 6, cin))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.uniform(-1.2, 1.2, layer.kernel.shape).astype(np.float32))  # some outside [-1, 1]
    layer.rectifier.assign(rng.normal(0.3, 0.2, layer.rectifier.shape).astype(np.float32))
    return layer


def approx_sign_derivative(w):
    return np.where(np.abs(w) <= 1.0, 2.0 - 2.0 * np.abs(w), 0.0)  # 2 + 2W on [-1, 0), 2 - 2W on [0, 1)


@pytest.mark.parametrize("variant, shared_axes", [("deployable", (0, 1, 2)), ("faithful", (3,))])
def test_kernel_loss_and_its_gradients_are_the_books(variant, shared_axes):
    layer = built_layer(variant)
    w, c = layer.kernel.latent_variable.numpy(), layer.rectifier.numpy()
    w_hat = np.where(w >= 0, 1.0, -1.0)
    with tf.GradientTape() as tape:
        loss = layer.kernel_loss()
    grad_w, grad_c = tape.gradient(loss, [layer.kernel, layer.rectifier])
    lam = rbcn.KERNEL_LOSS_WEIGHT
    np.testing.assert_allclose(loss.numpy(), lam / 2 * np.sum((w - c * w_hat) ** 2), rtol=1e-5)
    # ∂L/∂Ŵ = −λ₁(W − C⊙Ŵ)⊙C, through ApproxSign's derivative to W (book 3.67, 3.71)
    np.testing.assert_allclose(grad_w.numpy(), -lam * (w - c * w_hat) * c * approx_sign_derivative(w),
                               rtol=1e-4, atol=1e-10)
    # ∂L/∂C = −λ₁ Σ_i (W_i − C⊙Ŵ_i)⊙Ŵ_i over the filters sharing C (book 3.75)
    np.testing.assert_allclose(grad_c.numpy(), -lam * np.sum((w - c * w_hat) * w_hat, axis=shared_axes, keepdims=True),
                               rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("variant", ["deployable", "faithful"])
def test_rectifier_starts_at_the_kernel_loss_minimiser(variant):
    layer = rbcn.RectifiedBinaryConv2D(8, 3, variant=variant)
    layer.build((None, 6, 6, 5))
    expected_shape = (1, 1, 1, 8) if variant == "deployable" else (3, 3, 5, 1)
    assert layer.rectifier.shape == expected_shape
    with tf.GradientTape() as tape:
        loss = layer.kernel_loss()
    assert np.abs(tape.gradient(loss, layer.rectifier).numpy()).max() < 1e-9
    assert layer.losses and layer.losses[0].numpy() == pytest.approx(loss.numpy())


def reference_forward(layer, x):
    """conv(sign(x) padded with +1, sign(W) ⊙ C), stride 1, written again in NumPy."""
    w = layer.kernel.latent_variable.numpy()
    kernel = np.where(w >= 0, 1.0, -1.0) * layer.rectifier.numpy()
    binary_x = np.pad(np.where(x >= 0, 1.0, -1.0), [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
    out = np.zeros((len(x), x.shape[1], x.shape[2], kernel.shape[-1]))
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", binary_x[:, i:i + 3, j:j + 3, :], kernel)
    return out


@pytest.mark.parametrize("variant", ["deployable", "faithful"])
def test_forward_convolves_the_binary_input_with_the_rectified_kernel(variant):
    layer = built_layer(variant)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), reference_forward(layer, x), rtol=1e-5, atol=1e-5)


def trained_looking(name="rbcn_resnet20", scheme=None):
    if scheme is None:
        model = zoo.load(name, weights=None, input_shape=SHAPE, classifier_activation=None)
    else:
        builder = registry.get_model_spec(name).architecture.builder
        model = builder(scheme, input_shape=SHAPE, classifier_activation=None)
    randomize_batch_norms(model)
    rng = np.random.default_rng(4)
    for layer in rbcn.rectified_layers(model):
        layer.rectifier.assign(rng.normal(0.0, 1.0, layer.rectifier.shape).astype(np.float32))  # negative too
    return model


def test_lce_runs_the_exported_rbcn(fashion_mnist_data_dir):
    model = trained_looking()
    inference = to_inference(model)
    x = random_pixels(SHAPE, batch=8)
    assert relative_error(model(x).numpy(), inference(x).numpy()) <= 1e-4
    assert not any("rectifier" in w.name for w in inference.weights)
    assert "RectifiedBinaryConv2D" not in {type(layer).__name__ for layer in inference.layers}

    flatbuffer = convert_lce(model)
    ops = op_histogram(flatbuffer)
    assert ops["LceBconv2d"] == 18 and ops.get("CONV_2D") == 1
    images, _ = next(iter(zoo.load_dataset("fashion_mnist", "test", batch_size=128, data_dir=fashion_mnist_data_dir)))
    expected = inference.predict(images.numpy(), verbose=0)
    actual = Interpreter(flatbuffer, num_threads=2).predict(images.numpy())
    assert np.mean(expected.argmax(1) == actual.argmax(1)) >= 0.99


def test_the_faithful_variant_exports_only_after_its_rectifiers_are_approximated(fashion_mnist_data_dir):
    model = trained_looking(scheme=rbcn.RBCN("faithful"))
    assert {layer.rectifier.shape[-1] for layer in rbcn.rectified_layers(model)} == {1}
    with pytest.raises(ValueError, match="faithful rectifier.*approximate_rectifiers"):
        to_inference(model)

    assert rbcn.approximate_rectifiers(model) == 18
    for layer in rbcn.rectified_layers(model):
        c = layer.rectifier.numpy()
        np.testing.assert_array_equal(c, np.full_like(c, c.flat[0]))
    x = random_pixels(SHAPE, batch=8)
    assert relative_error(model(x).numpy(), to_inference(model)(x).numpy()) <= 1e-4

    images, _ = next(iter(zoo.load_dataset("fashion_mnist", "train", batch_size=32, data_dir=fashion_mnist_data_dir)))
    rbcn.recalibrate_batch_norm(model, tf.data.Dataset.from_tensors(images).repeat(), steps=50)
    # the moving statistics are now those of that batch (0.9^50 of the old ones remain)
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)(images).numpy()
    bn = model.get_layer("stem_bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), stem.mean(axis=(0, 1, 2)), rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(bn.moving_variance.numpy(), stem.var(axis=(0, 1, 2)), rtol=1e-2)


def real_batches(data_dir, images=128, batch_size=32):
    return zoo.load_dataset("fashion_mnist", "train", batch_size=batch_size, take=images, data_dir=data_dir, seed=0)


def student_and_teacher(name="rbcn_resnet20"):
    student = zoo.load(name, weights=None, input_shape=SHAPE)
    teacher = prepare_teacher(name, "fashion_mnist",
                              teacher=zoo.load("fp_bireal_resnet20", weights=None, input_shape=SHAPE))
    return student, teacher


def step_logs(trainer, x, y, steps):
    return [trainer.train_on_batch(x, y, return_dict=True) for _ in range(steps)]


def test_discriminator_and_generator_losses_move_the_expected_way(fashion_mnist_data_dir):
    x, y = next(iter(real_batches(fashion_mnist_data_dir)))
    keras.utils.set_random_seed(0)
    trainer = rbcn.AdversarialTrainer(*student_and_teacher(), adversarial_weight=10.0)
    no_task_loss = lambda y_true, y_pred: 0.0 * tf.reduce_sum(y_pred)  # noqa: E731  (the generator term alone)
    trainer.compile(keras.optimizers.SGD(0.0), no_task_loss, discriminator_optimizer=keras.optimizers.Adam(1e-2),
                    run_eagerly=True)  # a few steps: cheaper than tracing the step
    # the discriminators alone learn: their loss falls, the fixed student's generator loss rises
    logs = step_logs(trainer, x, y, 4)
    discriminator_losses = [row["discriminator_loss"] for row in logs]
    assert discriminator_losses == sorted(discriminator_losses, reverse=True)
    assert discriminator_losses[-1] < 0.95 * discriminator_losses[0]
    assert logs[-1]["generator_loss"] > logs[0]["generator_loss"]
    # the student alone learns against the now fixed discriminators: its generator loss falls
    trainer.optimizer.learning_rate.assign(0.05)
    trainer.discriminator_optimizer.learning_rate.assign(0.0)
    logs = step_logs(trainer, x, y, 4)
    assert logs[-1]["generator_loss"] < 0.9 * logs[0]["generator_loss"]


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def test_real_steps_lower_the_task_loss_with_a_frozen_teacher_and_the_bn_pass(fashion_mnist_data_dir):
    # lr 0.05: at the paper's 0.1, 8 batches of 32 an epoch are too noisy to compare epochs
    recipe = RBCNRecipe.for_model("rbcn_resnet20", epochs=3, batch_size=32, learning_rate=0.05)
    student, teacher = student_and_teacher()
    rectifiers_before = [layer.rectifier.numpy().copy() for layer in rbcn.rectified_layers(student)]
    teacher_before = weights_of(teacher)
    trainer = recipe.wrap(student, teacher)
    assert isinstance(trainer, rbcn.AdversarialTrainer) and trainer.student is student
    recipe.compile(trainer)
    callbacks = recipe.callbacks("rbcn_resnet20")
    assert isinstance(callbacks[0], rbcn.BatchNormRetraining)
    history = trainer.fit(real_batches(fashion_mnist_data_dir, images=256), epochs=recipe.epochs,
                          callbacks=callbacks, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert all(np.isfinite(history["bn_retraining_loss"])) and all(d > 0 for d in history["discriminator_loss"])
    assert history["lr"][-1] < history["lr"][0]
    # the rectifiers' own optimizer followed the schedule (η₂ = η₁) and stepped once per batch
    assert float(trainer.rectifier_optimizer.learning_rate) == pytest.approx(history["lr"][-1])
    assert int(trainer.rectifier_optimizer.iterations) == 3 * 8
    assert int(trainer.optimizer.iterations) == 3 * (8 + 1)  # + one BN-pass step an epoch (10 % of 8, rounded up)
    assert all(not np.array_equal(before, layer.rectifier.numpy())
               for before, layer in zip(rectifiers_before, rbcn.rectified_layers(student)))
    for before, after in zip(teacher_before, weights_of(teacher)):
        np.testing.assert_array_equal(before, after)


def test_the_bn_pass_moves_only_non_conv_variables(fashion_mnist_data_dir):
    student, teacher = student_and_teacher()
    trainer = rbcn.AdversarialTrainer(student, teacher)
    trainer.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    frozen = [v for layer in student.layers if isinstance(layer, keras.layers.Conv2D) for v in layer.weights]
    frozen += [v for d in trainer.discriminators for v in d.weights]
    before = {id(v): v.numpy().copy() for v in frozen}
    norms = [layer for layer in student.layers if isinstance(layer, keras.layers.BatchNormalization)]
    gammas = [layer.gamma.numpy().copy() for layer in norms]
    loss = trainer.retrain_batch_norm(real_batches(fashion_mnist_data_dir), steps=2)
    assert np.isfinite(loss)
    for v in frozen:
        np.testing.assert_array_equal(before[id(v)], v.numpy(), err_msg=v.name)
    assert all(not np.array_equal(before, layer.gamma.numpy()) for before, layer in zip(gammas, norms))


def test_the_rectifiers_take_their_own_learning_rate(fashion_mnist_data_dir):
    x, y = next(iter(real_batches(fashion_mnist_data_dir)))
    trainer = rbcn.AdversarialTrainer(*student_and_teacher(), rectifier_learning_rate_scale=0.0)
    trainer.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", run_eagerly=True)
    layer = rbcn.rectified_layers(trainer.student)[0]
    rectifier, kernel = layer.rectifier.numpy().copy(), layer.kernel.latent_variable.numpy().copy()
    trainer.train_on_batch(x, y)
    assert not np.array_equal(kernel, layer.kernel.latent_variable.numpy())  # η₁ = 0.1 moved W
    np.testing.assert_array_equal(rectifier, layer.rectifier.numpy())  # η₂ = 0 · η₁ left C


def test_the_student_and_the_trainer_state_round_trip(tmp_path, fashion_mnist_data_dir):
    x, y = next(iter(real_batches(fashion_mnist_data_dir)))
    trainer = rbcn.AdversarialTrainer(*student_and_teacher())
    trainer.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", run_eagerly=True)
    trainer.train_on_batch(x, y)

    trainer.student.save_weights(tmp_path / "student.h5")
    loaded = zoo.load("rbcn_resnet20", weights=str(tmp_path / "student.h5"), input_shape=SHAPE)
    np.testing.assert_array_equal(trainer.student.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for original, restored in zip(rbcn.rectified_layers(trainer.student), rbcn.rectified_layers(loaded)):
        np.testing.assert_array_equal(original.rectifier.numpy(), restored.rectifier.numpy())

    path = tf.train.Checkpoint(model=trainer).write(str(tmp_path / "ckpt"))
    fresh = rbcn.AdversarialTrainer(*student_and_teacher())
    fresh.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    for a, b in zip(trainer.discriminators, fresh.discriminators):
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert int(fresh.discriminator_optimizer.iterations) == 1 and int(fresh.rectifier_optimizer.iterations) == 1


def test_the_recipe_needs_a_teacher_for_rbcn_models_only():
    recipe = RBCNRecipe.for_model("rbcn_resnet20")
    assert RBCNRecipe.NEEDS_TEACHER and (recipe.epochs, recipe.batch_size) == (200, 128)
    assert recipe.discriminator_learning_rate == 1e-4
    with pytest.raises(ValueError, match="teacher"):
        recipe.wrap(zoo.load("rbcn_resnet20", weights=None, input_shape=SHAPE))
    baseline = zoo.load("bnn_resnet20", weights=None, input_shape=SHAPE)
    assert recipe.wrap(baseline) is baseline  # a same-budget baseline borrows the schedule only
    assert not any(isinstance(c, rbcn.BatchNormRetraining) for c in recipe.callbacks("bnn_resnet20"))
    assert zoo.callbacks("rbcn_resnet20", 10) == []  # the BN pass needs the trainer: the recipe adds it

    with pytest.raises(TypeError, match="AdversarialTrainer"):
        model = zoo.load("rbcn_resnet20", weights=None, input_shape=SHAPE)
        model.compile("sgd", "sparse_categorical_crossentropy")
        model.fit(random_pixels(SHAPE, batch=4), np.zeros(4), callbacks=[rbcn.BatchNormRetraining()], verbose=0)
    assert isinstance(Recipe.for_model("bnn_resnet20", epochs=1).wrap(baseline, zoo.load(
        "fp_resnet20", weights=None, input_shape=SHAPE)), Distiller)


def test_the_recipe_sets_its_adversarial_weight_on_the_trainer_and_refuses_it_for_a_baseline():
    def generator_weights(**overrides):
        trainer = RBCNRecipe.for_model("rbcn_resnet20", epochs=1, **overrides).wrap(*student_and_teacher())
        return [term.weight for term in trainer.terms if isinstance(term, rbcn.GeneratorLoss)]

    assert generator_weights() == [1.0] and generator_weights(adversarial_weight=0.0) == [0.0]
    with pytest.raises(ValueError, match="adversarial_weight must be a non-negative number, got -1.0."):
        RBCNRecipe.for_model("rbcn_resnet20", adversarial_weight=-1.0)
    for weight in (0.5, 1.0):  # the default's value, given, is refused too
        with pytest.raises(ValueError, match="adversarial_weight: bnn_resnet20 has no rectified convs"):
            RBCNRecipe.for_model("bnn_resnet20", adversarial_weight=weight).wrap(
                zoo.load("bnn_resnet20", weights=None, input_shape=SHAPE))


def test_the_width_table_models_and_their_anchors():
    assert [n for n in zoo.list_models("*resnet18_cifar_*")] == [
        "rbcn_resnet18_cifar_32_32_64_128", "rbcn_resnet18_cifar_32_64_128_256", "rbcn_resnet18_cifar_64_64_128_256"]
    model = zoo.load("rbcn_resnet18_cifar_32_64_128_256", weights=None)
    assert model.output_shape == (None, 100) and model.get_layer("stem_conv").filters == 32
    assert [model.get_layer(f"stage{i}_block1_conv1").filters for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    details = zoo.info("rbcn_resnet18_cifar_64_64_128_256")
    assert [(r["dataset"], r["top1"]) for r in details["reported"]] == [("cifar100", 66.27)]
    assert details["binary_convs"] == 19
    with pytest.raises(ValueError, match="variant"):
        rbcn.RBCN("lce")


def test_the_teacher_has_the_students_topology():
    """The discriminators compare teacher and student features: the teacher is the student's
    Bi-Real layout with hardtanh and float convs (fp_bireal_), not the ReLU plain-block fp_."""
    from training.teacher import teacher_name

    assert teacher_name("rbcn_resnet20") == "fp_bireal_resnet20"
    student = zoo.load("rbcn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
    teacher = zoo.load(teacher_name("rbcn_resnet20"), weights=None, input_shape=(28, 28, 1), classes=10)

    def topology(model):
        return [(layer.name, type(layer).__name__) for layer in model.layers
                if not isinstance(layer, (keras.layers.Conv2D, rbcn.RectifiedBinaryConv2D))]

    assert topology(teacher) == topology(student)
    assert [layer.name for layer in teacher.layers] == [layer.name for layer in student.layers]
    assert not any(isinstance(layer, rbcn.RectifiedBinaryConv2D) for layer in teacher.layers)

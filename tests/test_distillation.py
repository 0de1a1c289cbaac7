"""zoo.distillation (terms, stage taps, the Distiller wrapper) and training.teacher."""

import numpy as np
import pytest
import tensorflow as tf
import zoo
from helpers import manifest_entry, write_manifest
from training.loop import prepare_teacher
from training.recipes import Recipe
from training.teacher import teacher_name
from zoo.distillation import Distiller, FeatureMatching, KnowledgeDistillation, Outputs, stage_outputs
from zoo.registry import UnknownModelError

SHAPE = (28, 28, 1)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_kd_is_hintons_temperature_scaled_kl():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 6, 10)).astype(np.float32) * 3
    p_t, p_s = softmax(teacher / 3), softmax(student / 3)
    expected = 0.5 * 9 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1))

    def kd(term, s, t):
        return float(term(Outputs(tf.constant(s), ()), Outputs(tf.constant(t), ())))

    assert kd(KnowledgeDistillation(3.0, 0.5, from_logits=True), student, teacher) == pytest.approx(expected, rel=1e-5)
    # from the zoo's softmax heads: log-probabilities are the logits up to a shift
    assert kd(KnowledgeDistillation(3.0, 0.5), softmax(student), softmax(teacher)) == pytest.approx(expected, rel=1e-4)
    assert kd(KnowledgeDistillation(3.0, 0.5, from_logits=True), teacher, teacher) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        KnowledgeDistillation(temperature=0.0)


def test_feature_matching_is_half_the_mean_squared_difference_summed_over_taps():
    rng = np.random.default_rng(1)
    s = [rng.normal(size=(2, 4, 4, 3)).astype(np.float32), rng.normal(size=(2, 2, 2, 5)).astype(np.float32)]
    t = [rng.normal(size=a.shape).astype(np.float32) for a in s]
    student, teacher = Outputs(None, tuple(map(tf.constant, s))), Outputs(None, tuple(map(tf.constant, t)))
    value = FeatureMatching(weight=2.0)(student, teacher)
    assert float(value) == pytest.approx(2.0 * sum(0.5 * np.mean((a - b) ** 2) for a, b in zip(s, t)), rel=1e-5)
    with pytest.raises(ValueError, match="taps"):
        FeatureMatching()(Outputs(None, ()), Outputs(None, ()))


@pytest.mark.parametrize("name, taps", [
    ("bnn_resnet20", ["stage1_block3_act2", "stage2_block3_act2", "stage3_block3_act2"]),
    ("fp_vgg_small", ["act2", "act4", "act5"]),
    ("bireal_resnet18", ["stage1_block2_act2", "stage2_block2_act2", "stage3_block2_act2", "stage4_block2_act2"]),
])
def test_stage_outputs_are_the_last_activation_at_each_resolution(name, taps):
    shape = (64, 64, 3) if name.endswith("resnet18") else SHAPE
    assert stage_outputs(zoo.load(name, weights=None, input_shape=shape)) == taps


def test_a_teacher_that_does_not_fit_is_refused():
    student = zoo.load("bnn_resnet20", weights=None, input_shape=SHAPE)
    fp = zoo.load("fp_resnet20", weights=None, input_shape=SHAPE)
    with pytest.raises(ValueError, match="input shape"):
        Distiller(student, zoo.load("fp_resnet20", weights=None))
    with pytest.raises(ValueError, match="output shape"):
        Distiller(student, zoo.load("fp_resnet20", weights=None, input_shape=SHAPE, classes=5))
    with pytest.raises(ValueError, match="'nowhere' is not a layer of the student"):
        Distiller(student, fp, taps=["nowhere"])
    with pytest.raises(ValueError, match="different model"):
        Distiller(student, student)


def test_distillation_trains_the_student_towards_the_frozen_teacher(fashion_mnist_data_dir):
    data = zoo.load_dataset("fashion_mnist", "train", batch_size=32, data_dir=fashion_mnist_data_dir)
    images, labels = next(iter(data))
    student = zoo.load("bnn_resnet20", weights=None, input_shape=SHAPE)
    teacher = zoo.load("fp_resnet20", weights=None, input_shape=SHAPE)
    teacher_before = [w.numpy().copy() for w in teacher.weights]
    recipe = Recipe.for_model("bnn_resnet20", epochs=1, learning_rate=0.05)
    trainer = recipe.wrap(student, teacher)  # any recipe given a teacher distils from it
    assert isinstance(trainer, Distiller) and trainer.student is student and not teacher.trainable
    assert [type(term) for term in trainer.terms] == [KnowledgeDistillation]
    trainer = Distiller(student, teacher, terms=[KnowledgeDistillation(), FeatureMatching(0.1)],
                        taps=stage_outputs(student))
    recipe.compile(trainer)
    trainer.run_eagerly = True  # a few steps: cheaper than tracing
    logs = [trainer.train_on_batch(images, labels, return_dict=True) for _ in range(6)]
    assert logs[-1]["kd_loss"] < logs[0]["kd_loss"] and logs[-1]["feature_loss"] < logs[0]["feature_loss"]
    assert logs[0]["total_loss"] == pytest.approx(
        logs[0]["loss"] + logs[0]["kd_loss"] + logs[0]["feature_loss"] + logs[0]["regularization_loss"], rel=1e-5)
    for before, after in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, after.numpy())

    # validation is the student's task loss and accuracy, nothing of the teacher
    evaluated = trainer.evaluate(images, labels, return_dict=True, verbose=0)
    assert set(evaluated) == {"loss", "accuracy"}
    predictions = student.predict(images, verbose=0)
    assert evaluated["accuracy"] == pytest.approx(np.mean(predictions.argmax(1) == labels.numpy()))
    np.testing.assert_allclose(trainer.predict(images, verbose=0), predictions, rtol=1e-5, atol=1e-7)


def test_the_teacher_is_the_fp_twin_loaded_from_a_file_or_the_manifest(tmp_path, monkeypatch):
    assert teacher_name("bnn_resnet20") == "fp_resnet20" and teacher_name("bnn_vgg_small") == "fp_vgg_small"
    assert teacher_name("rbcn_resnet20") == "fp_bireal_resnet20"  # the student's topology (test_rbcn.py)
    trained = zoo.load("fp_resnet20", weights=None, input_shape=SHAPE, classes=10)
    trained.save_weights(tmp_path / "fp.h5")

    from_file = prepare_teacher("bnn_resnet20", "fashion_mnist", teacher=str(tmp_path / "fp.h5"))
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    write_manifest(tmp_path / "manifest.json", [manifest_entry("fp_resnet20", tmp_path / "fp.h5")])
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "cache"))
    from_manifest = prepare_teacher("bnn_resnet20", "fashion_mnist")
    for teacher in (from_file, from_manifest):
        assert teacher.name == "fp_resnet20" and not teacher.trainable and not teacher.trainable_weights
        for expected, actual in zip(trained.weights, teacher.weights):
            np.testing.assert_array_equal(expected.numpy(), actual.numpy())

    with pytest.raises(ValueError, match="binary model"):
        prepare_teacher("rbcn_resnet20", "fashion_mnist", teacher="bnn_resnet20")
    with pytest.raises(UnknownModelError, match="Did you mean"):
        prepare_teacher("rbcn_resnet20", "fashion_mnist", teacher="fp_resnet2")


def test_without_weights_the_teacher_is_trained_first(fashion_mnist_data_dir):
    teacher = prepare_teacher("rbcn_resnet20", "fashion_mnist", weights=None, epochs=1, batch_size=64,
                              train_images=128, test_images=256, data_dir=fashion_mnist_data_dir)
    assert teacher.name == "fp_bireal_resnet20" and not teacher.trainable
    assert int(teacher.optimizer.iterations) == 2  # trained: 128 images at batch 64

"""A converted file names its outputs: the class names travel in the .tflite's metadata."""

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import numpy as np
from helpers import random_pixels
from larq_compute_engine.tflite.python.interpreter import Interpreter

from zoo import registry
from zoo.deploy import read_metadata, with_metadata


def test_a_pretrained_name_converts_with_its_class_names_and_the_file_still_runs(tmp_path):
    report = zoo.convert("bnn_resnet20", tmp_path / "bnn.tflite", verify_data=random_pixels((28, 28, 1), batch=8))
    assert report.parity.top1_agreement == 1.0
    names = list(registry.pretrained_entry("bnn_resnet20", "fashion_mnist").class_names)
    assert read_metadata(tmp_path / "bnn.tflite") == {"class_names": names} and names[0] == "T-shirt/top"


def test_metadata_changes_nothing_the_interpreter_computes(tmp_path):
    model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=3)
    zoo.convert(model, tmp_path / "plain.tflite", verify=False)
    assert read_metadata(tmp_path / "plain.tflite") == {}  # a Keras model without names: none written
    plain = (tmp_path / "plain.tflite").read_bytes()
    named = with_metadata(with_metadata(plain, {"class_names": ["x"]}), {"class_names": ["a", "b", "c"]})
    (tmp_path / "named.tflite").write_bytes(named)
    assert read_metadata(tmp_path / "named.tflite") == {"class_names": ["a", "b", "c"]}  # replaced, not doubled
    images = random_pixels((28, 28, 1), batch=2)
    np.testing.assert_array_equal(Interpreter(plain, num_threads=1).predict(images),
                                  Interpreter(named, num_threads=1).predict(images))


def test_the_report_gives_the_size_of_the_file_written(tmp_path):
    report = zoo.convert("bnn_resnet20", tmp_path / "bnn.tflite", verify=False)
    assert report.file_bytes == (tmp_path / "bnn.tflite").stat().st_size

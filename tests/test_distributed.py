"""tf.distribute in `zoo train`: two MultiWorkerMirroredStrategy workers on 127.0.0.1 end
with identical weights; MirroredStrategy runs the custom train steps and the callbacks."""

import json
import os
import socket
import subprocess
import sys

import zoo  # noqa: F401,I001  (first: selects Keras 2)
import numpy as np
import tensorflow as tf

from test_training import assert_checkpoint_restores
from training import logs, loop

SHAPE = (28, 28, 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checkpoint_tensors(directory) -> dict:
    reader = tf.train.load_checkpoint(str(directory / "ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_two_workers_train_rbnn_in_sync_and_end_with_identical_weights(fashion_mnist_data_dir, tmp_path):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    args = ["rbnn_resnet20", "--dataset", "fashion_mnist", "--epochs", "1", "--batch-size", "32",
            "--train-images", "64", "--test-images", "32", "--data-dir", fashion_mnist_data_dir,
            "--output", str(tmp_path), "--strategy", "multi_worker", "--no-export", "--quiet"]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config)}
        log = open(tmp_path / f"worker-{index}.log", "w")
        processes.append(subprocess.Popen([sys.executable, "-m", "training", *args], env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
    try:
        codes = [process.wait(timeout=600) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert codes == [0, 0], [(tmp_path / f"worker-{i}.log").read_text()[-3000:] for i in range(2)]

    chief = checkpoint_tensors(tmp_path / "checkpoints" / "epoch-0001")
    other = checkpoint_tensors(tmp_path / "worker-1" / "checkpoints" / "epoch-0001")
    assert chief.keys() == other.keys() and len(chief) > 300
    for name, value in chief.items():
        np.testing.assert_array_equal(value, other[name], err_msg=name)
    assert chief["model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 2  # 64 images, global batch 32
    history = logs.read_history(tmp_path)  # the chief's only
    assert [row["epoch"] for row in history] == [1] and 0 < history[0]["rbnn_sign_flips"] < 1
    assert not (tmp_path / "worker-1" / logs.HISTORY_JSON).exists()


def test_mirrored_strategy_runs_rbcn_custom_train_step_and_callbacks(fashion_mnist_data_dir, tmp_path):
    """RBCN: a custom train step with a teacher, discriminators, three optimizers and a
    BN pass run by a callback, all under MirroredStrategy, and its checkpoint (RBNN's
    variable-assigning callbacks run under the multi-worker strategy above)."""
    teacher = str(tmp_path / "teacher.h5")
    zoo.load("fp_resnet20", weights=None, input_shape=SHAPE).save_weights(teacher)
    model, report = loop.train("rbcn_resnet20", "fashion_mnist", epochs=1, batch_size=16, train_images=32,
                               test_images=16, teacher=teacher, strategy="mirrored", data_dir=fashion_mnist_data_dir,
                               output=tmp_path / "run", export=False, verbose=0)
    assert report["replicas"] == tf.distribute.MirroredStrategy().num_replicas_in_sync
    assert [row["epoch"] for row in report["history"]] == [1]
    assert np.isfinite(report["history"][0]["loss"]) and np.isfinite(report["history"][0]["bn_retraining_loss"])
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)
    assert_checkpoint_restores("rbcn_resnet20", model, tmp_path / "run", fashion_mnist_data_dir)

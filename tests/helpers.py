"""Helpers shared by the test modules (imported as ``helpers``)."""

import hashlib
import json

import numpy as np
import tf_keras as keras


def randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Gives every BN non-trivial statistics so that folding errors would show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape),
                rng.normal(0.0, 0.3, beta.shape),
                rng.normal(0.0, 0.3, mean.shape),
                rng.uniform(0.5, 2.0, var.shape),
            ])


def random_pixels(shape, batch=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(expected - actual)) / max(np.max(np.abs(expected)), 1e-12))


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def write_manifest(path, entries) -> None:
    path.write_text(json.dumps({"entries": entries}, indent=2))


def manifest_entry(name, weights_path, *, tag="fashion_mnist", input_shape=(28, 28, 1), classes=10, **extra):
    return {
        "name": name,
        "tag": tag,
        "dataset": "fashion_mnist",
        "input_shape": list(input_shape),
        "classes": classes,
        "file": str(weights_path),
        "sha256": sha256(weights_path),
        "metrics": {"top1": 0.5},
        **extra,
    }

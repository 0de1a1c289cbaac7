"""What a finished run leaves for users: the weights file, its manifest entry, the .tflite.

**Weights.** The *training* model's weights (everything ``zoo.load(name, weights=path)``
restores, so the file also fine-tunes: latent kernels, RBNN's rotations and schedule
state, BN statistics) in Keras' HDF5 layout, in the smallest storage that is lossless
for accuracy, which is measured rather than assumed on the whole test split: the first
of float16 for every float array, float16 for the binary convs' latent kernels only (the
bulk of a binary model's bytes; BN statistics, scales, rotations and the float layers
stay float32), and float32, whose reloaded model keeps the float32 model's top-1 within
0.1 points with at least 99 % of its predictions unchanged. The manifest states the
stored file's own accuracy; how many predictions each storage changed is reported.
Rounding is not harmless in a binary net: a latent weight or pre-activation near zero
changes sign, and one flipped sign moves every later activation near zero, so a binary
net amplifies any change of a float parameter (float16 BN statistics changed 13 % of a
`bnn_resnet20`'s predictions; float16 latent kernels, whose signs rounding keeps, none).
Where a ±1 kernel is not the elementwise sign of the latent kernel (RBNN: the sign of a
rotated mix), a storage rule (:func:`zoo.schemes.base.storage_rule`) first rewrites the
layer into an equivalent form that float16 cannot change. Large arrays are
gzip-compressed (lossless). Binary latent kernels stay floats, not signs: XNOR / CBCN
scales and RBNN's standardisation read their magnitudes, and fine-tuning needs them.

**Deployment.** The .tflite of ``zoo.deploy.convert`` (the LCE flatbuffer of the
inference model ``zoo.to_inference`` for binary models) and the parity of each step on
the first test images: training vs inference model (Keras), LCE interpreter vs inference
model (``convert``'s own verification).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import tf_keras as keras

from zoo import registry
from zoo.data import dataset_info
from zoo.export import binary_exports, to_inference
from zoo.schemes.base import apply_storage_rules
from zoo.weights import sha256_file

#: arrays smaller than this are stored uncompressed (a chunked, filtered dataset costs more)
_COMPRESS_FROM = 1024
PARITY_IMAGES = 1024
#: a storage is lossless for accuracy within these bounds (see :func:`lossless`)
ACCURACY_TOLERANCE = 0.1  # points of top-1
MIN_AGREEMENT = 0.99


def predictions(model: keras.Model, data) -> np.ndarray:
    return model.predict(data, verbose=0)


def labels_of(data) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in data])


def first_examples(data, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` (images, labels) of a batched dataset, as arrays."""
    images, labels = [], []
    for x, y in data:
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(map(len, labels)) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def _rewrite_weights(source: Path, target: Path, to_float16: Callable[[str], bool]) -> int:
    """Copies a Keras HDF5 weights file, storing the float32 arrays for which
    ``to_float16(weight_name)`` (``"layer/variable:0"``) as float16 and gzip-compressing
    large arrays; returns how many arrays became float16."""
    converted = 0
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        dst.attrs.update(src.attrs)
        for raw in src.attrs["layer_names"]:
            layer = raw.decode() if isinstance(raw, bytes) else str(raw)
            group = dst.create_group(layer)
            group.attrs.update(src[layer].attrs)
            for raw_name in src[layer].attrs["weight_names"]:
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                value = src[layer][name][()]
                if value.dtype == np.float32 and to_float16(name):
                    value = value.astype(np.float16)
                    converted += 1
                large = value.size >= _COMPRESS_FROM
                group.create_dataset(name, data=value, compression="gzip" if large else None, shuffle=large)
    return converted


def latent_kernels(model: keras.Model) -> set[str]:
    """The weight names of the binary layers' latent kernels: each one's largest variable
    (RBCN's rectifier, XNOR's or RBNN's scales, rotations are smaller)."""
    layers = [model.get_layer(name) for name in binary_exports(model)]
    return {max(layer.weights, key=lambda variable: variable.shape.num_elements()).name for layer in layers}


def storages(latent_kernel_names: set[str]) -> dict[str, Callable[[str], bool]]:
    """The storages tried, smallest first: which float32 arrays each stores as float16."""
    return {
        "float16": lambda name: True,
        # the binary convs' latent kernels: the bulk of a binary model's bytes
        "float16 binary kernels": lambda name: name in latent_kernel_names,
        "float32": lambda name: False,
    }


@dataclasses.dataclass
class StoredWeights:
    """What :func:`store_weights` chose and measured, and the model built from the file."""

    storage: str
    test_images: int
    correct: int  # of the stored file's model: what the manifest states
    float32_correct: int
    candidates: dict
    model: keras.Model

    def as_dict(self) -> dict:
        return {"storage": self.storage, "test_images_compared": self.test_images, "correct": self.correct,
                "float32_correct": self.float32_correct, "candidates": self.candidates}


def store_weights(float32_file: Path, target: Path, load: Callable[[str], keras.Model], test_data) -> StoredWeights:
    """Writes ``target``: the weights of ``float32_file`` in the smallest storage that is
    lossless for accuracy on ``test_data`` (see :func:`lossless`), measured with models
    built by ``load(path)`` as users build them. Layers with a storage rule (RBNN) are
    first rewritten into their equivalent float16-safe form, kept only if its
    predictions are exactly the float32 model's."""
    labels = labels_of(test_data)
    reference_model = load(str(float32_file))
    reference = predictions(reference_model, test_data).argmax(1)
    correct = int(np.sum(reference == labels))
    measured = {}
    candidate = target.with_name(f".{target.name}.candidate")
    equivalent = target.with_name(f".{target.name}.equivalent.h5")
    source = float32_file
    try:
        if apply_storage_rules(reference_model):
            reference_model.save_weights(str(equivalent))
            if np.array_equal(predictions(load(str(equivalent)), test_data).argmax(1), reference):
                source = equivalent
        for storage, to_float16 in storages(latent_kernels(reference_model)).items():
            converted = _rewrite_weights(source if storage != "float32" else float32_file, candidate, to_float16)
            if converted == 0 and storage != "float32":
                continue  # nothing to store as float16 (e.g. no binary layers): same as float32
            model = load(str(candidate))
            reloaded = predictions(model, test_data).argmax(1)
            measured[storage] = {"correct": int(np.sum(reloaded == labels)),
                                 "changed_predictions": int(np.sum(reloaded != reference)),
                                 "bytes": candidate.stat().st_size,
                                 "storage_rules": source is equivalent and storage != "float32"}
            if lossless(measured[storage], correct, len(labels)):
                os.replace(candidate, target)
                return StoredWeights(storage, len(labels), measured[storage]["correct"], correct, measured, model)
    finally:
        candidate.unlink(missing_ok=True)
        equivalent.unlink(missing_ok=True)
    raise AssertionError(f"float32 storage changed the predictions ({measured}): the weights file does not round-trip")


def lossless(measured: dict, reference_correct: int, images: int) -> bool:
    """Whether a storage keeps the float32 model's accuracy: top-1 within
    :data:`ACCURACY_TOLERANCE` points and at least :data:`MIN_AGREEMENT` of the
    predictions unchanged, on the whole test split."""
    return (abs(measured["correct"] - reference_correct) <= ACCURACY_TOLERANCE / 100 * images
            and measured["changed_predictions"] <= (1 - MIN_AGREEMENT) * images)


def keras_parity(model: keras.Model, images: np.ndarray) -> dict:
    """The training model against its inference model (``zoo.to_inference``), in Keras."""
    trained = model.predict(images, verbose=0)
    inference = to_inference(model).predict(images, verbose=0) if binary_exports(model) else trained
    per_sample = np.max(np.abs(trained - inference), axis=1)
    return {
        "samples": len(images),
        "share_within_1e-4": float(np.mean(per_sample <= 1e-4)),
        "max_relative_error": float(per_sample.max() / max(np.abs(trained).max(), 1e-12)),
        "top1_agreement": float(np.mean(trained.argmax(1) == inference.argmax(1))),
    }


def export_run(model_name: str, dataset: str, output: Path, float32_file: Path, load: Callable[[str], keras.Model],
               test_data, *, input_shape, classes: int, command: str, training: dict | None = None) -> dict:
    """The weights file, its manifest entry and the .tflite (``zoo.deploy.convert``: LCE
    for binary models, verified in LCE's interpreter) with the parity of each step."""
    from zoo.deploy import convert

    weights_file = output / f"{model_name}-{dataset}.h5"
    stored = store_weights(float32_file, weights_file, load, test_data)
    shipped = stored.model  # built by zoo.load from the file as shipped
    entry = registry.PretrainedEntry(
        name=model_name, tag=dataset, dataset=dataset, input_shape=tuple(input_shape), classes=classes,
        sha256=sha256_file(weights_file), file=weights_file.name, size=weights_file.stat().st_size,
        metrics={"top1": round(100 * stored.correct / stored.test_images, 2), "test_images": stored.test_images},
        command=command, training=training or {},
        class_names=tuple(dataset_info(dataset).get("class_names") or ()),
    ).as_dict()

    images, _ = first_examples(test_data, PARITY_IMAGES)
    tflite_file = output / f"{model_name}-{dataset}.tflite"
    conversion = convert(shipped, tflite_file, verify_data=images, class_names=entry.get("class_names")).as_dict()
    conversion.update(file=tflite_file.name, keras_parity=keras_parity(shipped, images))
    del conversion["path"], conversion["model"]
    return {
        "weights": {"file": weights_file.name, "sha256": entry["sha256"], "bytes": entry["size"], **stored.as_dict()},
        "test_top1": stored.correct / stored.test_images,
        "manifest_entry": entry,
        "tflite": conversion,
    }

"""The ``zoo compress`` pipeline: prune → fine-tune → QAT → fine-tune → export → report."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tf_keras as keras

from zoo.compress.channels import channel_prune
from zoo.compress.common import check_sparsity, fine_tunable_inference
from zoo.compress.pruning import prune, sparsity_report, strip
from zoo.compress.quantization import UNSUPPORTED_CHOICES, quantize, quantize_scope
from zoo.export import binary_exports
from zoo.profile import costs
from zoo.text import markdown_table

STRUCTURES = ("channel", "magnitude", "2:4")
# Adam's initial rates of the fine-tunes. After pruning: chosen on held-out images from the shipped
# rbnn_resnet20 (benchmarks/results/compress_fine_tune_choice_rbnn_resnet20.md), where 1e-3 cost ten
# points without pruning anything. QAT moves only the float parts, which drifted least at 1e-4 there.
PRUNE_LEARNING_RATE = 3e-4
QAT_LEARNING_RATE = 1e-4


def export(model: keras.Model, output_path, **convert_kwargs):
    """``zoo.deploy.convert`` for compressed models: a QAT model is rebuilt from its
    config on the way, which needs TF-MOT's scope. Returns its ``ConversionReport``."""
    from zoo.deploy import convert

    with quantize_scope():
        return convert(model, output_path, **convert_kwargs)


def run_pipeline(
    model_name: str,
    *,
    dataset: str,
    output_dir,
    prune_ratio: float = 0.5,
    structure: str = "channel",
    qat: bool = False,
    epochs: int = 1,
    weights="default",
    batch_size: int = 64,
    learning_rate: float = PRUNE_LEARNING_RATE,
    qat_learning_rate: float = QAT_LEARNING_RATE,
    train_images: int | None = None,
    test_images: int | None = None,
    hrank_batches: int = 4,
    fade: float = 0.25,
    qat_scope: str = "auto",
    unsupported: str = "error",
    latency_repeats: int = 50,
    data_dir=None,
    seed: int = 0,
    verbose: int = 2,
    progress: Callable[[str], None] = print,
) -> dict:
    """Compresses a zoo model and reports what it gained and what it cost.

    Loads ``model_name`` for ``dataset`` (``weights`` as in ``zoo.load``) and measures it;
    prunes it by ``prune_ratio`` (``structure``: ``"channel"``, HRank filter pruning with
    binary convs included, the removed filters fading out over the first ``fade`` of the
    fine-tune, 0 to remove them at once; ``"magnitude"`` / ``"2:4"``, TF-MOT on the float
    layers, the scheme's callbacks running during the fine-tune) and fine-tunes ``epochs``
    epochs (:func:`fine_tune`: Adam from ``learning_rate``, cosine decay); with ``qat``, runs
    quantization-aware training of the float parts for ``epochs`` more (from
    ``qat_learning_rate``; ranges calibrated on
    ``hrank_batches`` batches; ``qat_scope`` and ``unsupported`` as in
    :func:`zoo.compress.quantize`). Exports the original and the compressed model to
    ``output_dir`` (``original.tflite``, ``model.tflite``) and measures both: test accuracy
    (Keras, and the ``.tflite`` in LCE's interpreter), file size, binary and float MACs,
    LCE latency. Writes ``report.json`` and ``report.md`` there and returns the report.
    """
    from zoo.data import dataset_info, load_dataset
    from zoo.loading import load

    prune_ratio = check_sparsity(prune_ratio, "prune ratio")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}.")
    if unsupported not in UNSUPPORTED_CHOICES:
        raise ValueError(f"unsupported must be one of {UNSUPPORTED_CHOICES}, got {unsupported!r}.")
    if prune_ratio == 0 and not qat:
        raise ValueError("Nothing to do: give a prune ratio above 0, or QAT, or both.")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if isinstance(fade, bool) or not isinstance(fade, (int, float)) or not 0 <= fade <= 1:
        raise ValueError(f"fade must be a fraction of the fine-tune in [0, 1], got {fade!r}.")
    for flag, rate in (("learning rate", learning_rate), ("QAT learning rate", qat_learning_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"{flag} must be a positive number, got {rate!r}.")
    stages = 3 + (prune_ratio > 0) + qat
    stage = iter(range(1, stages + 1))

    def say(text: str) -> None:
        progress(f"[{next(stage)}/{stages}] {text}")

    info = dataset_info(dataset)
    say(f"loading {model_name} (weights: {weights}) and {dataset}")
    model = load(model_name, weights=weights, input_shape=info["image_shape"], classes=info["num_classes"])
    train = load_dataset(dataset, "train", batch_size=batch_size, take=train_images, data_dir=data_dir, seed=seed)
    ranked = load_dataset(dataset, "train", batch_size=batch_size, training=False, take=train_images,
                          data_dir=data_dir)
    test = load_dataset(dataset, info["eval_split"], batch_size=256, take=test_images, data_dir=data_dir)
    test_x, test_y = _arrays(test)
    output = Path(output_dir)  # made once the data is there (a missing dataset leaves nothing), before any training
    output.mkdir(parents=True, exist_ok=True)
    steps = int(train.cardinality())
    if steps < 1:
        steps = (train_images or info["splits"]["train"]) // batch_size
    report: dict = {
        "model": model_name, "dataset": dataset, "weights": str(weights), "test_images": len(test_y),
        "fine_tune": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                      "qat_learning_rate": qat_learning_rate if qat else None,
                      "train_images": train_images or info["splits"]["train"]},
    }
    original = {"accuracy": _accuracy(model, test_x, test_y), **_costs(model)}
    progress(f"      test accuracy {original['accuracy']:.2%}, binary MACs {original['binary_macs']:,}, "
             f"float MACs {original['float_macs']:,}")
    current = model

    if prune_ratio > 0:
        say(f"pruning: {structure}, ratio {prune_ratio:g}; fine-tuning {epochs} epoch(s)")
        start = time.perf_counter()
        fade_steps = round(fade * epochs * steps) if structure == "channel" else 0
        if structure == "channel":
            pruning = channel_prune(current, prune_ratio, ranked, batches=hrank_batches, fade_steps=fade_steps)
            callbacks = []
        else:
            pruning = prune(current, prune_ratio if structure == "magnitude" else 0.5,
                            structure=None if structure == "magnitude" else "2:4",
                            end_step=epochs * steps, frequency=max(1, epochs * steps // 10))
            callbacks = _scheme_callbacks(model_name, epochs) if binary_exports(current) else []
        before = _accuracy(pruning.model, test_x, test_y)
        fading = f", filters fading out over {fade_steps} steps" if fade_steps else ""
        progress(f"      pruned {len(pruning.layers)} layers{fading}; test accuracy before fine-tuning {before:.2%}")
        fine_tune(pruning.model, train, epochs, learning_rate, steps, pruning.callbacks + callbacks, verbose)
        current = strip(pruning.model) if pruning.callbacks else pruning.model
        report["pruning"] = {
            "structure": structure, "ratio": prune_ratio, "layers": list(pruning.layers),
            "accuracy_before_fine_tune": before, "accuracy": _accuracy(current, test_x, test_y),
            "seconds": round(time.perf_counter() - start, 1),
        }
        if pruning.kept is not None:
            report["pruning"]["fade_steps"] = fade_steps
            report["pruning"]["filters_kept"] = {name: len(kept) for name, kept in pruning.kept.items()}
        else:
            report["pruning"]["sparsity"] = [row for row in sparsity_report(current) if row["kind"] == "float"]
        progress(f"      test accuracy after fine-tuning {report['pruning']['accuracy']:.2%}")

    compressed_costs = _costs(current)
    if qat:
        say(f"quantization-aware training of the float parts: {epochs} epoch(s)")
        start = time.perf_counter()
        current = quantize(current, ranked, batches=hrank_batches, scope=qat_scope, unsupported=unsupported)
        before = _accuracy(current, test_x, test_y)
        fine_tune(current, train, epochs, qat_learning_rate, steps, verbose=verbose)
        report["qat"] = {"accuracy_before_fine_tune": before, "accuracy": _accuracy(current, test_x, test_y),
                         "seconds": round(time.perf_counter() - start, 1)}
        progress(f"      test accuracy {report['qat']['accuracy']:.2%} (before fine-tuning {before:.2%})")

    say("exporting the original and the compressed model")
    verify = test_x[:256]
    files = {}
    for label, keras_model in (("original", model), ("model", current)):
        conversion = export(keras_model, output / f"{label}.tflite", verify_data=verify)
        files[label] = conversion
        progress(f"      {label}.tflite: {conversion.file_bytes:,} bytes, top-1 agreement with Keras "
                 f"{conversion.parity.top1_agreement:.2%} on {conversion.parity.samples} test images")

    say(f"measuring: test accuracy of the .tflite files ({len(test_y)} images), latency")
    from zoo.deploy import benchmark

    timing = benchmark(str(output / "model.tflite"), vs=str(output / "original.tflite"), repeats=latency_repeats)
    latency = {result.model: result.median_ms for result in timing.results}
    compressed = {"accuracy": _accuracy(current, test_x, test_y), **compressed_costs}
    for label, measured in (("original", original), ("model", compressed)):
        flatbuffer = (output / f"{label}.tflite").read_bytes()
        measured.update(
            tflite_accuracy=_tflite_accuracy(flatbuffer, test_x, test_y),
            tflite_bytes=len(flatbuffer),
            tflite_gzip_bytes=len(gzip.compress(flatbuffer, 9)),  # zeros of pruned weights compress
            weight_bytes=weight_bytes(flatbuffer),
            ops=files[label].ops,
            parity=dataclasses.asdict(files[label].parity),
            latency_ms=latency[f"{label}.tflite"],
        )
    report.update(original=original, compressed=compressed, latency_threads=timing.threads)
    report["gains"] = _gains(original, compressed)
    (output / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    (output / "report.md").write_text(markdown_report(report) + "\n")
    return report


def _scheme_callbacks(model_name: str, epochs: int) -> list:
    from zoo.registry import callbacks

    return callbacks(model_name, epochs)


def fine_tune(model: keras.Model, data, epochs: int, learning_rate: float, steps_per_epoch: int,
              callbacks=(), verbose: int = 2) -> None:
    """The pipeline's fine-tune: Adam from ``learning_rate``, cosine decay to zero over the
    run. At a constant rate a short fine-tune of a binary net ends points apart from one
    data order to the next (its last steps still flip signs at full rate); the decay lets
    it settle."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    model.fit(data, epochs=epochs, callbacks=list(callbacks), verbose=verbose)


def _arrays(data) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in data))
    return np.concatenate(images), np.concatenate(labels)


def _accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    predictions = np.concatenate([
        np.argmax(model(images[start:start + batch_size], training=False), axis=-1)
        for start in range(0, len(images), batch_size)
    ])
    return float(np.mean(predictions == labels))


def _tflite_accuracy(flatbuffer: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    from zoo.deploy import run_tflite

    outputs = run_tflite(Interpreter(flatbuffer, num_threads=2, use_indirect_bgemm=True), images)
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


def _costs(model: keras.Model) -> dict:
    """Parameters and MACs of the model's inference form (QAT does not change them)."""
    return costs(fine_tunable_inference(model))


def weight_bytes(flatbuffer: bytes) -> dict:
    """Bytes of constant tensors in a .tflite: those of the binary convs (``LceBconv2d``:
    bit-packed kernels and the fused BN, float by LCE's design) and those of everything
    else, the float parts (stem, shortcuts, head, normalisation; float32 or int8)."""
    from tensorflow.lite.python import schema_py_generated as schema

    tflite = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    codes = []
    for code in tflite.operatorCodes:
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        codes.append(custom)
    counted: set[int] = set()
    totals = {"binary_convs": 0, "float_parts": 0}
    for subgraph in tflite.subgraphs:
        for operator in subgraph.operators:
            is_bconv = codes[operator.opcodeIndex] == "LceBconv2d"
            for index in operator.inputs if operator.inputs is not None else []:
                if index < 0:
                    continue
                buffer = subgraph.tensors[index].buffer
                data = tflite.buffers[buffer].data
                if buffer in counted or data is None or not len(data):
                    continue
                counted.add(buffer)
                totals["binary_convs" if is_bconv else "float_parts"] += len(data)
    return totals


def _gains(original: dict, compressed: dict) -> dict:
    def ratio(key):
        return original[key] / compressed[key] if compressed[key] else math.inf

    def cut(key):
        return 1.0 - compressed[key] / original[key] if original[key] else 0.0

    return {
        "accuracy_change_points": 100 * (compressed["accuracy"] - original["accuracy"]),
        "tflite_accuracy_change_points": 100 * (compressed["tflite_accuracy"] - original["tflite_accuracy"]),
        "tflite_size_ratio": ratio("tflite_bytes"),
        "tflite_gzip_size_ratio": ratio("tflite_gzip_bytes"),
        "float_parts_bytes_ratio": (original["weight_bytes"]["float_parts"] / compressed["weight_bytes"]["float_parts"]
                                    if compressed["weight_bytes"]["float_parts"] else math.inf),
        "binary_macs_cut": cut("binary_macs"),
        "float_macs_cut": cut("float_macs"),
        "latency_ratio": original["latency_ms"] / compressed["latency_ms"],
    }


def markdown_report(report: dict) -> str:
    """The report as a markdown table: original vs compressed."""
    original, compressed, gains = report["original"], report["compressed"], report["gains"]
    steps = []
    if "pruning" in report:
        p = report["pruning"]
        steps.append(f"{p['structure']} pruning {p['ratio']:g} ({len(p['layers'])} layers)")
    if "qat" in report:
        steps.append("QAT of the float parts (int8)")
    rows = [
        ("test accuracy (Keras)", f"{original['accuracy']:.2%}", f"{compressed['accuracy']:.2%}",
         f"{gains['accuracy_change_points']:+.2f} points"),
        ("test accuracy (.tflite, LCE interpreter)", f"{original['tflite_accuracy']:.2%}",
         f"{compressed['tflite_accuracy']:.2%}", f"{gains['tflite_accuracy_change_points']:+.2f} points"),
        (".tflite size", f"{original['tflite_bytes']:,} B", f"{compressed['tflite_bytes']:,} B",
         f"{gains['tflite_size_ratio']:.2f}x smaller"),
        (".tflite size, gzipped", f"{original['tflite_gzip_bytes']:,} B", f"{compressed['tflite_gzip_bytes']:,} B",
         f"{gains['tflite_gzip_size_ratio']:.2f}x smaller"),
        ("weights of the float parts", f"{original['weight_bytes']['float_parts']:,} B",
         f"{compressed['weight_bytes']['float_parts']:,} B", f"{gains['float_parts_bytes_ratio']:.2f}x smaller"),
        ("weights of the binary convs (packed, fused BN)", f"{original['weight_bytes']['binary_convs']:,} B",
         f"{compressed['weight_bytes']['binary_convs']:,} B", ""),
        ("binary MACs", f"{original['binary_macs']:,}", f"{compressed['binary_macs']:,}",
         f"{gains['binary_macs_cut']:.1%} fewer"),
        ("float MACs", f"{original['float_macs']:,}", f"{compressed['float_macs']:,}",
         f"{gains['float_macs_cut']:.1%} fewer"),
        ("parameters", f"{original['parameters']:,}", f"{compressed['parameters']:,}", ""),
        (f"LCE latency, median ({report['latency_threads']} thread)", f"{original['latency_ms']:.3f} ms",
         f"{compressed['latency_ms']:.3f} ms", f"{gains['latency_ratio']:.2f}x faster"),
    ]
    lines = [f"`{report['model']}` on {report['dataset']} ({report['test_images']} test images): "
             + " → ".join(steps) + f", fine-tuned {report['fine_tune']['epochs']} epoch(s) each on "
             f"{report['fine_tune']['train_images']} training images.", "",
             markdown_table(rows, ["", "original", "compressed", "change"], align="lrrl")]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

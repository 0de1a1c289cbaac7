"""``zoo.info`` and ``zoo.summary``: what a model is and what it costs."""

from __future__ import annotations

import dataclasses

import larq as lq
import tf_keras as keras

from zoo import registry
from zoo.export import to_inference

INPUT_CONTRACT = (
    "raw pixels in [0, 255], float32 (cast uint8 to float); the model normalises them "
    "in its first layer"
)


def costs(model: keras.Model) -> dict:
    """Parameters and MACs of a model, counted by Larq's profiler on its inference form.

    A binary MAC is one whose kernel and input are both 1-bit; everything else counts
    as a float MAC (stem, float shortcuts, dense head).
    """
    profile = lq.models.ModelProfile(model)
    total = profile.op_count("mac")
    binary = profile.op_count("mac", 1)
    binary_convs = sum(
        1
        for layer in model.layers
        if isinstance(layer, lq.layers.QuantConv2D)
        and getattr(layer.input_quantizer, "precision", None) == 1
        and getattr(layer.kernel_quantizer, "precision", None) == 1
    )
    return {
        "parameters": int(model.count_params()),
        "binary_macs": int(binary),
        "float_macs": int(total - binary),
        "binary_convs": binary_convs,
    }


def binary_macs_vs_plain_width(spec: registry.ModelSpec, input_shape, model_costs: dict) -> float | None:
    """Binary MACs relative to the same architecture at plain width (``width_multiplier=1``):
    N² = 16 for CBCN, whose feature maps are N = 4 times wide; None without binary MACs."""
    if not model_costs["binary_macs"]:
        return None
    if spec.scheme.width_multiplier == 1:
        return 1.0
    plain = costs(to_inference(spec.build(input_shape=input_shape, width_multiplier=1)))
    return round(model_costs["binary_macs"] / plain["binary_macs"], 3)


def info(name: str, input_shape=None) -> dict:
    """Everything the zoo knows about a registered model, as a JSON-ready dict.

    Costs are those of the exported inference model at ``input_shape`` (default: the
    architecture's default input).
    """
    spec = registry.get_model_spec(name)
    model = spec.build(input_shape=input_shape)
    normalize = model.get_layer("normalize")
    arch, scheme = spec.architecture, spec.scheme
    reported = [r for r in scheme.reported if r.arch == arch.name]
    entries = registry.pretrained_entries(name)
    model_costs = costs(to_inference(model) if scheme.binary else model)
    return {
        "name": name,
        "family": arch.family,
        "architecture": arch.name,
        "architecture_description": arch.description,
        "scheme": scheme.name,
        "method": scheme.method,
        "paper": scheme.paper,
        "input_shape": list(model.input_shape[1:]),
        "input": INPUT_CONTRACT,
        "input_mean": [float(v) for v in normalize.input_mean],
        "input_std": [float(v) ** 0.5 for v in normalize.input_variance],
        "classes": int(model.output_shape[-1]),
        **model_costs,
        "width_multiplier": scheme.width_multiplier,
        "binary_macs_vs_plain_width": binary_macs_vs_plain_width(spec, input_shape, model_costs),
        "reported": [dataclasses.asdict(r) for r in reported],
        "pretrained": [entry.as_dict() for entry in entries],
        "accuracy": accuracy_rows(reported, entries),
    }


def accuracy_rows(reported, entries) -> list[dict]:
    """The paper's top-1 numbers and the shipped weights' measured ones side by side, each
    with its dataset: a paper's ImageNet figure is not the shipped Fashion-MNIST one."""
    rows = [
        {"source": "paper", "dataset": r.dataset, "input_shape": None, "classes": None,
         "top1": r.top1, "note": "; ".join(filter(None, (f"top-5 {r.top5}" if r.top5 else "", r.note, r.source)))}
        for r in reported
    ]
    rows += [
        {"source": f"shipped weights {entry.tag!r}", "dataset": entry.dataset,
         "input_shape": list(entry.input_shape), "classes": entry.classes, "top1": entry.metrics.get("top1"),
         "note": f"measured on {entry.metrics['test_images']} test images" if "test_images" in entry.metrics else ""}
        for entry in entries
    ]
    return rows


def summary(model: keras.Model, **kwargs) -> None:
    """Larq's model summary: per-layer bit widths, parameters, memory and MACs."""
    lq.models.summary(model, **kwargs)

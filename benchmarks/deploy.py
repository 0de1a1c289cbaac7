"""The deploy table: every registered ``*_resnet18`` and ``*_resnet20`` as a .tflite, beside references.

Each model is converted with ``zoo.convert`` (LCE for binary models, tf.lite for the
float ones; random weights: latency, size and operators do not depend on them): op
counts, file size, and parity of LCE's interpreter with the exported Keras model on 64
real Fashion-MNIST test images resized to the input. Then ``zoo.benchmark`` times every
file of one input shape in one run, their repeats interleaved, at 1 and 2 threads, with
LCE's fast binary kernels (``use_indirect_bgemm``), without and with XNNPACK. The
references are converted the same way in the same run: larq-zoo's BinaryResNetE18
(larq-zoo 2.3.1 installed with ``pip --target`` under ``$ZOO_HOME/peers`` and imported
beside this stack), the float ResNet-18 (``fp_resnet18``) and its int8 PTQ. Writes
``results/deploy.{json,md}`` and ``results/deploy.png`` (latency vs file size).

    python benchmarks/deploy.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
from common import RESULTS, command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from zoo import registry  # noqa: E402
from zoo.weights import zoo_home  # noqa: E402

LARQ_ZOO = ("larq-zoo==2.3.1", "zookeeper==1.3.3", "click==8.1.8", "typeguard==2.13.3")
E18 = "larq_zoo.BinaryResNetE18"
FLOAT_REFERENCE = "fp_resnet18"
INT8_REFERENCE = "fp_resnet18 (int8 PTQ)"
#: RBNN without its per-sample activation centring (§1.10's `center_activations` [choice]):
#: what the centring costs in latency; a different model, to be retrained, not an export of the faithful one
RBNN_UNCENTRED = "rbnn_resnet18 (center_activations=False)"
SETTINGS = {"LCE fast kernels": False, "+ XNNPACK": True}  # label -> use_xnnpack
#: why each float operator a zoo ResNet-18 has beyond BinaryResNetE18 is there
JUSTIFICATIONS = {
    "SUB": "input normalisation in the model (it takes raw 0-255 pixels; larq-zoo's takes "
           "preprocessed input); RBNN: + the per-sample activation centring before each binary conv",
    "MEAN": "global average pooling (E18: AVERAGE_POOL_2D); RBNN: + the per-sample mean of its activation centring",
    "MUL": "input normalisation scale",
}


@contextlib.contextmanager
def _keras2_as_keras():
    """larq-zoo 2.3 imports two names from ``keras`` (Keras 3 here): point them at tf_keras."""
    aliases = {
        "keras.applications.imagenet_utils": "tf_keras.src.applications.imagenet_utils",
        "keras.engine.keras_tensor": "tf_keras.src.engine.keras_tensor",
    }
    saved = {name: sys.modules.get(name) for name in aliases}
    sys.modules.update({name: importlib.import_module(target) for name, target in aliases.items()})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def binary_resnet_e18(input_shape):
    """larq-zoo's BinaryResNetE18 (random weights), installed on first use."""
    target = zoo_home() / "peers" / "larq-zoo-2.3.1"
    if not (target / "larq_zoo").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        *LARQ_ZOO], check=True)
    sys.path.append(str(target))
    with _keras2_as_keras():
        import larq_zoo
    return larq_zoo.literature.BinaryResNetE18(weights=None, input_shape=input_shape)


def uncentred_rbnn(input_shape):
    from zoo.schemes.rbnn import RBNN

    return registry.get_model_spec("rbnn_resnet18").architecture.builder(
        RBNN(center_activations=False), input_shape=input_shape)


def method_of(label: str) -> str:
    name = label.split(" ")[0]
    if label == E18:
        return "larq-zoo reference"
    if label == INT8_REFERENCE:
        return "int8 post-training quantization"
    return registry.get_model_spec(name).scheme.method + ("" if name == label else f", {label[len(name) + 1:]}")


def convert_all(names, shape, out_dir, data_dir, with_references):
    """name -> ConversionReport, every file written to out_dir."""
    reports = {}
    jobs = [(name, name, {}) for name in names]
    if with_references:
        jobs += [(INT8_REFERENCE, FLOAT_REFERENCE, {"int8": True}), (E18, binary_resnet_e18(shape), {}),
                 (RBNN_UNCENTRED, uncentred_rbnn(shape), {})]
    for label, model, options in jobs:
        print(f"converting {label}", flush=True)
        if isinstance(model, str):
            options = {"weights": None, "input_shape": shape, **options}
        path = out_dir / (label.replace(" ", "_").replace("(", "").replace(")", "") + ".tflite")
        reports[label] = zoo.convert(model, path, data_dir=data_dir, **options)
    return reports


def time_all(reports, threads_list, warmup, repeats):
    """label -> setting -> threads -> Latency, each (threads, setting) one interleaved run."""
    labels = list(reports)
    paths = [reports[label].path for label in labels]
    timings = {label: {setting: {} for setting in SETTINGS} for label in labels}
    runs = []
    for threads in threads_list:
        for setting, xnnpack in SETTINGS.items():
            print(f"timing {len(paths)} models, {threads} thread(s), {setting}", flush=True)
            report = zoo.benchmark(paths[0], vs=paths[1:], threads=threads, warmup=warmup, repeats=repeats,
                                   use_indirect_bgemm=True, use_xnnpack=xnnpack)
            runs.append({"threads": threads, "setting": setting, **report.as_dict()})
            for label, result in zip(labels, report.results):
                timings[label][setting][threads] = result
    return timings, runs


def extra_float_ops(ops: dict, reference: dict) -> dict:
    """Float operators (kind: count) beyond the reference's."""
    return {kind: ops[kind] - reference.get(kind, 0) for kind in ops
            if not kind.startswith("Lce") and ops[kind] > reference.get(kind, 0)}


def best(timing: dict, threads: int) -> tuple[float, str]:
    return min((timing[setting][threads].median_ms, setting) for setting in SETTINGS)


def group_table(reports, timings, threads_list, reference):
    rows = []
    for label, report in reports.items():
        method = method_of(label)
        bconv = f"{report.bconv2d}/{report.binary_layers}" if report.binary_layers else "-"
        latencies = []
        for threads in threads_list:
            ms, setting = best(timings[label], threads)
            ratio = f" ({ms / timings[reference][setting][threads].median_ms:.2f}x)" if reference else ""
            latencies.append(f"{ms:.2f}{ratio}")
        parity = report.parity
        row = [f"`{label}`", method, f"{report.file_bytes / 2**20:.2f}", bconv]
        if reference:
            extra = extra_float_ops(report.ops, reports[reference].ops) if report.binary_layers else {}
            row.append(", ".join(f"{k} +{v}" for k, v in extra.items()) or "-")
        rows.append([*row, *latencies, f"{parity.top1_agreement:.0%} / {parity.max_abs_diff:.1e}"])
    headers = ["model", "method", "MiB", "LceBconv2d / binary", *(["float ops beyond E18"] if reference else []),
               *[f"ms, {t} thread{'s' if t > 1 else ''}" + (" (vs E18)" if reference else "") for t in threads_list],
               "LCE vs Keras: top-1 / max abs diff"]
    return markdown_table(rows, headers)


def goals(reports, timings, threads_list):
    binary18 = [name for name in reports if name.split(" ")[0].endswith("_resnet18") and reports[name].binary_layers]
    e18, fp = reports[E18], reports[FLOAT_REFERENCE]
    result = {
        "all_binary_convs_bconv": {n: reports[n].bconv2d == reports[n].binary_layers for n in binary18},
        "extra_float_ops_vs_e18": {n: extra_float_ops(reports[n].ops, e18.ops) for n in binary18},
        "size_vs_float_resnet18": {n: reports[n].file_bytes / fp.file_bytes for n in binary18 + [E18]},
        "latency_vs_e18": {},
    }
    for name in binary18:
        result["latency_vs_e18"][name] = {}
        for threads in threads_list:
            _, e18_setting = best(timings[E18], threads)  # E18's best setting, ours in the same run
            ratio = timings[name][e18_setting][threads].median_ms / timings[E18][e18_setting][threads].median_ms
            result["latency_vs_e18"][name][threads] = ratio
    return result


def goals_table(results, threads_list) -> str:
    rows = [
        [f"`{name}`", "yes" if ok else "**no**",
         ", ".join(f"{k} +{v}" for k, v in results["extra_float_ops_vs_e18"][name].items()),
         *[f"{results['latency_vs_e18'][name][t]:.2f}x" for t in threads_list],
         f"{results['size_vs_float_resnet18'][name]:.3f}"]
        for name, ok in results["all_binary_convs_bconv"].items()
    ]
    return markdown_table(rows, ["model", "100% LceBconv2d", "float ops beyond E18",
                                 *[f"latency / E18, {t} thread{'s' if t > 1 else ''} (goal <= 1.05)"
                                   for t in threads_list], "size / fp_resnet18 (goal <= 0.1)"])


def plot(groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 5.5), squeeze=False)
    markers = "osD^v<>pP*Xh"
    for axis, (shape, (reports, timings)) in zip(axes[0], groups.items()):
        for i, (label, report) in enumerate(reports.items()):
            axis.scatter(report.file_bytes / 2**20, best(timings[label], 1)[0], marker=markers[i % len(markers)],
                         s=60, label=label, alpha=0.8)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(".tflite size (MiB, log)")
        axis.set_ylabel("latency, 1 thread (ms, median, log)")
        axis.set_title(f"LCE x86 interpreter, {shape}, batch 1")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (Fashion-MNIST is built there if needed)")
    parser.add_argument("--output", default=None, help="where the .tflite files go (default: a temporary dir)")
    parser.add_argument("--name", default="deploy", help="results file name")
    args = parse_arguments(parser, argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    out_dir = Path(args.output or tempfile.mkdtemp(prefix="zoo-deploy-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f".tflite files go to {out_dir}", flush=True)
    load_start = os.getloadavg()

    groups, payload_groups, tables = {}, {}, []
    for pattern, shape, references in (("*_resnet18", (224, 224, 3), True), ("*_resnet20", (32, 32, 3), False)):
        reports = convert_all(zoo.list_models(pattern), shape, out_dir, args.data_dir, references)
        timings, runs = time_all(reports, threads_list, args.warmup, args.repeats)
        key = "x".join(map(str, shape))
        groups[key] = (reports, timings)
        payload_groups[key] = {"conversions": {label: r.as_dict() for label, r in reports.items()}, "runs": runs}
        reference = E18 if references else None
        tables.append(f"### `{pattern}` at {key}, batch 1\n\n" + group_table(reports, timings, threads_list, reference))

    results = goals(groups["224x224x3"][0], groups["224x224x3"][1], threads_list)
    plot_path = RESULTS / f"{args.name}.png"
    plot(groups, plot_path)
    command = command_line(__file__, argv)
    load_end = os.getloadavg()
    notes = (
        f"LCE {_version('larq-compute-engine')} x86 interpreter, `use_indirect_bgemm=True`; each latency is the "
        f"median of {args.repeats} runs after {args.warmup} warm-up runs, all models of a table interleaved in one "
        "run per (threads, XNNPACK) setting; the better of the two XNNPACK settings is shown, and the ratio is to "
        "E18 under that same setting. Load average (1 min) at start / end: "
        f"{load_start[0]:.2f} / {load_end[0]:.2f}. Parity: 64 Fashion-MNIST test images resized to the input, "
        "random weights. Float ops beyond E18: " + "; ".join(f"{k}: {v}" for k, v in JUSTIFICATIONS.items()) + "."
    )
    tables.append("### Goals (`*_resnet18`, 224x224x3)\n\n" + goals_table(results, threads_list))
    table = "\n\n".join(tables) + f"\n\n{notes}\n\n![latency vs size]({plot_path.name})\n\n`{command}`"
    write_results(args.name, {
        "command": command, "load_average": {"start": load_start, "end": load_end}, "threads": threads_list,
        "warmup": args.warmup, "repeats": args.repeats, "groups": payload_groups, "goals": results,
    }, table)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()

"""The ``zoo`` command line: the outermost layer of the package."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training import cli as train_command
from zoo.errors import user_errors
from zoo.text import readable, text_table


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C (e.g. 28,28,1), got {text!r}") from None


def cmd_list(args) -> int:
    import zoo
    from zoo import registry

    names = zoo.list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"No model matches {args.pattern!r}.", file=sys.stderr)
        return 1
    tags: dict[str, list[str]] = {}
    for entry in registry.manifest_entries():
        tags.setdefault(entry.name, []).append(entry.tag)
    rows = []
    for name in names:
        spec = registry.get_model_spec(name)
        rows.append([name, spec.architecture.family, spec.scheme.method, ", ".join(tags.get(name, [])) or "-"])
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "method", "pretrained"), r)) for r in rows], indent=2))
    else:
        print(text_table(rows, ["model", "family", "method", "pretrained"]))
    return 0


def cmd_info(args) -> int:
    import zoo

    details = zoo.info(args.name, input_shape=args.input_shape)
    if args.json:
        print(json.dumps(details, indent=2))
        return 0
    rows = [
        ["model", details["name"]],
        ["family", f"{details['family']}: {details['architecture_description']}"],
        ["method", f"{details['method']} ({details['paper']})"],
        ["input", f"{tuple(details['input_shape'])}, {details['input']}"],
        ["normalisation", f"mean {[round(v, 2) for v in details['input_mean']]}, "
                          f"std {[round(v, 2) for v in details['input_std']]}"],
        ["classes", details["classes"]],
        ["parameters", f"{details['parameters']:,}"],
        ["binary MACs", f"{readable(details['binary_macs'], '.2f')} ({details['binary_convs']} binary convs)"
                        + (f", {details['binary_macs_vs_plain_width']:g}x the plain-width architecture "
                           f"(width x{details['width_multiplier']})" if details["width_multiplier"] != 1 else "")],
        ["float MACs", readable(details["float_macs"], ".2f")],
    ]
    print(text_table(rows, ["field", "value"]))
    if details["accuracy"]:
        print("\nTop-1 accuracy (%), the paper's and the shipped weights': compare only within a dataset")
        print(text_table(
            [[a["source"], a["dataset"], tuple(a["input_shape"]) if a["input_shape"] else "-",
              a["classes"] or "-", a["top1"] if a["top1"] is not None else "-", a["note"] or "-"]
             for a in details["accuracy"]],
            ["source", "dataset", "input shape", "classes", "top-1", "note"],
        ))
    if details["pretrained"]:
        print("\nPretrained weights (zoo.load(name, weights=<tag>)):")
        print(text_table(
            [[p["tag"], p["dataset"], tuple(p["input_shape"]), p["classes"], p.get("command", "")]
             for p in details["pretrained"]],
            ["tag", "dataset", "input shape", "classes", "command"],
        ))
        for entry in details["pretrained"]:
            if entry.get("class_names"):
                print(f"outputs of '{entry['tag']}', in order: " + ", ".join(
                    f"{i} {name}" for i, name in enumerate(entry["class_names"])))
    else:
        print("\nPretrained weights: none yet (zoo.load(..., weights=None) gives a randomly initialised model)")
    return 0


def cmd_search(args) -> int:
    from zoo.search import run_search  # lazily: imports Keras Tuner

    summary = run_search(
        space=args.space, dataset=args.dataset, budget=args.budget, tuner=args.tuner, max_trials=args.max_trials,
        epochs=args.epochs, output_dir=args.output, schemes=args.schemes, ops=args.ops,
        train_images=args.train_images, val_images=args.val_images, batch_size=args.batch_size,
        learning_rate=args.learning_rate, patience=args.patience, seed=args.seed, data_dir=args.data_dir,
        overwrite=args.overwrite, name=args.name, verbose=0 if args.quiet else 2 if args.verbose else 1,
    )
    if summary is None:  # a distributed worker: the chief reports
        return 0
    if not args.quiet:
        print((Path(args.output) / "summary.md").read_text())
    print(f"Best architecture: {summary['best_config']} (model {summary['best_model']}); "
          f"train it with `zoo train {summary['best_config']} --dataset {args.dataset}`.")
    return 0


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _progress(command: str, quiet: bool):
    return (lambda line: None) if quiet else (lambda line: print(f"zoo {command}: {line}", file=sys.stderr))


def cmd_convert(args) -> int:
    import zoo

    report = zoo.convert(
        args.name, args.output, weights=args.weights, input_shape=args.input_shape, target=args.target,
        int8=args.int8, inference_input_type=args.io_type, inference_output_type=args.io_type,
        verify=not args.no_verify, dataset=args.dataset, data_dir=args.data_dir,
        allow_float_binary=args.allow_float_binary, progress=_progress("convert", args.quiet),
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    rows = [
        ["file", f"{report.path} ({report.file_bytes / 2**20:.2f} MiB)"],
        ["converter", f"{report.converter} (target {report.target}), {report.input_type} in, "
                      f"{report.output_type} out{', int8 float parts' if report.int8 else ''}"],
        ["binary layers", f"{report.bconv2d} of {report.binary_layers} as LceBconv2d" if report.binary_layers else "-"],
        ["operators", ", ".join(f"{kind} {count}" for kind, count in report.ops.items())],
        ["parameters", f"{report.parameters:,}"],
        ["MACs", f"{readable(report.binary_macs, '.2f')} binary, {readable(report.float_macs, '.2f')} float"],
    ]
    if report.parity:
        parity = report.parity
        rows.append(["LCE vs Keras", f"top-1 agreement {parity.top1_agreement:.2%} on {parity.data}; "
                                     f"max |Δ {parity.outputs}| {parity.max_abs_diff:.2g}"])
    print(text_table(rows, ["convert", report.model]))
    return 0


def cmd_benchmark(args) -> int:
    import zoo

    report = zoo.benchmark(
        args.model, vs=args.vs, threads=args.threads, input_shape=args.input_shape, weights=args.weights,
        warmup=args.warmup, repeats=args.repeats, use_indirect_bgemm=not args.default_kernels,
        use_xnnpack=args.xnnpack, progress=_progress("benchmark", args.quiet),
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    rows = [
        [r.model, f"{r.median_ms:.2f}", f"{r.p90_ms:.2f}", f"{ratio:.2f}x", f"{r.file_bytes / 2**20:.2f} MiB",
         "-" if r.parameters is None else readable(r.parameters, ".2f"),
         "-" if r.binary_macs is None else readable(r.binary_macs, ".2f"),
         "-" if r.float_macs is None else readable(r.float_macs, ".2f")]
        for r, ratio in zip(report.results, report.ratios)
    ]
    print(text_table(rows, ["model", "median ms", "p90 ms", "ratio", "file", "params", "binary MACs", "float MACs"]))
    before, after = report.load_average
    print(f"\n{'x'.join(map(str, report.input_shape))}, batch 1, {report.threads} thread(s), LCE interpreter "
          f"{report.interpreter}; {report.warmup} warm-up + {report.repeats} timed runs per model, interleaved; "
          f"load average {before[0]:.2f} -> {after[0]:.2f}")
    return 0


def cmd_compress(args) -> int:
    from zoo.compress import pipeline  # lazily: imports TF-MOT

    rates = {key: value for key, value in (("learning_rate", args.learning_rate),
                                           ("qat_learning_rate", args.qat_learning_rate)) if value is not None}
    report = pipeline.run_pipeline(
        args.model, dataset=args.dataset, output_dir=args.output, prune_ratio=args.prune, structure=args.structure,
        qat=args.qat, epochs=args.epochs, weights=args.weights, batch_size=args.batch_size,
        train_images=args.train_images,
        test_images=args.test_images, hrank_batches=args.hrank_batches, fade=args.fade, qat_scope=args.qat_scope,
        unsupported=args.qat_unsupported,
        latency_repeats=args.latency_repeats, data_dir=args.data_dir, seed=args.seed,
        verbose=0 if args.quiet else 2, progress=_progress("compress", args.quiet), **rates,
    )
    print(json.dumps(report, indent=2, default=str) if args.json else pipeline.markdown_report(report))
    return 0


def cmd_port(args) -> int:
    from zoo import port

    model = port.port_to_file(args.checkpoint, args.output, arch=args.arch)
    classes = int(model.output_shape[-1])
    default = port.registry.get_model_spec(model.name).architecture.default_classes
    load_args = f'"{model.name}", weights="{args.output}"' + (f", classes={classes}" if classes != default else "")
    print(f"zoo port: wrote {args.output} ({model.name}, {classes} classes); load it with zoo.load({load_args})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="1-bit CNN model zoo.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_list_command(commands)
    _add_info_command(commands)
    _add_train_command(commands)
    _add_search_command(commands)
    _add_convert_command(commands)
    _add_benchmark_command(commands)
    _add_compress_command(commands)
    _add_port_command(commands)
    return parser


def _add_list_command(commands) -> None:
    listing = commands.add_parser("list", help="list registered models")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'bnn_*'")
    listing.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=cmd_list)


def _add_info_command(commands) -> None:
    details = commands.add_parser("info", help="describe a model: method, input, costs, weights")
    details.add_argument("name")
    details.add_argument("--input-shape", type=_parse_shape, default=None, help="H,W,C (default: the architecture's)")
    details.add_argument("--json", action="store_true", help="print JSON instead of a table")
    details.set_defaults(run=cmd_info)


def _add_train_command(commands) -> None:
    training = commands.add_parser("train", help="train a model with its method's recipe (checkpoints, logs, exports)")
    train_command.add_arguments(training)
    training.set_defaults(run=train_command.run)


def _add_search_command(commands) -> None:
    search = commands.add_parser(
        "search", help="search a binary architecture under a budget (Keras Tuner; resumable, distributable)",
        description="Keras Tuner search of a binary architecture; rerun the same command to resume. Distributed: "
                    "set KERASTUNER_TUNER_ID (chief / worker0, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
                    "and run the same command in every process.")
    search.add_argument("--space", default="bars", help="bnas or bars")
    search.add_argument("--dataset", required=True, help="a dataset of zoo.load_dataset, e.g. fashion_mnist")
    search.add_argument("--budget", action="append", default=None,
                        help="limits, e.g. binary_macs=20M,float_macs=1M (also params=, latency_ms=); repeatable")
    search.add_argument("--tuner", default="bayesian", help="hyperband, bayesian or random")
    search.add_argument("--max-trials", type=int, default=10)
    search.add_argument("--epochs", type=int, default=2, help="epochs per trial (hyperband: the most per trial)")
    search.add_argument("-o", "--output", required=True, help="results directory (an existing one resumes)")
    search.add_argument("--schemes", type=_names, default=None, help="comma-separated (default: bnn,xnor,bireal)")
    search.add_argument("--ops", type=_names, default=None, help="comma-separated cell ops (default: the space's)")
    search.add_argument("--train-images", type=int, default=10_000, help="training images per trial epoch")
    search.add_argument("--val-images", type=int, default=5_000, help="held-out training images for validation")
    search.add_argument("--batch-size", type=int, default=64)
    search.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate of the trials")
    search.add_argument("--patience", type=int, default=2, help="early stopping: epochs without a better val_accuracy")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--data-dir", default=None, help="TFDS data dir")
    search.add_argument("--name", default=None, help="architecture name of the best config")
    search.add_argument("--overwrite", action="store_true", help="delete the results directory first")
    search.add_argument("--verbose", action="store_true", help="also Keras Tuner's and Keras' progress")
    search.add_argument("--quiet", action="store_true", help="no progress or summary")
    search.set_defaults(run=cmd_search)


def _add_convert_command(commands) -> None:
    converting = commands.add_parser("convert", help="convert a model to a .tflite for Android (LCE), verified")
    converting.add_argument("name", help="a registered model, e.g. bnn_resnet18")
    converting.add_argument("-o", "--output", required=True, help="the .tflite file to write (atomically)")
    converting.add_argument("--weights", default="default", help="pretrained tag, weights file or URL (default: "
                            "the first pretrained entry, else random initialisation)")
    converting.add_argument("--input-shape", type=_parse_shape, default=None, help="H,W,C (default: the weights' "
                            "or the architecture's)")
    converting.add_argument("--int8", action="store_true", help="int8 float parts (calibrated on --dataset's train "
                            "images); binary convs stay binary")
    converting.add_argument("--io-type", choices=("float32", "int8"), default="float32",
                            help="the file's input and output type (int8 needs --int8)")
    converting.add_argument("--target", choices=("arm", "xcore"), default="arm", help="LCE's target")
    converting.add_argument("--dataset", default="fashion_mnist", help="images to verify on and calibrate with "
                            "(resized to the input)")
    converting.add_argument("--data-dir", default=None, help="TFDS data dir")
    converting.add_argument("--no-verify", action="store_true", help="skip running the file against the Keras model")
    converting.add_argument("--allow-float-binary", action="store_true",
                            help="accept binary layers that did not become LceBconv2d")
    converting.add_argument("--json", action="store_true", help="print the report as JSON")
    converting.add_argument("--quiet", action="store_true", help="no progress lines")
    converting.set_defaults(run=cmd_convert)


def _add_benchmark_command(commands) -> None:
    timing = commands.add_parser("benchmark", help="latency of a model or .tflite in LCE's interpreter")
    timing.add_argument("model", metavar="NAME_OR_TFLITE", help="a registered model or a .tflite file")
    timing.add_argument("--vs", action="append", default=None, metavar="NAME_OR_TFLITE",
                        help="compare with another model in the same run (repeatable)")
    timing.add_argument("--threads", type=int, default=1)
    timing.add_argument("--input-shape", type=_parse_shape, default=None, help="H,W,C for names (default: the "
                        "architecture's)")
    timing.add_argument("--weights", default=None, help="for names (latency does not depend on them)")
    timing.add_argument("--warmup", type=int, default=10)
    timing.add_argument("--repeats", type=int, default=50)
    timing.add_argument("--default-kernels", action="store_true",
                        help="LCE's default binary kernels instead of its fast indirect BGEMM ones")
    timing.add_argument("--xnnpack", action="store_true", help="TFLite's XNNPACK delegate for the float ops")
    timing.add_argument("--json", action="store_true", help="print the report as JSON")
    timing.add_argument("--quiet", action="store_true", help="no progress lines")
    timing.set_defaults(run=cmd_benchmark)


def _add_compress_command(commands) -> None:
    compressing = commands.add_parser(
        "compress", help="prune, fine-tune, quantize (QAT), export and report a smaller model (TF-MOT)",
        description="prune -> fine-tune -> QAT -> fine-tune -> export -> report: test accuracy before/after, "
                    ".tflite size, binary and float MACs, LCE latency; files and report.json/.md in -o.")
    compressing.add_argument("model", help="a registered model, e.g. rbnn_resnet20")
    compressing.add_argument("--dataset", required=True, help="a dataset of zoo.load_dataset, e.g. fashion_mnist")
    compressing.add_argument("-o", "--output", required=True, help="output directory")
    compressing.add_argument("--prune", type=float, default=0.0, metavar="RATIO",
                             help="fraction of filters (channel) or weights (magnitude) removed (default 0: none)")
    compressing.add_argument("--structure", choices=("channel", "magnitude", "2:4"), default="channel",
                             help="channel: HRank filter pruning, binary convs included (default); magnitude / "
                                  "2:4: TF-MOT on the float layers")
    compressing.add_argument("--qat", action="store_true", help="quantization-aware training of the float parts")
    compressing.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs after each step")
    compressing.add_argument("--weights", default="default", help="as in zoo.load: default, a tag, a path")
    compressing.add_argument("--batch-size", type=int, default=64)
    compressing.add_argument("--learning-rate", type=float, default=None,
                             help="Adam's initial rate (cosine decay) of the fine-tune after pruning (default: "
                                  "zoo.compress.PRUNE_LEARNING_RATE, chosen on held-out images)")
    compressing.add_argument("--qat-learning-rate", type=float, default=None,
                             help="Adam's initial rate (cosine decay) of the QAT fine-tune (default: "
                                  "zoo.compress.QAT_LEARNING_RATE)")
    compressing.add_argument("--train-images", type=int, default=None, help="fine-tune on the first N images")
    compressing.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images")
    compressing.add_argument("--hrank-batches", type=int, default=4,
                             help="batches HRank averages ranks over (and QAT calibrates its ranges on)")
    compressing.add_argument("--fade", type=float, default=0.25, metavar="FRACTION",
                             help="channel pruning: the removed filters fade out over this fraction of the "
                                  "fine-tune (0: removed at once)")
    compressing.add_argument("--qat-scope", choices=("auto", "float_layers", "all"), default="auto",
                             help="int8 layers: those with float weights (binary models' default) or all")
    compressing.add_argument("--qat-unsupported", choices=("error", "float"), default="error",
                             help="a layer QAT cannot quantize: an error (default), or leave it float")
    compressing.add_argument("--latency-repeats", type=int, default=50)
    compressing.add_argument("--data-dir", default=None, help="TFDS data dir")
    compressing.add_argument("--seed", type=int, default=0)
    compressing.add_argument("--json", action="store_true", help="print the report as JSON")
    compressing.add_argument("--quiet", action="store_true", help="no progress lines")
    compressing.set_defaults(run=cmd_compress)


def _add_port_command(commands) -> None:
    porting = commands.add_parser(
        "port", help="an official PyTorch checkpoint as zoo weights (RBNN: resnet20, resnet18, resnet34)",
        description="Maps the authors' state dict onto rbnn_<arch>_official, every name and shape checked, "
                    "and writes its weights (HDF5) for zoo.load. Reads .npz, or .pt/.pth with PyTorch installed.")
    porting.add_argument("method", choices=("rbnn",), help="the method whose official code saved the checkpoint")
    porting.add_argument("checkpoint", help="the state dict: .npz, or .pt / .pth saved by torch.save")
    porting.add_argument("-o", "--output", required=True, help="the weights file to write (.h5, atomically)")
    porting.add_argument("--arch", choices=("resnet20", "resnet18", "resnet34"), default=None,
                         help="default: the layout the checkpoint's names fit best")
    porting.set_defaults(run=cmd_port)


class _NoRetracingAdvice(logging.Filter):
    """Drops TensorFlow's advice to stop retracing a ``tf.function``: the commands predict
    with several models in a row (trained, inference form, reloaded), which is what it counts,
    and the advice is for the caller's own code, not a command's user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def hide_retracing_advice() -> None:
    """Filters that advice from the ``tensorflow`` logger, once per process: for ``zoo``'s commands
    and the benchmark scripts, not for the library, whose users may be told about their own code."""
    tensorflow_log = logging.getLogger("tensorflow")
    if not any(isinstance(f, _NoRetracingAdvice) for f in tensorflow_log.filters):
        tensorflow_log.addFilter(_NoRetracingAdvice())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    hide_retracing_advice()
    try:
        return args.run(args)
    except user_errors() as err:
        print(f"zoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The README's pretrained-weights table, measured from the shipped files.

For every entry of ``pretrained/manifest.json`` (or the models named): the stated test
top-1 and the command that trained it, the model's parameters and binary / float MACs
at its input shape, and the ``.tflite`` that ``zoo.convert`` makes from the shipped
weights (LCE, verified in its interpreter on real test images): its size and its
latency in LCE's interpreter (batch 1, fast kernels, 1 thread).

    python benchmarks/pretrained.py [NAME ...] [--name pretrained]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from zoo import registry  # noqa: E402


def measure(entry: registry.PretrainedEntry, directory: Path, repeats: int) -> dict:
    details = zoo.info(entry.name, input_shape=entry.input_shape)
    conversion = zoo.convert(entry.name, directory / f"{entry.name}-{entry.tag}.tflite", weights=entry.tag,
                             dataset=entry.dataset)
    latency = zoo.benchmark(conversion.path, threads=1, repeats=repeats).results[0]
    return {
        "model": entry.name, "method": details["method"], "tag": entry.tag, "top1": entry.metrics["top1"],
        "test_images": entry.metrics["test_images"], "parameters": details["parameters"],
        "binary_macs": details["binary_macs"], "float_macs": details["float_macs"],
        "weights_bytes": entry.size, "tflite_bytes": conversion.file_bytes, "lce_bconv2d": conversion.bconv2d,
        "binary_layers": conversion.binary_layers, "lce_top1_agreement": conversion.parity.top1_agreement,
        "lce_latency_ms_median": latency.median_ms, "lce_latency_ms_p90": latency.p90_ms, "command": entry.command,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="default: every model with pretrained weights")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--name", default="pretrained", help="results file name")
    args = parse_arguments(parser, argv)
    names = args.models or zoo.list_models(pretrained=True)
    with tempfile.TemporaryDirectory() as directory:
        rows = [measure(entry, Path(directory), args.repeats)
                for name in names for entry in registry.pretrained_entries(name)]
    rows.sort(key=lambda row: (not row["model"].endswith("resnet20"), -row["top1"]))
    table = markdown_table([
        [f"`{r['model']}`", r["method"], f"{r['top1']:.2f} %", f"{r['parameters'] / 1e6:.2f} M",
         f"{r['binary_macs'] / 1e6:.1f} M", f"{r['float_macs'] / 1e6:.2f} M", f"{r['tflite_bytes'] / 2**10:,.0f} KiB",
         f"{r['lce_latency_ms_median']:.2f} ms", f"`{r['command']}`"]
        for r in rows
    ], ["model", "method", "test top-1", "params", "binary MACs", "float MACs", ".tflite", "LCE latency",
        "command"])
    command = command_line(__file__, argv)
    table += ("\n\nFashion-MNIST, 28×28×1, top-1 on all 10 000 test images (stated in the manifest, measured when "
              "the run finished). `.tflite`: `zoo.convert` of the shipped weights (LCE; every binary conv an "
              "`LceBconv2d`); latency: LCE's x86 interpreter, batch 1, 1 thread, fast kernels, median of "
              f"{args.repeats}. Produced by `{command.strip()}`.")
    write_results(args.name, {"command": command, "rows": rows}, table)


if __name__ == "__main__":
    main()

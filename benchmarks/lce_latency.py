"""LCE latency (x86 interpreter, batch 1) of exported registry models, timed in one run.

Each model is exported (``zoo.to_inference``), converted with LCE and timed by
:func:`zoo.deploy.benchmark`: LCE's fast binary kernels (``use_indirect_bgemm``), the
given threads, warm-up runs, then repeats interleaved across the models so that their
ratios are fair; the median is reported. The first model is the baseline of the ratio
column. A model may carry builder keywords, e.g. ``bnn_resnet18:width_multiplier=4``.

    python benchmarks/lce_latency.py cbcn_resnet18 bnn_resnet18 bnn_resnet18:width_multiplier=4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
from common import command_line, model_argument, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from zoo.deploy import benchmark  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--input-shape", default="224,224,3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: "lce_latency_" + "_vs_".join(a.models))
    shape = tuple(int(v) for v in args.input_shape.split(","))
    models = []
    for text in args.models:
        name, builder_kwargs = model_argument(text)
        models.append(zoo.load(name, weights=None, input_shape=shape, **builder_kwargs))
    report = benchmark(models[0], vs=models[1:], threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                       use_indirect_bgemm=True, progress=print)
    results = {text: result for text, result in zip(args.models, report.results)}
    rows = [[text, f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}", f"{ratio:.2f}x", f"{r.binary_macs / 1e9:.2f} G",
             f"{r.float_macs / 1e9:.2f} G", f"{r.file_bytes / 2**20:.1f} MiB"]
            for (text, r), ratio in zip(results.items(), report.ratios)]
    table = markdown_table(rows, ["model", "median ms", "p90 ms", f"vs {args.models[0]}", "binary MACs",
                                  "float MACs", ".tflite"])
    command = command_line(__file__, argv)
    table += (f"\n\nLCE x86 interpreter, `use_indirect_bgemm=True`, {args.threads} thread(s), batch 1, "
              f"{'x'.join(map(str, shape))} input, median of {args.repeats} interleaved runs after "
              f"{args.warmup} warm-up runs (load average before/after: {report.load_average}).\n\n`{command}`")
    write_results(args.name, {
        "command": command, **report.as_dict(), "models": list(args.models),
    }, table)


if __name__ == "__main__":
    main()

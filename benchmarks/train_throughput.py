"""Training throughput (images/s on this CPU) of registry models at the same batch.

Each model trains with its method's machinery (RBNN: coupled-decay SGD, the per-epoch
callbacks are outside the timed steps) on random pixels; the first steps (tracing) are
not timed. The first model is the baseline of the ratio column.

    python benchmarks/train_throughput.py rbnn_resnet20 bnn_resnet20 --batch-size 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import numpy as np  # noqa: E402
from common import markdown_table, write_results  # noqa: E402
from zoo.optimizers import SGDCoupledDecay  # noqa: E402


def images_per_second(name, input_shape, batch_size, steps, warmup):
    model = zoo.load(name, weights=None, input_shape=input_shape, classes=10)
    model.compile(SGDCoupledDecay(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, *input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-shape", default="28,28,1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.input_shape.split(","))
    rates = {m: images_per_second(m, shape, args.batch_size, args.steps, args.warmup) for m in args.models}
    base = rates[args.models[0]]
    rows = [[m, f"{r:.1f}", f"{base / r:.2f}x"] for m, r in rates.items()]
    table = markdown_table(rows, ["model", "train images/s", f"step time vs {args.models[0]}"])
    command = "python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.name or "train_throughput_" + "_vs_".join(args.models), {
        "command": command, "batch_size": args.batch_size, "input_shape": shape,
        "steps": args.steps, "images_per_second": rates,
    }, table + f"\n\n`{command}`")


if __name__ == "__main__":
    main()

"""Training throughput (images/s on this CPU) of registry models at the same batch.

Each model trains as its method's recipe trains it (``training.recipes.recipe_for``: the
recipe's wrapper — BONN's trainer with its feature loss, RBCN's adversarial trainer with
a randomly initialised full-precision teacher — and its optimizer; the per-epoch
callbacks are outside the timed steps) on random pixels; the first steps (tracing) are
not timed. With ``--repeats R`` the models are timed in turn R times and each keeps its
best rate. The first model is the baseline of the ratio column. A model may carry
builder keywords, e.g. a 4x wide BNN: ``bnn_resnet20:width_multiplier=4``.

    python benchmarks/train_throughput.py rbnn_resnet20 bnn_resnet20 --batch-size 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import numpy as np  # noqa: E402
from common import command_line, model_argument, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from training.recipes import recipe_for  # noqa: E402
from training.teacher import teacher_name  # noqa: E402


def training_step(model_text, input_shape, batch_size, warmup):
    """One training step of the model as its recipe trains it, traced and warmed up."""
    name, builder_kwargs = model_argument(model_text)
    model = zoo.load(name, weights=None, input_shape=input_shape, classes=10, **builder_kwargs)
    recipe = recipe_for(name, epochs=1, batch_size=batch_size)
    teacher = None
    if recipe.NEEDS_TEACHER:  # timing only: a random-weight teacher costs what a trained one does
        teacher = zoo.load(teacher_name(name), weights=None, input_shape=input_shape, classes=10)
    trainable = recipe.wrap(model, teacher)
    recipe.compile(trainable)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, *input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    for _ in range(warmup):
        trainable.train_on_batch(x, y)
    return lambda: trainable.train_on_batch(x, y)


def images_per_second(step, batch_size, steps):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-shape", default="28,28,1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1,
                        help="time the models in turn this many times and keep each one's best rate "
                             "(other load on a shared machine only ever slows a run down)")
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: "train_throughput_" + "_vs_".join(a.models))
    shape = tuple(int(v) for v in args.input_shape.split(","))
    steps = {m: training_step(m, shape, args.batch_size, args.warmup) for m in args.models}
    measured = {m: [] for m in args.models}
    for _ in range(args.repeats):
        for m in args.models:
            measured[m].append(images_per_second(steps[m], args.batch_size, args.steps))
    rates = {m: max(values) for m, values in measured.items()}
    base = rates[args.models[0]]
    rows = [[m, f"{r:.1f}", f"{base / r:.2f}x"] for m, r in rates.items()]
    table = markdown_table(rows, ["model", "train images/s", f"step time vs {args.models[0]}"])
    command = command_line(__file__, argv)
    write_results(args.name, {
        "command": command, "batch_size": args.batch_size, "input_shape": shape,
        "steps": args.steps, "repeats": args.repeats, "images_per_second": rates, "every_repeat": measured,
    }, table + f"\n\n`{command}`")


if __name__ == "__main__":
    main()

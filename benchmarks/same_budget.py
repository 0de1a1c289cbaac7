"""Same-budget comparison on real Fashion-MNIST: models trained with one recipe, one
data budget, one seed; best and final test accuracy of each.

    python benchmarks/same_budget.py rbnn_resnet20 bnn_resnet20 fp_resnet20 --recipe rbnn \
        --epochs 2 --train-images 15000

``--recipe METHOD`` trains every model with that method's optimizer and schedule (the
method's own layers, losses and callbacks come with its models; a model may carry builder
keywords, e.g. ``bnn_resnet20:width_multiplier=4``). ``--teacher`` gives every
model a full-precision teacher, which the recipe uses as it does (RBCN: its adversarial
trainer, for RBCN models only; other recipes: knowledge distillation):

    python benchmarks/same_budget.py rbcn_resnet20 bnn_resnet20 --recipe rbcn --teacher fp_resnet20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
from common import command_line, model_argument, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from training.loop import train  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--recipe", required=True, help="the method whose recipe every model trains with")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--teacher", default=None,
                        help="the fp_ twin of the models, trained first with the same budget and its own recipe "
                             "(a row of the table), or a weights file of it")
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument("--quiet", action="store_true")
    args = parse_arguments(parser, argv, lambda a: "same_budget_" + "_vs_".join(a.models))
    budget = dict(epochs=args.epochs, batch_size=args.batch_size, data_dir=args.data_dir,
                  train_images=args.train_images, test_images=args.test_images, verbose=0 if args.quiet else 2)

    reports = {}
    with tempfile.TemporaryDirectory() as scratch:
        teacher = args.teacher
        if teacher in zoo.list_models():
            model, reports[f"{teacher} (teacher)"] = train(teacher, "fashion_mnist", **budget)
            teacher = str(Path(scratch) / "teacher.h5")
            model.save_weights(teacher)
        for text in args.models:
            name, builder_kwargs = model_argument(text)
            _, report = train(name, "fashion_mnist", method=args.recipe, teacher=teacher,
                              builder_kwargs=builder_kwargs, **budget)
            reports[text] = report
            best, seconds = report["best_val_accuracy"], report["train_seconds"]
            print(f"{text}: best test accuracy {best:.4f} in {seconds} s", flush=True)

    rows = [[n, f"{r['best_val_accuracy']:.2%}", f"{r['final_val_accuracy']:.2%}", r["train_seconds"]]
            for n, r in reports.items()]
    command = command_line(__file__, argv)
    teacher_note = f" Teacher: {args.teacher}." if args.teacher else ""
    table = markdown_table(rows, ["model", "best test accuracy", "final test accuracy", "train seconds"])
    table += (f"\n\nReal Fashion-MNIST ({reports[args.models[0]]['test_images']} test images), "
              f"{args.epochs} epochs x {args.train_images} "
              f"training images, batch {args.batch_size}, the {args.recipe} recipe for all "
              f"({reports[args.models[0]]['recipe']}).{teacher_note}\n\n`{command}`")
    write_results(args.name, {"command": command, "reports": reports}, table)


if __name__ == "__main__":
    main()

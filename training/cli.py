"""``zoo train`` (and ``python -m training``): the arguments are parsed by ``zoo.cli``."""

from __future__ import annotations

import sys
from pathlib import Path

from zoo import registry

from training.checkpoint import check_settings
from training.loop import TrainingDiverged, train
from training.recipe import recipe_for

#: exit status when training diverged (2 is argparse's and the zoo's for bad input)
DIVERGED = 3


def _flag(setting: str) -> str:
    return "--recipe" if setting == "method" else "--" + setting.replace("_", "-")


def check_flags(args) -> None:
    """Refuses flags the run cannot honour before anything is built or written (ValueError
    naming the flag): no silent substitute for a bad value, no empty run directory."""
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "train_images": args.train_images,
             "test_images": args.test_images, "val_images": args.val_images, "seed": args.seed, "method": args.recipe,
             "learning_rate": args.learning_rate, "weight_decay": args.weight_decay}
    check_settings(given, _flag)
    if args.train_images is not None and args.batch_size is None and not args.resume:  # the recipe's batch
        batch_size = recipe_for(args.model, args.epochs, method=args.recipe).batch_size
        check_settings({**given, "batch_size": batch_size}, _flag)
    teacher = args.teacher
    if (teacher is not None and not args.resume and teacher not in registry.list_models() and "://" not in teacher
            and ("/" in teacher or Path(teacher).suffix) and not Path(teacher).is_file()):
        raise ValueError(f"--teacher {teacher}: no such file (a teacher is a registered model name or a weights file).")


def run(args) -> int:
    if args.quiet:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    name = registry.get_model_spec(args.model).name  # a searched architecture's name, not its file's path
    check_flags(args)
    output = args.output or str(Path("runs") / f"{name}-{args.dataset}")
    try:
        train(args.model, args.dataset, epochs=args.epochs, batch_size=args.batch_size, method=args.recipe,
              data_dir=args.data_dir, output=output, resume=args.resume, strategy=args.strategy,
              teacher=args.teacher, train_images=args.train_images, test_images=args.test_images,
              val_images=args.val_images, seed=args.seed, optimizer=args.optimizer, learning_rate=args.learning_rate,
              weight_decay=args.weight_decay, schedule=args.schedule, export=not args.no_export,
              verbose=0 if args.quiet else 1 if sys.stdout.isatty() else 2)  # a log file: a line per epoch
    except TrainingDiverged as err:
        print(f"zoo train: {err}", file=sys.stderr)
        return DIVERGED
    return 0


def main(argv=None) -> int:
    from zoo.cli import main as zoo_main

    return zoo_main(["train", *(sys.argv[1:] if argv is None else argv)])

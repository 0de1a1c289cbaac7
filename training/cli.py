"""``zoo train`` (and ``python -m training``): the arguments are parsed by ``zoo.cli``."""

from __future__ import annotations

import sys
from pathlib import Path

from zoo import registry
from zoo.data import DatasetNotFoundError

from training.checkpoint import ResumeError
from training.loop import TrainingDiverged, train

#: exit status when training diverged (2 is argparse's and the zoo's for bad input)
DIVERGED = 3


def run(args) -> int:
    if args.quiet:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    name = registry.get_model_spec(args.model).name  # a searched architecture's name, not its file's path
    output = args.output or str(Path("runs") / f"{name}-{args.dataset}")
    try:
        train(args.model, args.dataset, epochs=args.epochs, batch_size=args.batch_size, method=args.recipe,
              data_dir=args.data_dir, output=output, resume=args.resume, strategy=args.strategy,
              teacher=args.teacher, train_images=args.train_images, test_images=args.test_images, seed=args.seed,
              export=not args.no_export,
              verbose=0 if args.quiet else 1 if sys.stdout.isatty() else 2)  # a log file: a line per epoch
    except (DatasetNotFoundError, ResumeError) as err:
        print(f"zoo train: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"zoo train: {err}", file=sys.stderr)
        return DIVERGED
    return 0


def main(argv=None) -> int:
    from zoo.cli import main as zoo_main

    return zoo_main(["train", *(sys.argv[1:] if argv is None else argv)])

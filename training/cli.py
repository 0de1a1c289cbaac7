"""``zoo train`` (and ``python -m training``): its arguments, their checks and the run.

``zoo.cli`` adds this command to the ``zoo`` command line (:func:`add_arguments`,
:func:`run`); nothing here calls the command line back.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo import registry

from training.checkpoint import check_settings
from training.recipes import recipe_for
from training.recipes.rbnn import THETA_INITS
from training.settings import SETTINGS, flag, lacking_layers

#: exit status when training diverged (2 is argparse's and the zoo's for bad input)
DIVERGED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``zoo train``'s arguments."""
    parser.add_argument("model", help="a registered model, e.g. rbnn_resnet20")
    parser.add_argument("--dataset", required=True, help="a TFDS dataset of zoo.load_dataset, e.g. fashion_mnist")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (schedules scale to it)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or TFDS's)")
    parser.add_argument("--output", default=None, help="run directory (default: runs/MODEL-DATASET)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output at its next epoch")
    parser.add_argument("--strategy", choices=("default", "mirrored", "multi_worker"), default="default",
                        help="tf.distribute strategy; multi_worker reads the cluster from $TF_CONFIG")
    parser.add_argument("--teacher", default=None, help="teacher for distillation: a registry name or weights path")
    parser.add_argument("--recipe", default=None, metavar="METHOD", help="train with another method's recipe")
    parser.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    parser.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--val-images", type=int, default=None,
                        help="hold out the last N training images for validation (the test split is then "
                             "only measured); default: validate on the test split")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="default: the recipe's")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="PyTorch-style (coupled) weight decay; default: the recipe's")
    parser.add_argument("--schedule", choices=("cosine", "step"), default=None,
                        help="learning-rate schedule; default: the recipe's (step: CBCN's reference schedule)")
    parser.add_argument("--centre-loss-epochs", type=int, default=None, metavar="N",
                        help="CBCN's recipe: the last N epochs fine-tune with the centre loss (default: 10%% of "
                             "them; 0: none)")
    parser.add_argument("--kernel-loss-weight", type=float, default=None, metavar="LAMBDA",
                        help="BONN's recipe: λ, the weight of the Bayesian kernel loss (default: the book's 1e-4; "
                             "another value is a deviation, docs/methods/bonn.md)")
    parser.add_argument("--theta-init", choices=THETA_INITS, default=None,
                        help="RBNN's recipe: θ's start (default half_pi, the paper's π/2; uniform: U(0, π/2) per "
                             "channel, the authors' pre-release code, a deviation for short budgets)")
    parser.add_argument("--adversarial-weight", type=float, default=None, metavar="WEIGHT",
                        help="RBCN's recipe: the weight of the adversarial term (default: the spec's 1; 0: none, "
                             "an ablation, docs/methods/rbcn.md)")
    parser.add_argument("--seed", type=int, default=None, help="data order, augmentation, initialisation (0)")
    parser.add_argument("--no-export", action="store_true",
                        help="skip the weights file, manifest entry and .tflite at the end (logs stay)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def check_flags(args) -> None:
    """Refuses flags the run cannot honour before anything is built or written (ValueError
    naming the flag): no silent substitute for a bad value, no empty run directory."""
    given = {setting.key: getattr(args, setting.flag[2:].replace("-", "_")) for setting in SETTINGS}
    check_settings(given, flag)
    method_settings = [s for s in SETTINGS if s.method is not None and given[s.key] is not None]
    if not args.resume and (method_settings or (args.train_images is not None and args.batch_size is None)):
        try:  # the recipe's batch, and its own fields
            batch_size = recipe_for(args.model, args.epochs, args.batch_size, method=args.recipe,
                                    **{s.recipe_field: given[s.key] for s in method_settings}).batch_size
        except ValueError as err:
            flags = " ".join(s.flag for s in method_settings)
            raise ValueError(f"{flags}: {err}" if method_settings else str(err)) from None
        check_settings({**given, "batch_size": batch_size}, flag)
    scheme = registry.get_model_spec(args.model).scheme.name
    for setting in SETTINGS:
        if setting.acts_on is not None and given[setting.key] is not None and scheme != setting.method:
            raise ValueError(f"{setting.flag}: {lacking_layers(setting.key, args.model)}")
    teacher = args.teacher
    if (teacher is not None and not args.resume and teacher not in registry.list_models() and "://" not in teacher
            and ("/" in teacher or Path(teacher).suffix) and not Path(teacher).is_file()):
        raise ValueError(f"--teacher {teacher}: no such file (a teacher is a registered model name or a weights file).")


def run(args) -> int:
    from training.loop import TrainingDiverged, train  # lazily: the loop imports tensorflow_datasets

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
              weight_decay=args.weight_decay, schedule=args.schedule, centre_loss_epochs=args.centre_loss_epochs,
              kernel_loss_weight=args.kernel_loss_weight, theta_init=args.theta_init,
              adversarial_weight=args.adversarial_weight, export=not args.no_export,
              verbose=0 if args.quiet else 1 if sys.stdout.isatty() else 2)  # a log file: a line per epoch
    except TrainingDiverged as err:
        print(f"zoo train: {err}", file=sys.stderr)
        return DIVERGED
    return 0

"""The training loop every recipe runs (``zoo train``, :func:`train`).

Data from the data layer, the model built in the strategy's scope, the recipe's wrapper
(teacher, custom ``train_step``), optimizer, loss and callbacks; with an output directory
also per-epoch checkpoints and resume, logs (TensorBoard, CSV/JSON history, PNG curves)
and, at the end, the artifacts of :mod:`training.artifacts`:

    <output>/
      checkpoints/epoch-NNNN/     the last finished epoch (tf.train.Checkpoint + state.json)
      tensorboard/                epoch scalars
      history.csv, history.json   one row per finished epoch, continued across resumes
      curves.png                  loss, train/test accuracy, learning rate
      MODEL-DATASET.h5            training weights: zoo.load(MODEL, weights=<this path>)
      MODEL-DATASET.tflite        the LCE flatbuffer of zoo.to_inference(model)
      manifest_entry.json         the entry to add to pretrained/manifest.json
      report.json                 settings, measurements, parity, the command
      worker-N/                   multi-worker runs: what the other workers must write
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import tempfile
import time
from pathlib import Path

import zoo  # noqa: I001  (first: selects Keras 2)
import numpy as np
import tf_keras as keras
from zoo import registry
from zoo._env import root_logging_untouched_by
from zoo.data import dataset_info
from zoo.export import quiet_logger
from zoo.files import atomic_write
from training import artifacts, checkpoint, logs
from training.distribute import barrier, distribute_by_data, make_strategy, worker_index
from training.recipes import Recipe, recipe_for
from training.settings import SETTINGS, recipe_overrides
from training.teacher import frozen, pretrained_tag, teacher_and_weights, teacher_name

EVAL_BATCH_SIZE = 256
REPORT = "report.json"
MANIFEST_ENTRY = "manifest_entry.json"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run stopped."""


class OnStudent(keras.callbacks.Callback):
    """Runs a scheme callback (written against the zoo's functional model, e.g. RBNN's
    rotation update) on the student when ``fit`` drives a recipe's wrapper."""

    def __init__(self, callback: keras.callbacks.Callback, student: keras.Model):
        super().__init__()
        self.callback = callback
        self.student = student

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(self.student)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def _implements_train_batch_hooks(self):
        return self.callback._implements_train_batch_hooks()

    def _implements_test_batch_hooks(self):
        return self.callback._implements_test_batch_hooks()

    def _implements_predict_batch_hooks(self):
        return self.callback._implements_predict_batch_hooks()


for _hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
              "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end"):
    setattr(OnStudent, _hook, lambda self, *args, _hook=_hook, **kwargs: getattr(self.callback, _hook)(*args, **kwargs))


@root_logging_untouched_by  # TF's checkpoint writer logs through absl, which would configure root logging
def train(model_name: str, dataset: str, *, epochs: int | None = None, batch_size: int | None = None,
          method: str | None = None, recipe: Recipe | None = None, data_dir=None, output=None, resume: bool = False,
          strategy: str = "default", teacher: str | None = None, train_images: int | None = None,
          test_images: int | None = None, val_images: int | None = None, seed: int | None = None,
          optimizer: str | None = None, learning_rate: float | None = None, weight_decay: float | None = None,
          schedule: str | None = None, centre_loss_epochs: int | None = None,
          kernel_loss_weight: float | None = None, theta_init: str | None = None,
          adversarial_weight: float | None = None, export: bool = True,
          builder_kwargs: dict | None = None, verbose: int = 1):
    """Trains ``model_name`` on ``dataset`` with its method's recipe; returns (model, report).

    Args:
      epochs, batch_size: default the recipe's paper settings (schedules scale to ``epochs``).
      method: train with another method's recipe (same-budget comparisons).
      recipe: a :class:`Recipe` instance instead (then ``epochs``, ``batch_size`` are its own).
      output: the run directory; without it nothing is written (no checkpoints, no
        artifacts). ``resume`` continues the run checkpointed there at its next epoch.
      strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (cluster from ``$TF_CONFIG``).
      teacher: a registry name or weights path, for recipes that distil from a teacher.
      train_images, test_images: use only the first N images of the train / test split.
      val_images: hold out the last N training images: ``val_*`` in the history is
        measured on them (choose schedules there), ``test_*`` on the test split. Without
        it ``val_*`` is the test split.
      optimizer, learning_rate, weight_decay, schedule: override the recipe's (``"sgd"`` or
        ``"adam"``; the decay is PyTorch-style, coupled; ``"cosine"`` or a recipe's own, e.g.
        CBCN's ``"step"``).
      centre_loss_epochs: CBCN's recipe: the epochs of the centre-loss fine-tune at the end.
      kernel_loss_weight: BONN's recipe: λ, the weight of the Bayesian kernel loss (default:
        the layers' own, the book's 1e-4).
      theta_init: RBNN's recipe: θ's start, ``"half_pi"`` (the paper's, the default) or
        ``"uniform"`` (U(0, π/2), a deviation for short budgets).
      adversarial_weight: RBCN's recipe: the weight of the adversarial term (default 1, the
        spec's; 0 leaves it out, an ablation).
      seed: data order, augmentation and initialisation (default 0).
      export: with ``output``, write the weights file, manifest entry and .tflite at the end.
      builder_kwargs: architecture keywords (e.g. ``width_multiplier``) for runs without
        ``output`` (same-budget comparisons): a run's artifacts do not record them.
      verbose: Keras' progress output (0 silent, 1 progress bar, 2 one line per epoch).

    Raises:
      ValueError (unknown model or dataset), :class:`checkpoint.ResumeError` (a checkpoint
      of another run), ``zoo.data.DatasetNotFoundError`` (data not prepared: says how),
      :class:`TrainingDiverged` (NaN loss; the last good checkpoint is kept).
    """
    distribution = make_strategy(strategy)  # first: multi-worker collectives are configured at start-up
    info = dataset_info(dataset)
    spec = registry.get_model_spec(model_name)
    requested = {"model": model_name, "dataset": info["name"], "method": method, "epochs": epochs,
                 "batch_size": batch_size, "train_images": train_images, "teacher": teacher, "seed": seed,
                 "val_images": val_images, "optimizer": optimizer, "learning_rate": learning_rate,
                 "weight_decay": weight_decay, "schedule": schedule, "centre_loss_epochs": centre_loss_epochs,
                 "kernel_loss_weight": kernel_loss_weight, "theta_init": theta_init,
                 "adversarial_weight": adversarial_weight}
    checkpoint.check_settings(requested)  # the Python API refuses what the CLI refuses (epochs=0, ...)
    out = Path(output) if output is not None else None
    if builder_kwargs and out is not None:
        raise ValueError("builder_kwargs are for runs without an output directory: the run's checkpoints, "
                         "manifest entry and command would not record them.")
    latest = _resume_point(out, resume)
    state = checkpoint.read_state(latest) if latest is not None else None
    if state is not None:
        settings = checkpoint.check_resumable(state["run"], requested, latest)
    else:
        settings = {**requested, "method": method or spec.scheme.name, "seed": seed or 0}
    if recipe is None:
        recipe = recipe_for(model_name, settings["epochs"], settings["batch_size"], method=settings["method"],
                            **recipe_overrides(settings))
    settings.update(epochs=recipe.epochs, batch_size=recipe.batch_size)
    index = worker_index(distribution)
    say = print if verbose and index == 0 else (lambda *_: None)
    if resume:
        say(f"Resuming {out} after epoch {state['epochs_done']} of {recipe.epochs}." if state else
            f"No checkpoint in {out} yet: starting at epoch 1.")

    train_split, val_split = _train_val_splits(info, settings.get("val_images"))
    train_data = zoo.load_dataset(info["name"], train_split, batch_size=recipe.batch_size,
                                  take=settings["train_images"], data_dir=data_dir, seed=settings["seed"])
    test_data = zoo.load_dataset(info["name"], info["eval_split"], batch_size=EVAL_BATCH_SIZE, take=test_images,
                                 data_dir=data_dir)
    val_data = test_data if val_split is None else zoo.load_dataset(
        info["name"], val_split, batch_size=EVAL_BATCH_SIZE, training=False, data_dir=data_dir)
    input_shape = info["image_shape"] if None not in info["image_shape"] else None
    keras.utils.set_random_seed(settings["seed"])
    with distribution.scope():
        model = zoo.load(model_name, weights=None, input_shape=input_shape, classes=info["num_classes"],
                         **(builder_kwargs or {}))
        teacher_model = _teacher(recipe, settings, data_dir, input_shape, info["num_classes"], state is not None,
                                 verbose)
        trainable = recipe.wrap(model, teacher_model)
        recipe.compile(trainable)
    if state is not None:
        checkpoint.restore_checkpoint(trainable, latest)
    history = list(state["history"]) if state else []

    callbacks = _callbacks_on(recipe.callbacks(model_name), trainable, model, model_name, recipe.epochs)
    if val_split is not None:
        callbacks.append(TestAccuracy(model, test_data))
    stop = checkpoint.StopOnNaN()
    callbacks.append(stop)
    saver = None
    if out is not None:
        if index == 0:
            logs.write_history(out, history)
            callbacks.append(logs.tensorboard(out))
        commit = (lambda rows: logs.write_history(out, rows)) if index == 0 else None
        saver = checkpoint.EpochCheckpoint(_worker_dir(out, index) / checkpoint.CHECKPOINTS, settings, history, stop,
                                           commit)
        callbacks.append(saver)  # last: the epoch's logs are complete by then

    start = time.perf_counter()
    fitted = trainable.fit(distribute_by_data(train_data, distribution), epochs=recipe.epochs,
                           initial_epoch=state["epochs_done"] if state else 0,
                           validation_data=distribute_by_data(val_data, distribution),
                           callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    if out is None:
        history = [{"epoch": epoch + 1, **{key: float(values[i]) for key, values in fitted.history.items()}}
                   for i, epoch in enumerate(fitted.epoch)]
    if out is not None and index == 0 and history:
        logs.plot_curves(history, out / logs.CURVES_PNG, f"{model_name} on {info['name']} ({type(recipe).__name__})")
    if stop.where is not None:
        raise TrainingDiverged(_diverged_message(stop.where, recipe, saver))

    accuracies = [row["val_accuracy"] for row in history if "val_accuracy" in row]
    recalibration = _recalibrate(model, info, train_split, settings, data_dir, val_data)
    report = {
        "model": model_name,
        "dataset": info["name"],
        "recipe": {"name": type(recipe).__name__, **dataclasses.asdict(recipe)},
        "strategy": strategy,
        "replicas": distribution.num_replicas_in_sync,
        "train_images_per_epoch": settings["train_images"] or info["splits"]["train"] - (settings.get("val_images") or 0),
        "test_images": test_images or info["splits"][info["eval_split"]],
        "epochs_done": history[-1]["epoch"] if history else 0,
        "train_seconds": round(seconds, 1),
        **({"builder_kwargs": builder_kwargs} if builder_kwargs else {}),
        "validation": "held-out training images" if val_split is not None else "test split",
        "best_val_accuracy": max(accuracies, default=None),  # the reference protocol (docs/methods/conventions.md#batchnorm-initialisers-and-weight-decay)
        "final_val_accuracy": accuracies[-1] if accuracies else None,
        "bn_recalibration": recalibration,
        "history": history,
        **recipe.report(history),
        "command": command_line(settings, spec.scheme.name, test_images),
    }
    report["budget"] = {
        "epochs": report["epochs_done"], "train_images_per_epoch": report["train_images_per_epoch"],
        "held_out_images": settings.get("val_images") or 0, "batch_size": recipe.batch_size, "seed": settings["seed"],
        "recipe": type(recipe).__name__, "optimizer": recipe.optimizer_name, "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay, "schedule": recipe.schedule, "teacher": settings["teacher"],
        "bn_recalibration_images": recalibration["batches"] * recalibration["batch_size"],
    }
    if out is not None and export:
        report.update(_export(model, report, out, index, input_shape or model.input_shape[1:], info, test_data))
        if index == 0:
            say(summary(report, out))
    if out is not None and index == 0:
        atomic_write(out / REPORT, json.dumps(report, indent=1, default=_json_default))
    barrier(distribution)  # workers leave together: one leaving early fails the others' collectives
    return model, report


#: batches of un-augmented training images the BatchNorm statistics are re-estimated on
RECALIBRATION_BATCHES = 50


class TestAccuracy(keras.callbacks.Callback):
    """Adds the student's ``test_accuracy`` on the test split to each epoch's logs (runs
    validated on held-out training images still show what the test split measures)."""

    def __init__(self, student: keras.Model, test_data):
        super().__init__()
        self.student = student
        self.test_data = test_data

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["test_accuracy"] = accuracy(self.student, self.test_data)


def accuracy(model: keras.Model, data) -> float:
    """Top-1 accuracy of ``model`` (inference mode) on ``(images, labels)`` batches, read in
    one pass: each prediction meets its own labels even when ``data`` shuffles or augments."""
    correct = total = 0
    for images, labels in data:
        predicted = np.argmax(model.predict_on_batch(images), axis=-1)
        correct += int(np.sum(predicted == np.asarray(labels)))
        total += len(predicted)
    if not total:
        raise ValueError("accuracy: the data gave no batch.")
    return correct / total


def _train_val_splits(info: dict, val_images: int | None) -> tuple[str, str | None]:
    """The training split, and the held-out split (the last ``val_images`` training images)."""
    if val_images is None:
        return "train", None
    size = info["splits"]["train"]
    if not 0 < val_images < size:
        raise ValueError(f"val_images must be between 1 and {size - 1} (the training split has {size} images), "
                         f"got {val_images}.")
    return f"train[:{size - val_images}]", f"train[{size - val_images}:]"


def _recalibrate(model, info: dict, train_split: str, settings: dict, data_dir, val_data) -> dict:
    """Re-estimates the BN statistics on un-augmented training images (the moving averages
    lag a binary network's last weight changes); measures the validation accuracy around it."""
    images = zoo.load_dataset(info["name"], train_split, batch_size=EVAL_BATCH_SIZE, training=False,
                              take=settings["train_images"], data_dir=data_dir)
    before = accuracy(model, val_data)
    batches = zoo.recalibrate_bn(model, images, RECALIBRATION_BATCHES)
    return {"batches": batches, "batch_size": EVAL_BATCH_SIZE, "val_accuracy_before": before,
            "val_accuracy_after": accuracy(model, val_data)}


def _resume_point(out: Path | None, resume: bool) -> Path | None:
    """The checkpoint to resume from; a new run refuses a directory holding one."""
    if out is None:
        if resume:
            raise ValueError("resume=True needs the output directory of the run to resume.")
        return None
    latest = checkpoint.latest_checkpoint(out)
    if latest is not None and not resume:
        raise checkpoint.ResumeError(
            f"{out} already holds a checkpoint of a run ({latest.name}); pass --resume to continue it, "
            "or another --output for a new run."
        )
    return latest


def _teacher(recipe: Recipe, settings: dict, data_dir, input_shape, classes: int, resuming: bool, verbose: int):
    """The frozen teacher for the recipe's wrapper (``--teacher``, or the ``fp_`` twin when
    the recipe needs one). A teacher trained on the fly gets the student's budget. When
    resuming, the checkpoint holds the teacher's weights: it is only built."""
    if settings["teacher"] is None and not recipe.NEEDS_TEACHER:
        return None
    teacher = settings["teacher"]
    if resuming:
        name = teacher if teacher in registry.list_models() else teacher_name(settings["model"])
        teacher = zoo.load(name, weights=None, input_shape=input_shape, classes=classes)
    return prepare_teacher(settings["model"], settings["dataset"], teacher=teacher, data_dir=data_dir,
                           epochs=recipe.epochs, batch_size=recipe.batch_size, train_images=settings["train_images"],
                           seed=settings["seed"], verbose=verbose)


def prepare_teacher(student_name: str, dataset: str, teacher=None, *, weights: str | os.PathLike | None = "default",
                    **train_kwargs) -> keras.Model:
    """A frozen full-precision teacher for ``student_name`` on ``dataset``.

    Args:
      student_name: the registered student (its ``fp_`` twin is the default teacher).
      dataset: the dataset the student trains on (input shape, classes, pretrained tag).
      teacher: None (the ``fp_`` twin), a registered full-precision model name, a path or
        URL of a weights file of the ``fp_`` twin, or a ``keras.Model`` (used as it is).
      weights: for a named teacher: ``"default"`` (the pretrained entry trained on the
        dataset if the manifest has one, else train first), a tag or weights path/URL, or
        None (always train first).
      **train_kwargs: for training the teacher first, :func:`train`'s
        keywords (``epochs``, ``batch_size``, ``train_images``, ``test_images``,
        ``data_dir``, ``output``, ``seed``, ``verbose`` (default 0)); epochs and batch
        size default to the teacher's own recipe, ``output`` keeps that run's artifacts
        (its weights file included).

    Raises:
      ValueError: a binary teacher, an unknown model name or pretrained tag.
    """
    if isinstance(teacher, keras.Model):
        return frozen(teacher)
    name, weights = teacher_and_weights(student_name, teacher, weights)
    info = dataset_info(dataset)
    if weights == "default":
        weights = pretrained_tag(name, info["name"])
    if weights is not None:
        shape = info["image_shape"] if None not in info["image_shape"] else None
        return frozen(zoo.load(name, weights=weights, input_shape=shape, classes=info["num_classes"]))

    train_kwargs.setdefault("verbose", 0)
    if train_kwargs["verbose"]:
        print(f"Training the teacher {name} on {info['name']} first (no pretrained weights given or listed).")
    model, report = train(name, info["name"], **train_kwargs)
    if train_kwargs["verbose"]:
        print(f"Teacher {name}: best test accuracy {report['best_val_accuracy']:.4f}.")
    return frozen(model)


def _callbacks_on(callbacks, trainable, model, model_name, epochs) -> list:
    """The recipe's callbacks, the scheme's own (``zoo.callbacks``) bound to the student."""
    if trainable is model:
        return list(callbacks)
    scheme_types = {type(c) for c in zoo.callbacks(model_name, epochs)}
    return [OnStudent(c, model) if type(c) in scheme_types else c for c in callbacks]


def _worker_dir(out: Path, index: int) -> Path:
    return out if index == 0 else out / f"worker-{index}"


def _diverged_message(where, recipe: Recipe, saver) -> str:
    epoch, batch = where
    message = (f"Training stopped: the loss became NaN or infinite at epoch {epoch}, batch {batch}." if batch else
               f"Training stopped: the validation loss or the weights were NaN or infinite after epoch {epoch}.")
    if saver is None:
        return message + " Nothing was saved (no output directory)."
    if saver.last_good is None:
        return message + " No checkpoint is kept: the first epoch did not finish with finite weights."
    return (message + f" The last good checkpoint (epoch {int(saver.last_good.name.split('-')[1])} of "
            f"{recipe.epochs}) is kept in {saver.last_good}; --resume continues from it.")


def command_line(settings: dict, scheme: str, test_images: int | None) -> str:
    """The ``zoo train`` command that reproduces a run."""
    parts = ["zoo", "train", settings["model"], "--dataset", settings["dataset"]]
    shown = {**settings, "test_images": test_images, "seed": settings["seed"] or None,
             "method": None if settings["method"] == scheme else settings["method"]}
    for setting in SETTINGS:
        if shown.get(setting.key) is not None:
            parts += [setting.flag, str(shown[setting.key])]
    return shlex.join(parts)


def _export(model, report, out: Path, index: int, input_shape, info, test_data) -> dict:
    """Every worker saves the final weights (reading BN statistics is collective); the
    chief turns them into the artifacts."""
    model_name, dataset = report["model"], report["dataset"]
    name = registry.get_model_spec(model_name).name  # a searched architecture's name, not its file's path
    _worker_dir(out, index).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_worker_dir(out, index)) as scratch:
        float32_file = Path(scratch) / f"{name}-{dataset}.h5"
        model.save_weights(str(float32_file))
        if index != 0:
            return {}

        def load(path):
            with quiet_logger("zoo"):  # the run's own files, not news to its user
                return zoo.load(model_name, weights=path, input_shape=tuple(input_shape), classes=info["num_classes"])

        exported = artifacts.export_run(name, dataset, out, float32_file, load, test_data, input_shape=input_shape,
                                        classes=info["num_classes"], command=report["command"],
                                        training=report["budget"])
    atomic_write(out / MANIFEST_ENTRY, json.dumps(exported["manifest_entry"], indent=2) + "\n")
    return exported


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary(report: dict, out: Path) -> str:
    weights, tflite = report["weights"], report["tflite"]
    return "\n".join([
        f"{report['model']} on {report['dataset']}: {report['epochs_done']} epochs, "
        f"test top-1 {100 * report['test_top1']:.2f} % on {report['test_images']} images",
        f"  weights   {out / weights['file']} ({weights['bytes']:,} bytes, {weights['storage']}, sha256 "
        f"{weights['sha256'][:16]}…)",
        f"  tflite    {out / tflite['file']} ({tflite['file_bytes']:,} bytes); LCE vs Keras top-1 agreement "
        f"{tflite['parity']['top1_agreement']:.2%} on {tflite['parity']['samples']} images",
        f"  manifest  {out / MANIFEST_ENTRY}",
        f"  logs      {out / logs.HISTORY_CSV}, {out / logs.CURVES_PNG}, {out / logs.TENSORBOARD}",
        f"  command   {report['command']}",
    ])

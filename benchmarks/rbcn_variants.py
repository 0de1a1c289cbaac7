"""RBCN's two rectifier variants on real Fashion-MNIST: the deployable one (one scale per
output channel, exported exactly) and the paper's faithful one (a filter-shaped C shared
by the layer), trained with the same recipe, teacher and budget; for the faithful one also
the accuracy after the export approximation (C -> mean C) with and without BN
recalibration, and the exported model's.

    python benchmarks/rbcn_variants.py --epochs 2 --train-images 15000
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
import tf_keras as keras  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from training.loop import prepare_teacher  # noqa: E402
from training.recipes.rbcn import RBCNRecipe  # noqa: E402
from zoo import registry  # noqa: E402
from zoo.schemes import rbcn  # noqa: E402

MODEL = "rbcn_resnet20"
SHAPE = (28, 28, 1)


def accuracy(model, test_data, labels) -> float:
    return float(np.mean(model.predict(test_data, verbose=0).argmax(1) == labels))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--recalibration-steps", type=int, default=50)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default="rbcn_variants")
    args = parse_arguments(parser, argv)

    train_data = zoo.load_dataset("fashion_mnist", "train", batch_size=args.batch_size, take=args.train_images,
                                  data_dir=args.data_dir, seed=0)
    test_data = zoo.load_dataset("fashion_mnist", "test", batch_size=256, data_dir=args.data_dir)
    labels = np.concatenate([y.numpy() for _, y in test_data])
    keras.utils.set_random_seed(0)
    teacher = prepare_teacher(MODEL, "fashion_mnist", weights=None, epochs=args.epochs, batch_size=args.batch_size,
                              train_images=args.train_images, data_dir=args.data_dir, verbose=2)
    results = {"fp_resnet20 (teacher)": {"final test accuracy": accuracy(teacher, test_data, labels)}}

    recipe = RBCNRecipe.for_model(MODEL, args.epochs, args.batch_size)
    for variant in rbcn.VARIANTS:
        keras.utils.set_random_seed(0)
        student = registry.get_model_spec(MODEL).architecture.builder(rbcn.RBCN(variant), input_shape=SHAPE,
                                                                      classes=10)
        trainer = recipe.wrap(student, teacher)
        recipe.compile(trainer)
        start = time.perf_counter()
        history = trainer.fit(train_data, epochs=recipe.epochs, validation_data=test_data,
                              callbacks=recipe.callbacks(MODEL), verbose=2).history
        row = {"train seconds": round(time.perf_counter() - start, 1),
               "best test accuracy": max(history["val_accuracy"]),
               "final test accuracy": accuracy(student, test_data, labels)}
        if variant == "faithful":
            rectifiers = [layer.rectifier.numpy().ravel() for layer in rbcn.rectified_layers(student)]
            row["rectifiers"] = {"negative share": float(np.mean(np.concatenate(rectifiers) < 0)),
                                 "per layer std / |mean|": [float(c.std() / abs(c.mean())) for c in rectifiers]}
            rbcn.approximate_rectifiers(student)
            row["C -> mean C"] = accuracy(student, test_data, labels)
            rbcn.recalibrate_batch_norm(student, train_data, args.recalibration_steps)
            row["+ BN recalibration"] = accuracy(student, test_data, labels)
        row["exported (zoo.to_inference)"] = accuracy(zoo.to_inference(student), test_data, labels)
        results[f"{MODEL} ({variant})"] = row

    columns = ["best test accuracy", "final test accuracy", "C -> mean C", "+ BN recalibration",
               "exported (zoo.to_inference)"]
    rows = [[name, *[f"{row[c]:.2%}" if c in row else "" for c in columns], row.get("train seconds", "")]
            for name, row in results.items()]
    command = command_line(__file__, argv)
    faithful = results[f"{MODEL} (faithful)"]["rectifiers"]
    spread = faithful["per layer std / |mean|"]
    table = markdown_table(rows, ["model", *columns, "train seconds"])
    table += (f"\n\nReal Fashion-MNIST (10 000 test images), {args.epochs} epochs x {args.train_images} training "
              f"images, batch {args.batch_size}, the RBCN recipe and the same fp_resnet20 teacher (trained first "
              f"with the same budget) for both variants; BN recalibration: {args.recalibration_steps} training "
              f"batches. The faithful rectifiers before the approximation: {faithful['negative share']:.0%} "
              f"of their entries negative, std / |mean| per layer {min(spread):.1f}-{max(spread):.1f}."
              f"\n\n`{command}`")
    write_results(args.name, {"command": command, "results": results}, table)


if __name__ == "__main__":
    main()

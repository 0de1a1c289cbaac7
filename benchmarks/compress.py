"""Compression on real Fashion-MNIST: HRank channel pruning and QAT of the float parts.

    python benchmarks/compress.py rbnn_resnet20 fp_resnet20 --epochs 4 --train-images 15000 --seeds 2

For each model: its pretrained ``fashion_mnist`` weights when the manifest has them, else
the model trained here with its own recipe (``--base-epochs`` x ``--base-images``; the
weights are cached in ``--cache`` and reused). From those weights, two runs of the
``zoo compress`` pipeline (:func:`zoo.compress.run_pipeline`), each measured on the 10 000
test images: ``prune`` (channel pruning ``--ratio`` + ``--epochs`` of fine-tuning) and
``qat`` (quantization-aware training of the float parts + ``--epochs`` of fine-tuning).
The pruned filters fade out over the first ``--fade`` of the fine-tune (0: removed at once).

Each run has a *control*: the uncompressed model after the same fine-tune (a briefly
trained base gains from any fine-tune; the control separates that from what compression
costs). A short fine-tune of a binary network ends a point or two apart from one data
order to the next, so both are repeated for ``--seeds`` data orders and the goal is
judged on the mean difference to the control.
Goals (issue 8): pruning cuts binary MACs >= 40 % with <= 1.5 points of accuracy lost;
QAT makes the float parts' weights in the .tflite >= 2x smaller with <= 0.5 points lost.
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
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from zoo import compress  # noqa: E402
from training.loop import accuracy  # noqa: E402
from zoo.compress import PRUNE_LEARNING_RATE, QAT_LEARNING_RATE, fine_tune, run_pipeline  # noqa: E402

DATASET = "fashion_mnist"
STEPS = ("prune", "qat")


def base_weights(name: str, args) -> tuple[str, str]:
    """(weights for zoo.load, how they were obtained): pretrained, cached, or trained now."""
    if any(entry.tag == DATASET for entry in zoo.pretrained_entries(name)):
        return DATASET, f"pretrained ({DATASET} entry of the manifest)"
    path = Path(args.cache) / f"{name}-{args.base_epochs}x{args.base_images}.h5"
    how = f"trained here: {name}'s recipe, {args.base_epochs} epochs x {args.base_images} images, batch 64"
    if path.exists():
        return str(path), how + " (cached)"
    from training.loop import train

    print(f"{name}: no pretrained {DATASET} weights; training {args.base_epochs} epochs", flush=True)
    model, report = train(name, DATASET, epochs=args.base_epochs, batch_size=64, train_images=args.base_images,
                          data_dir=args.data_dir, verbose=0 if args.quiet else 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(path))
    return str(path), how + f" ({report['train_seconds']} s, best test accuracy {report['best_val_accuracy']:.2%})"


def control_accuracy(name: str, weights: str, step: str, seed: int, args) -> float:
    """Test accuracy of the uncompressed model after the same fine-tune as ``step``'s
    (same data order: ``seed``).

    Fine-tuning alone moves a briefly trained model; this separates that from what the
    compression costs. ``prune``: channel pruning with ratio 0 (the same inference form,
    BN treatment and latent weights, nothing removed), Adam ``--learning-rate``;
    ``qat``: the float inference form, Adam ``--qat-learning-rate``.
    """
    model = zoo.load(name, weights=weights, input_shape=(28, 28, 1), classes=10)
    ranked = zoo.load_dataset(DATASET, "train", batch_size=64, training=False, take=args.train_images,
                              data_dir=args.data_dir)
    train = zoo.load_dataset(DATASET, "train", batch_size=64, take=args.train_images, data_dir=args.data_dir,
                             seed=seed)
    if step == "prune":
        tuned, learning_rate = compress.channel_prune(model, 0.0, ranked).model, args.learning_rate
    else:
        tuned, learning_rate = compress.fine_tunable_inference(model, ranked), args.qat_learning_rate
    fine_tune(tuned, train, args.epochs, learning_rate, int(train.cardinality()), verbose=0)
    return accuracy(tuned, zoo.load_dataset(DATASET, "test", batch_size=256, take=args.test_images,
                                            data_dir=args.data_dir))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="default: both")
    parser.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio")
    parser.add_argument("--fade", type=float, default=0.25,
                        help="fraction of the fine-tune the pruned filters fade out over (0: removed at once)")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs after each step")
    parser.add_argument("--train-images", type=int, default=15_000, help="fine-tuning images per epoch")
    parser.add_argument("--test-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--seeds", type=int, default=2, help="data orders of the fine-tunes (runs and controls)")
    parser.add_argument("--learning-rate", type=float, default=PRUNE_LEARNING_RATE)
    parser.add_argument("--qat-learning-rate", type=float, default=QAT_LEARNING_RATE)
    parser.add_argument("--base-epochs", type=int, default=3, help="training of models without pretrained weights")
    parser.add_argument("--base-images", type=int, default=30_000)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "zoo" / "benchmark_compress"))
    parser.add_argument("--latency-repeats", type=int, default=100)
    parser.add_argument("--output", default="/tmp/zoo_benchmark_compress", help="pipeline outputs (tflite files)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default="compress")
    parser.add_argument("--quiet", action="store_true")
    args = parse_arguments(parser, argv)

    runs = {}
    options = {"prune": dict(prune_ratio=args.ratio, structure="channel", fade=args.fade),
               "qat": dict(prune_ratio=0.0, qat=True)}
    for name in args.models:
        weights, how = base_weights(name, args)
        for step in args.steps:
            for seed in range(args.seeds):
                label = f"{name} {step} seed {seed}"
                start = time.perf_counter()
                report = run_pipeline(
                    name, dataset=DATASET, output_dir=Path(args.output) / f"{name}-{step}-{seed}", epochs=args.epochs,
                    weights=weights, learning_rate=args.learning_rate, qat_learning_rate=args.qat_learning_rate,
                    train_images=args.train_images, test_images=args.test_images,
                    latency_repeats=args.latency_repeats, data_dir=args.data_dir, seed=seed,
                    verbose=0 if args.quiet else 2,
                    progress=lambda line, label=label: print(f"{label}: {line}", flush=True), **options[step],
                )
                report["base_weights"] = how
                report["seconds"] = round(time.perf_counter() - start, 1)
                report["control_accuracy"] = control_accuracy(name, weights, step, seed, args)
                print(f"{label}: control (uncompressed, same fine-tune) test accuracy "
                      f"{report['control_accuracy']:.2%}", flush=True)
                runs[f"{name}/{step}/{seed}"] = report

    rows, summary = [], {}
    for name in args.models:
        for step in args.steps:
            seeds = [runs[f"{name}/{step}/{seed}"] for seed in range(args.seeds)]
            row, summary[f"{name}/{step}"] = summarized(seeds)
            rows.append(row)
    command = command_line(__file__, argv)
    table = markdown_table(rows, [
        "model", "step", "base", "after", "control", "vs control (per seed)", "vs base", "binary MACs cut",
        "float MACs cut", ".tflite bytes", "float-part weight bytes", "LCE ms (1 thread)", "goal",
    ])
    bases = "; ".join(f"`{name}`: {runs[f'{name}/{args.steps[0]}/0']['base_weights']}" for name in args.models)
    table += (f"\n\nReal Fashion-MNIST; accuracy of the .tflite files in LCE's interpreter on "
              f"{runs[next(iter(runs))]['test_images']} test images, mean ± sd over {args.seeds} data orders of the "
              f"fine-tune; control: the uncompressed model (Keras) after the same fine-tune with the same data order, "
              f"which alone moves a briefly trained model; the goal is judged on the mean difference to it. "
              f"Fine-tuning: {args.epochs} epochs x {args.train_images} images, Adam from {args.learning_rate} "
              f"after pruning (the pruned filters fading out over the first {args.fade:g} of it), "
              f"{args.qat_learning_rate} for QAT, cosine decay. Goals: pruning cuts binary MACs "
              f">= 40 % (float MACs for a float model) losing <= 1.5 points; QAT makes the float parts' weights "
              f"in the .tflite >= 2x smaller losing <= 0.5 points (float "
              f"parts: every constant tensor but those of the binary convs, whose packed kernels and fused BN LCE "
              f"keeps as they are). Base weights: {bases}."
              f"\n\n`{command}`")
    write_results(args.name, {"command": command, "seeds": args.seeds, "summary": summary, "runs": runs}, table)


def summarized(seeds: list[dict]) -> tuple[list[str], dict]:
    """A table row and a summary of one model and step over its seeds (costs from seed 0's
    files, which every seed shares; latency from the median seed)."""
    first = seeds[0]
    original, gains = first["original"], first["gains"]
    pruned = "pruning" in first
    after = np.array([100 * report["compressed"]["tflite_accuracy"] for report in seeds])
    control = np.array([100 * report["control_accuracy"] for report in seeds])
    base = 100 * original["tflite_accuracy"]
    versus_control = after - control
    loss = -float(np.mean(versus_control))
    macs = "binary_macs" if original["binary_macs"] else "float_macs"
    goal = ((gains[f"{macs}_cut"] >= 0.4 and loss <= 1.5) if pruned
            else (gains["float_parts_bytes_ratio"] >= 2 and loss <= 0.5))
    latency = sorted(seeds, key=lambda report: report["compressed"]["latency_ms"])[len(seeds) // 2]

    def spread(values):
        return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}%" if len(values) > 1 else f"{values[0]:.2f}%"

    row = [
        f"`{first['model']}`", "channel pruning" if pruned else "QAT (int8 float parts)",
        f"{base:.2f}%", spread(after), spread(control),
        f"**{-loss:+.2f}** ({', '.join(f'{value:+.2f}' for value in versus_control)})",
        f"{np.mean(after) - base:+.2f}",
        f"{gains['binary_macs_cut']:.1%}" if original["binary_macs"] else "-", f"{gains['float_macs_cut']:.1%}",
        f"{original['tflite_bytes']:,} → {first['compressed']['tflite_bytes']:,} ({gains['tflite_size_ratio']:.2f}x)",
        f"{original['weight_bytes']['float_parts']:,} → {first['compressed']['weight_bytes']['float_parts']:,} "
        f"({gains['float_parts_bytes_ratio']:.2f}x)",
        f"{latency['original']['latency_ms']:.2f} → {latency['compressed']['latency_ms']:.2f}",
        "met" if goal else "**not met**",
    ]
    return row, {"base": base, "after": after.tolist(), "control": control.tolist(),
                 "mean_change_vs_control": -loss, "goal_met": bool(goal)}


if __name__ == "__main__":
    main()

"""Adds finished ``zoo train`` runs to the pretrained registry (``pretrained/``).

For each run directory: copies its weights file next to the manifest (atomically), checks
the copy's sha256 against the run's manifest entry, rebuilds the model from the copy the
way users do (``zoo.load(name, weights=path)``), measures its top-1 on the first
``--check-images`` test images and records that figure in the entry (``top1_first_N``):
the test suite reloads every shipped file and must reproduce it. The entry then replaces
any entry of the same name and tag in the manifest, which is rewritten atomically.

    python -m training.publish runs/fp_resnet20 runs/rbnn_resnet18 [--manifest pretrained/manifest.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import zoo  # noqa: I001  (first: selects Keras 2)
import numpy as np
from zoo import registry
from zoo.weights import sha256_file

from training.artifacts import first_examples
from training.checkpoint import atomic_write
from training.loop import MANIFEST_ENTRY

CHECK_IMAGES = 1000


def check_metric(images: int) -> str:
    """The manifest metric a shipped file must reproduce on the first ``images`` test images."""
    return f"top1_first_{images}"


def top1_on_first(model, dataset: str, images: int, data_dir=None) -> float:
    """Top-1 (in %, 2 decimals) of ``model`` on the first ``images`` of ``dataset``'s evaluation split."""
    info = zoo.data.dataset_info(dataset)
    data = zoo.load_dataset(info["name"], info["eval_split"], batch_size=250, take=images, data_dir=data_dir)
    x, y = first_examples(data, images)
    predicted = model.predict(x, batch_size=250, verbose=0).argmax(1)
    return round(100 * float(np.mean(predicted == y)), 2)


def publish(run_dir: str | Path, manifest: str | Path = registry.DEFAULT_MANIFEST, *,
            check_images: int = CHECK_IMAGES, data_dir=None) -> dict:
    """Copies ``run_dir``'s weights next to ``manifest`` and adds its entry; returns the entry."""
    run_dir, manifest = Path(run_dir), Path(manifest)
    entry_file = run_dir / MANIFEST_ENTRY
    if not entry_file.exists():
        raise FileNotFoundError(f"{run_dir} has no {MANIFEST_ENTRY}: not a finished `zoo train` run.")
    entry = json.loads(entry_file.read_text())
    source, target = run_dir / entry["file"], manifest.parent / entry["file"]
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, partial)
        if sha256_file(partial) != entry["sha256"]:
            raise ValueError(f"{source}: sha256 differs from its manifest entry; the run's weights file changed.")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)

    model = zoo.load(entry["name"], weights=str(target), input_shape=tuple(entry["input_shape"]),
                     classes=entry["classes"], **entry.get("builder_kwargs", {}))
    entry["metrics"][check_metric(check_images)] = top1_on_first(model, entry["dataset"], check_images, data_dir)

    rows = json.loads(manifest.read_text())["entries"] if manifest.exists() else []
    rows = [row for row in rows if (row["name"], row["tag"]) != (entry["name"], entry["tag"])] + [entry]
    rows.sort(key=lambda row: (row["name"], row["tag"]))
    atomic_write(manifest, json.dumps({"format": 1, "entries": rows}, indent=2) + "\n")
    return entry


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished `zoo train` output directories")
    parser.add_argument("--manifest", default=str(registry.DEFAULT_MANIFEST))
    parser.add_argument("--check-images", type=int, default=CHECK_IMAGES)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    entries = []
    for run in args.runs:
        entry = publish(run, args.manifest, check_images=args.check_images, data_dir=args.data_dir)
        print(f"{entry['name']}/{entry['tag']}: {entry['file']} ({entry['size']:,} bytes), "
              f"top1 {entry['metrics']['top1']} % on {entry['metrics']['test_images']} test images, "
              f"{entry['metrics'][check_metric(args.check_images)]} % on the first {args.check_images}")
        entries.append(entry)
    return entries


if __name__ == "__main__":
    main()

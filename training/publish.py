"""Adds finished ``zoo train`` runs to the pretrained registry (``pretrained/``).

For each run directory: copies its weights file next to the manifest (atomically), checks
the copy's sha256 against the run's manifest entry, rebuilds the model from the copy the
way users do (``zoo.load(name, weights=path)``), measures its top-1 on the first
``--check-images`` test images and records that figure in the entry (``top1_first_N``):
the test suite reloads every shipped file and must reproduce it. The entry is then added
to the manifest, which is rewritten atomically. A shipped entry of the same name and tag
(or one whose weights file has the same name) is replaced only when asked (``--replace``),
and is checked before anything is copied.

    python -m training.publish runs/fp_resnet20 runs/rbnn_resnet18 [--manifest pretrained/manifest.json] [--replace]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import zoo  # noqa: I001  (first: selects Keras 2)
import numpy as np
from zoo import registry
from zoo.files import atomic_path, atomic_write
from zoo.weights import sha256_file

from training.artifacts import first_examples
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
            check_images: int = CHECK_IMAGES, data_dir=None, replace: bool = False) -> dict:
    """Copies ``run_dir``'s weights next to ``manifest`` and adds its entry; returns the entry.
    An entry already there of the same name and tag is replaced only with ``replace=True``;
    one that has the same weights file name under another name or tag, never."""
    run_dir, manifest = Path(run_dir), Path(manifest)
    entry_file = run_dir / MANIFEST_ENTRY
    if not entry_file.exists():
        raise ValueError(f"{run_dir} has no {MANIFEST_ENTRY}: not a finished `zoo train` run.")
    entry = json.loads(entry_file.read_text())
    rows = json.loads(manifest.read_text())["entries"] if manifest.exists() else []
    _check_replaceable(entry, rows, manifest, replace)
    source, target = run_dir / entry["file"], manifest.parent / entry["file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)
        if sha256_file(partial) != entry["sha256"]:
            raise ValueError(f"{source}: sha256 differs from its manifest entry; the run's weights file changed.")

    model = zoo.load(entry["name"], weights=str(target), input_shape=tuple(entry["input_shape"]),
                     classes=entry["classes"], **entry.get("builder_kwargs", {}))
    entry["metrics"][check_metric(check_images)] = top1_on_first(model, entry["dataset"], check_images, data_dir)

    rows = [row for row in rows if (row["name"], row["tag"]) != (entry["name"], entry["tag"])] + [entry]
    rows.sort(key=lambda row: (row["name"], row["tag"]))
    atomic_write(manifest, json.dumps({"format": 1, "entries": rows}, indent=2) + "\n")
    return entry


def _check_replaceable(entry: dict, rows: list[dict], manifest: Path, replace: bool) -> None:
    """Refuses to add ``entry`` over a shipped entry unless ``replace`` (same name and tag)."""
    for row in rows:
        same = (row["name"], row["tag"]) == (entry["name"], entry["tag"])
        if not same and row["file"] == entry["file"]:
            raise ValueError(f"{manifest}: the weights file {entry['file']} belongs to {row['name']}/{row['tag']}; "
                             "publishing this run would overwrite it.")
        if same and not replace:
            raise ValueError(
                f"{manifest} already has {row['name']}/{row['tag']} (top1 {row.get('metrics', {}).get('top1')} %); "
                f"this run's is {entry['metrics'].get('top1')} %. Pass --replace (replace=True) to replace it."
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished `zoo train` output directories")
    parser.add_argument("--manifest", default=str(registry.DEFAULT_MANIFEST))
    parser.add_argument("--check-images", type=int, default=CHECK_IMAGES)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--replace", action="store_true",
                        help="replace entries of the same name and tag already in the manifest")
    args = parser.parse_args(argv)
    for run in args.runs:
        try:
            entry = publish(run, args.manifest, check_images=args.check_images, data_dir=args.data_dir,
                            replace=args.replace)
        except ValueError as err:
            print(f"training.publish: error: {err}", file=sys.stderr)
            return 2
        print(f"{entry['name']}/{entry['tag']}: {entry['file']} ({entry['size']:,} bytes), "
              f"top1 {entry['metrics']['top1']} % on {entry['metrics']['test_images']} test images, "
              f"{entry['metrics'][check_metric(args.check_images)]} % on the first {args.check_images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prints the README's table of shipped models (markdown), generated from the pretrained manifest.

    python scripts/model_table.py            # the shipped weights: model, dataset, input, top-1, file size
    python scripts/model_table.py --costs    # every registered model's costs (builds each one: slow)

The README holds the first table between ``<!-- model-table:start -->`` and
``<!-- model-table:end -->``; tests/test_docs.py fails when it differs from this script's
output, so after changing ``pretrained/manifest.json`` paste the new output there.
"""

from __future__ import annotations

import argparse

import zoo
from zoo import registry
from zoo.text import markdown_table, readable

HEADERS = ["model", "method", "dataset", "input", "test top-1", "weights file"]


def _size(n_bytes: int | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:.2f} MiB"


def _top1(metrics: dict) -> str:
    top1 = metrics.get("top1")
    if top1 is None:
        return "-"
    images = metrics.get("test_images")
    return f"{top1:.2f} %" + (f" of {images:,}" if images else "")


def manifest_table(entries: list[registry.PretrainedEntry]) -> str:
    """The shipped models, best top-1 first within each dataset, as a markdown table."""
    rows = sorted(entries, key=lambda e: (e.dataset, -(e.metrics.get("top1") or 0.0), e.name))
    table = []
    for entry in rows:
        method = registry.get_model_spec(entry.name).scheme.method.split(" (")[0]
        shape = "×".join(str(v) for v in entry.input_shape)
        table.append([f"`{entry.name}`", method, entry.dataset, shape, _top1(entry.metrics), _size(entry.size)])
    return markdown_table(table, HEADERS, align="llllrr")


def costs_table() -> str:
    """Every registered model's costs at its default input (Larq's profiler on the exported model)."""
    rows = []
    for name in zoo.list_models():
        d = zoo.info(name)
        shape = "x".join(str(v) for v in d["input_shape"])
        rows.append([f"`{name}`", d["method"], shape, readable(d["parameters"], ".2f"),
                     readable(d["binary_macs"], ".2f"), readable(d["float_macs"], ".2f"), d["binary_convs"]])
    return markdown_table(rows, ["model", "method", "input", "params", "binary MACs", "float MACs", "binary convs"],
                          align="lllrrrr")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", action="store_true", help="every registered model's costs instead")
    args = parser.parse_args(argv)
    print(costs_table() if args.costs else manifest_table(registry.manifest_entries()))


if __name__ == "__main__":
    main()

"""What the benchmark scripts share: writing results as JSON and a readable table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable

from zoo.cli import hide_retracing_advice
from zoo.files import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def parse_arguments(parser: argparse.ArgumentParser, argv,
                    default_name: Callable[[argparse.Namespace], str] | None = None) -> argparse.Namespace:
    """Parses a benchmark's arguments with ``--overwrite`` added; ``args.name`` is its
    ``--name`` or ``default_name(args)``. Results already in ``results/`` (tracked ones among
    them) are refused before the benchmark runs unless ``--overwrite`` is given: a run with
    reduced settings must not replace them by surprise. TensorFlow's retracing advice is
    filtered as in ``zoo``'s commands: the scripts predict with many models in a row."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results/NAME.* if they exist (tracked results: rerun them with the command "
                             "they record)")
    args = parser.parse_args(argv)
    hide_retracing_advice()
    if args.name is None:
        args.name = default_name(args)
    existing = [path for path in (RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.md") if path.exists()]
    if existing and not args.overwrite:
        parser.exit(2, f"{parser.prog}: error: {existing[0]} exists; pass --overwrite to replace it, or --name to "
                       "write the results under another name.\n")
    return args


def command_line(script: str, argv) -> str:
    """How to rerun a benchmark: ``python benchmarks/<script> ARGS`` (``argv`` or the process's)."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])


def write_results(name: str, payload: dict, table: str) -> Path:
    """Writes ``results/<name>.json`` and ``results/<name>.md`` atomically; prints the table."""
    for suffix, text in ((".json", json.dumps({**payload, "machine": machine()}, indent=2)), (".md", table + "\n")):
        atomic_write(RESULTS / f"{name}{suffix}", text)
    print(table)
    return RESULTS / f"{name}.json"


def model_argument(text: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:KEY=VALUE,...`` (builder keywords, values as JSON or text), e.g.
    ``bnn_resnet20:width_multiplier=4`` -> ``("bnn_resnet20", {"width_multiplier": 4})``."""
    name, _, options = text.partition(":")
    kwargs = {}
    for option in filter(None, options.split(",")):
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"{text!r}: builder keywords are written KEY=VALUE, got {option!r}.")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs

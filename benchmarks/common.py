"""What the benchmark scripts share: writing results as JSON and a readable table."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def write_results(name: str, payload: dict, table: str) -> Path:
    """Writes ``results/<name>.json`` and ``results/<name>.md`` atomically; prints the table."""
    RESULTS.mkdir(exist_ok=True)
    for suffix, text in ((".json", json.dumps({**payload, "machine": machine()}, indent=2)), (".md", table + "\n")):
        with tempfile.NamedTemporaryFile("w", dir=RESULTS, suffix=".part", delete=False) as tmp:
            tmp.write(text)
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it private
        os.replace(tmp.name, RESULTS / f"{name}{suffix}")
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


def markdown_table(rows: list[list], headers: list[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

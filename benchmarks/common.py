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
        os.replace(tmp.name, RESULTS / f"{name}{suffix}")
    print(table)
    return RESULTS / f"{name}.json"


def markdown_table(rows: list[list], headers: list[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

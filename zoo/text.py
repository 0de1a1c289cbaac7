"""Text the zoo prints and writes: tables and readable numbers."""

from __future__ import annotations

import numbers
from typing import Sequence

_UNITS = (("G", 1e9), ("M", 1e6), ("k", 1e3))


def readable(value: float, spec: str = ".3g") -> str:
    """``value`` with a k / M / G suffix, its mantissa formatted with ``spec``:
    ``readable(20e6) == "20M"``, ``readable(1234, ".2f") == "1.23k"``; an integer below
    1000 as it is."""
    for unit, size in _UNITS:
        if value >= size:
            return f"{value / size:{spec}}{unit}"
    return str(value) if isinstance(value, numbers.Integral) else f"{value:{spec}}"


def text_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A plain-text table with aligned columns (for a terminal)."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence], headers: Sequence[str], align: str | None = None) -> str:
    """A markdown table; ``align`` gives each column ``"l"`` (the default) or ``"r"``."""
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l' or 'r' per column ({len(headers)}), got {align!r}.")
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

"""The ``zoo`` command line: the outermost layer of the package."""

from __future__ import annotations

import argparse
import json
import sys


def format_table(rows: list[list], headers: list[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _readable(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C (e.g. 28,28,1), got {text!r}") from None


def cmd_list(args) -> int:
    import zoo
    from zoo import registry

    names = zoo.list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"No model matches {args.pattern!r}.", file=sys.stderr)
        return 1
    tags: dict[str, list[str]] = {}
    for entry in registry.manifest_entries():
        tags.setdefault(entry.name, []).append(entry.tag)
    rows = []
    for name in names:
        spec = registry.get_model_spec(name)
        rows.append([name, spec.architecture.family, spec.scheme.method, ", ".join(tags.get(name, [])) or "-"])
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "method", "pretrained"), r)) for r in rows], indent=2))
    else:
        print(format_table(rows, ["model", "family", "method", "pretrained"]))
    return 0


def cmd_info(args) -> int:
    import zoo

    details = zoo.info(args.name, input_shape=args.input_shape)
    if args.json:
        print(json.dumps(details, indent=2))
        return 0
    rows = [
        ["model", details["name"]],
        ["family", f"{details['family']}: {details['architecture_description']}"],
        ["method", f"{details['method']} ({details['paper']})"],
        ["input", f"{tuple(details['input_shape'])}, {details['input']}"],
        ["normalisation", f"mean {[round(v, 2) for v in details['input_mean']]}, "
                          f"std {[round(v, 2) for v in details['input_std']]}"],
        ["classes", details["classes"]],
        ["parameters", f"{details['parameters']:,}"],
        ["binary MACs", f"{_readable(details['binary_macs'])} ({details['binary_convs']} binary convs)"],
        ["float MACs", _readable(details["float_macs"])],
    ]
    print(format_table(rows, ["field", "value"]))
    if details["reported"]:
        print("\nReported results:")
        print(format_table(
            [[r["dataset"], r["top1"], r["top5"] or "-", r["note"] or "-", r["source"]] for r in details["reported"]],
            ["dataset", "top-1", "top-5", "setting", "source"],
        ))
    print("\nPretrained weights:")
    if details["pretrained"]:
        print(format_table(
            [[p["tag"], p["dataset"], json.dumps(p["metrics"]), p.get("command", "")] for p in details["pretrained"]],
            ["tag", "dataset", "metrics", "command"],
        ))
    else:
        print("  none yet (zoo.load(..., weights=None) gives a randomly initialised model)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="1-bit CNN model zoo.")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list registered models")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'bnn_*'")
    listing.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=cmd_list)

    details = commands.add_parser("info", help="describe a model: method, input, costs, weights")
    details.add_argument("name")
    details.add_argument("--input-shape", type=_parse_shape, default=None, help="H,W,C (default: the architecture's)")
    details.add_argument("--json", action="store_true", help="print JSON instead of a table")
    details.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:  # the zoo's user-facing errors (unknown name, bad shape, ...)
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Prints the README's model table (markdown) from the registry: every model's costs.

    python scripts/model_table.py > /tmp/models.md
"""

import zoo


def readable(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.2f} M"


def main() -> None:
    print("| model | method | input | params | binary MACs | float MACs | binary convs |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in zoo.list_models():
        d = zoo.info(name)
        shape = "x".join(str(v) for v in d["input_shape"])
        print(
            f"| `{name}` | {d['method']} | {shape} | {d['parameters'] / 1e6:.2f} M | "
            f"{readable(d['binary_macs'])} | {readable(d['float_macs'])} | {d['binary_convs']} |"
        )


if __name__ == "__main__":
    main()

"""``python -m training MODEL --dataset NAME ...``: the same as ``zoo train``."""

import sys

from zoo.cli import main

sys.exit(main(["train", *sys.argv[1:]]))

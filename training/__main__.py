"""``python -m training MODEL --dataset NAME ...``: the same as ``zoo train``."""

import sys

from training.cli import main

sys.exit(main())

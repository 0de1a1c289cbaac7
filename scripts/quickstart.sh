#!/usr/bin/env bash
# The main job on a fresh machine: install, then train / evaluate / export / convert a
# binary ResNet-20 on the real Fashion-MNIST (see training/quickstart.py; args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m training.quickstart "$@"

#!/usr/bin/env bash
# The main job on a fresh machine: install, then load the shipped rbnn_resnet18 weights,
# evaluate them on the real Fashion-MNIST, fine-tune a new head on scikit-learn's digits,
# convert to an LCE .tflite and verify and time it (see training/quickstart.py; args pass through).
# Runs with the interpreter install.sh installed into (./.venv when it had to make one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python=$(bash scripts/install.sh --python)
"$python" -m training.quickstart "$@"

#!/usr/bin/env bash
# Installs everything zoo needs on a fresh Debian/Ubuntu machine with Python >= 3.10:
# Debian's Fashion-MNIST (the real data the offline TFDS builder reads) and the package
# with its test extras, editable, into the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python -m pip install --quiet --progress-bar off --root-user-action=ignore -e ".[test]"

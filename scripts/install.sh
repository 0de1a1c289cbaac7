#!/usr/bin/env bash
# Installs everything zoo needs on a fresh Debian/Ubuntu machine: Debian's Fashion-MNIST (the
# real data the offline TFDS builder reads) and the package with its test extras, editable.
#
# zoo runs on CPython 3.10-3.12 (larq-compute-engine 0.16 has no wheels for 3.13). The package
# goes into the current `python3` (or `python`) when it is such a version and pip may install
# into it; into ./.venv, made with it, when it is "externally managed" (PEP 668, Debian's
# system Python); into ./.venv made with python3.12, python3.11 or python3.10 from PATH when
# the current one is another version. With none of them it stops and says what to install.
#
#   bash scripts/install.sh            install
#   bash scripts/install.sh --python   print the python zoo is (to be) installed for, install nothing
#   bash scripts/install.sh --plan     print "current <python>" or "venv <python to make .venv with>"
set -euo pipefail
cd "$(dirname "$0")/.."

SUPPORTED="3.10 3.11 3.12"
VENV=.venv

# "<major.minor> <1 if externally managed else 0>" of interpreter $1; fails if it does not run.
probe() {
  "$1" -c 'import os, sys, sysconfig
managed = sys.prefix == sys.base_prefix and os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
print("%d.%d %d" % (sys.version_info[0], sys.version_info[1], managed))' 2>/dev/null
}

supported() {
  case " $SUPPORTED " in *" $1 "*) return 0 ;; esac
  return 1
}

# Prints "current <python>" or "venv <python>" (the interpreter to make ./.venv with);
# fails with a message saying what to do when no supported interpreter is on PATH.
plan() {
  local name path version managed found=""
  for name in python3 python; do
    path=$(command -v "$name") || continue
    read -r version managed < <(probe "$path") || continue
    found="${found:+$found, }$name $version"
    if supported "$version"; then
      if [ "$managed" = 1 ]; then echo "venv $path"; else echo "current $path"; fi
      return 0
    fi
  done
  for name in python3.12 python3.11 python3.10; do
    path=$(command -v "$name") || continue
    read -r version managed < <(probe "$path") || continue
    if supported "$version"; then
      echo "venv $path"
      return 0
    fi
  done
  cat >&2 <<EOF
zoo needs CPython 3.10, 3.11 or 3.12 (larq-compute-engine 0.16 has no wheels for other versions); found ${found:-no python3 or python} on PATH.
Install one, then run this script again: on Ubuntu 22.04/24.04 \`sudo apt-get install python3.12 python3.12-venv\` (or python3.10 on 22.04); on Debian 13, whose only Python is 3.13, \`pyenv install 3.12 && pyenv local 3.12\` (https://github.com/pyenv/pyenv) or \`uv python install 3.12\`.
EOF
  return 1
}

read -r mode python < <(plan) || exit 1
case "${1:-}" in
  --plan) echo "$mode $python"; exit 0 ;;
  --python) if [ "$mode" = venv ]; then echo "$PWD/$VENV/bin/python"; else echo "$python"; fi; exit 0 ;;
esac

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

if [ "$mode" = venv ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    "$python" -m venv "$VENV" || {
      echo "Could not create $VENV with $python: install its venv module (\`sudo apt-get install python$version-venv\`) and run this script again." >&2
      exit 1
    }
  fi
  python="$PWD/$VENV/bin/python"
fi
"$python" -m pip install --quiet --progress-bar off --root-user-action=ignore -e ".[test]"
if [ "$mode" = venv ]; then
  echo "zoo is installed in $VENV ($python); activate it with: source $VENV/bin/activate"
fi

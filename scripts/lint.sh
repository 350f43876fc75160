#!/usr/bin/env bash
# The guard rails CI runs before the tests: ruff lint (with McCabe <= 15), ruff format, mypy (strict on
# graph, pruning, hashing, encoder; see pyproject.toml). Needs the venv from scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check acpsearch tests benchmarks
.venv/bin/ruff format --check acpsearch tests benchmarks
.venv/bin/mypy

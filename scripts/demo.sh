#!/usr/bin/env bash
# README's main command: set up (idempotent) and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/acpsearch demo "$@"

#!/usr/bin/env bash
# Run one acpsearch study runner against a cluster: it takes submitted studies one after another
# (each claimed through a lease in the storage) until none is left, polling for WAIT seconds.
#   workers/run-worker.sh HEAD_IP:PORT STORAGE_URL [WAIT_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR=${1:?usage: workers/run-worker.sh HEAD_IP:PORT STORAGE_URL [WAIT]}
STORAGE=${2:?storage URL, e.g. postgresql://acpsearch@10.0.0.1/acpsearch}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/acpsearch worker --address "$ADDR" --storage "$STORAGE" --wait "${3:-0}"

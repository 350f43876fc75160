#!/usr/bin/env bash
# Join this machine to an acpsearch Ray cluster as a worker node.
#   workers/join.sh HEAD_IP:PORT [CPUS]
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR=${1:?usage: workers/join.sh HEAD_IP:PORT [CPUS]}
CPUS=${2:-$(nproc)}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/ray start --address="$ADDR" --num-cpus="$CPUS" --disable-usage-stats

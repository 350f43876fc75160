#!/usr/bin/env bash
# Join this machine to an acpsearch Ray cluster as a worker node.
#   workers/join.sh HEAD_IP:PORT [CPUS]
#   GPUs: declared with --num-gpus = what nvidia-smi lists (GPUS=N overrides, GPUS=0 declares none)
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR=${1:?usage: workers/join.sh HEAD_IP:PORT [CPUS]}
CPUS=${2:-$(nproc)}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
source workers/gpus.sh
exec .venv/bin/ray start --address="$ADDR" --num-cpus="$CPUS" ${GPU_ARGS[@]+"${GPU_ARGS[@]}"} --disable-usage-stats

#!/usr/bin/env bash
# Start the Ray head node of an acpsearch cluster on this machine.
#   workers/start-head.sh [PORT] [CPUS]       (defaults: 6379, all cores)
#   GPUs: declared with --num-gpus = what nvidia-smi lists (GPUS=N overrides, GPUS=0 declares none)
# Then on every worker machine:  workers/join.sh HEAD_IP:PORT [CPUS]
# and run studies against it:    acpsearch worker --address HEAD_IP:PORT --storage postgresql://...
# Every node must run the same Python environment (this repository's .venv) and reach the
# storage (PostgreSQL for several machines, see storage/) and the artifact directory (a shared
# file system path given by --artifacts / $ACPSEARCH_ARTIFACTS).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-6379}
CPUS=${2:-$(nproc)}
# Ray 2.60 turns token authentication on for new clusters; acpsearch's clients run with it off.
# Set it the same way on every node and client (or configure tokens everywhere).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
source workers/gpus.sh
exec .venv/bin/ray start --head --port="$PORT" --num-cpus="$CPUS" ${GPU_ARGS[@]+"${GPU_ARGS[@]}"} --include-dashboard=false \
  --disable-usage-stats ${RAY_HEAD_EXTRA:-}

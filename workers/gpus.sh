#!/usr/bin/env bash
# Sourced by start-head.sh / join.sh: sets GPU_ARGS to "--num-gpus=N" for the GPUs of this machine.
#   GPUS=N   declares N GPUs yourself (GPUS=0: none, even where there are some)
# Otherwise N is the number of GPUs `nvidia-smi -L` lists, or else torch.cuda.device_count() of
# this repository's .venv; none found: no flag (Ray then detects GPUs itself, normally none).
gpu_count() {
  if [ -n "${GPUS:-}" ]; then echo "$GPUS"; return; fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    local n
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if [ "${n:-0}" -gt 0 ]; then echo "$n"; return; fi
  fi
  if [ -x .venv/bin/python ]; then
    .venv/bin/python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null && return
  fi
  echo 0
}
N_GPUS=$(gpu_count)
case "$N_GPUS" in
  ''|*[!0-9]*) echo "GPUS must be a whole number, got '$N_GPUS'" >&2; exit 2 ;;
esac
GPU_ARGS=()
if [ -n "${GPUS:-}" ] || [ "$N_GPUS" -gt 0 ]; then
  GPU_ARGS=(--num-gpus="$N_GPUS")
fi

#!/usr/bin/env bash
# N processes on this machine, each a "host" with its own devices, joined by jax.distributed (CPU: gloo).
# Exercises the multi-host code paths (per-host data shards, global arrays, checkpoints) without a cluster.
#   bash launch/local_multiprocess.sh 2 --config=configs/smoke.py --workdir=/tmp/mp
set -euo pipefail
num=${1:?number of processes}; shift
port=${CONPREDIFF_PORT:-12355}
pids=()
for ((i = 0; i < num; i++)); do
  CONPREDIFF_MULTIHOST=1 CONPREDIFF_COORDINATOR="localhost:$port" CONPREDIFF_NUM_PROCESSES=$num \
  CONPREDIFF_PROCESS_ID=$i JAX_PLATFORMS=cpu python -m conprediff_jax.main "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

#!/usr/bin/env bash
# Runs the same command on every worker of a Cloud TPU pod slice; jax.distributed reads the pod's topology.
#   bash launch/tpu_pod.sh [--dry-run] <tpu-name> <zone> --config=configs/default.py --workdir=/mnt/shared/run
# Every worker needs this repo and `pip install -r requirements.txt "jax[tpu]==0.10.2"` first. The workdir must
# be a file system every worker mounts at the same path (Filestore/NFS, or a bucket through gcsfuse): Orbax
# writes one checkpoint from all hosts, and process 0 writes the rest. --dry-run prints the command instead.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
tpu=${1:?tpu name}; zone=${2:?zone}; shift 2
remote="cd conprediff_jax && CONPREDIFF_MULTIHOST=1 python -m conprediff_jax.main$(printf ' %q' "$@")"
command=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "$remote")
if ((dry_run)); then printf '%q ' "${command[@]}"; echo; exit 0; fi
"${command[@]}"

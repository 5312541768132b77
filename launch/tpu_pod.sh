#!/usr/bin/env bash
# Runs the same command on every worker of a Cloud TPU pod slice; jax.distributed reads the pod's topology.
#   bash launch/tpu_pod.sh <tpu-name> <zone> --config=configs/cifar10.py --workdir=gs://bucket/run
# Every worker needs this repo and `pip install -r requirements.txt "jax[tpu]==0.10.2"` first; the workdir must
# be shared storage (GCS) so that Orbax writes one checkpoint from all hosts.
set -euo pipefail
tpu=${1:?tpu name}; zone=${2:?zone}; shift 2
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd conprediff_jax && CONPREDIFF_MULTIHOST=1 python -m conprediff_jax.main $*"

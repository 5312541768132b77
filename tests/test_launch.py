"""The multi-host launchers' dry runs (the commands and environment each would start), and jax.distributed
finding a SLURM job's topology by itself. (Two real processes: test_multiprocess.py.)"""

import os
import shlex
import subprocess

import jax

from conprediff_jax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=configs/default.py", "--config.sample.prompts=the digit 3|a 7", "--workdir=/shared/run 1"]
MAIN = ["CONPREDIFF_MULTIHOST=1", "python", "-m", "conprediff_jax.main", *FLAGS]


def dry_run(*command, **env):
  proc = subprocess.run(command, cwd=REPO, env=dict(os.environ, **env), capture_output=True, text=True, timeout=60,
                        check=True)
  return shlex.split(proc.stdout)


def test_tpu_pod_runs_the_same_quoted_command_on_every_worker():
  argv = dry_run("bash", "launch/tpu_pod.sh", "--dry-run", "my-tpu", "us-central2-b", *FLAGS)
  assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b"]
  assert argv[7:9] == ["--worker=all", "--command"] and len(argv) == 10
  assert shlex.split(argv[9]) == ["cd", "conprediff_jax", "&&", *MAIN]  # what each worker's shell runs


def test_slurm_runs_one_task_per_node_with_the_flags_intact():
  argv = dry_run("bash", "launch/slurm_gpu.sbatch", *FLAGS, DRY_RUN="1")
  assert argv == ["srun", "--kill-on-bad-exit=1", "env", *MAIN]
  header = open(os.path.join(REPO, "launch", "slurm_gpu.sbatch"), encoding="utf-8").read()
  assert "#SBATCH --ntasks-per-node=1" in header and "#SBATCH --signal=TERM@" in header


def test_a_slurm_task_joins_without_addresses_and_jax_reads_them_from_slurm(monkeypatch):
  slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "0", "CONPREDIFF_MULTIHOST": "1"}
  for k, v in slurm.items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("CONPREDIFF_COORDINATOR", raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  parallel.maybe_initialize_distributed()
  assert calls == [((), {})]  # no addresses of ours: jax's cluster detection supplies them
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None,
                                                                                       None)
  assert (address.split(":")[0], count, index) == ("gpu017", 2, 1)

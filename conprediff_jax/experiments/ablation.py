r"""The project's headline check of ConPreDiff's claim: the config with the context loss off and on, paired by seed.

    python -m conprediff_jax.experiments.ablation                      # default config, seeds 0,1,2
    python -m conprediff_jax.experiments.ablation --seeds=0 --steps=300 --workdir=/tmp/ablation   # quick look

The sweep (experiments/sweep.py) of configs/sweeps/ablation.toml: arms "baseline" (context.weight 0) and "context"
(the config's own lambda), each trained at every seed and scored by `--mode=eval`. Takes every flag of the sweep.
"""

import os

from conprediff_jax.experiments import sweep

if __name__ == "__main__":
  sweep.run_program(os.path.join(sweep.SPECS, "ablation.toml"), "workdirs/ablation")

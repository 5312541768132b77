r"""Entry point: `python -m conprediff_jax.main --config=configs/<name>.py --workdir=<dir> --mode=train|sample`.

With no flags it trains configs/default.py (the embedded digits) into workdirs/default. Any config value can be
overridden from the command line, e.g. `--config.train.steps=200 --config.context.solver=sinkhorn`.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "default.py")

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/default", "Checkpoints, metrics and samples go here.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"], "train (resumes from the workdir) or sample.")


def run(config, workdir: str, mode: str):
  # Heavy imports after flag parsing, so `--help` and config errors answer at once.
  from conprediff_jax import parallel  # pylint: disable=g-import-not-at-top
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top

  parallel.maybe_initialize_distributed()
  if mode == "train":
    return train.train(config, workdir)
  return train.sample(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save at INFO; keep its warnings and our own messages.
  logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname or r.levelno >= std_logging.WARNING)
  result = run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  if _MODE.value == "train" and result.get("stopped"):
    print(f"stopped at step {result['step']}: {result['stopped']}; resume with the same command", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)

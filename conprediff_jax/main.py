r"""Entry point: `python -m conprediff_jax.main --config=configs/<name>.py --workdir=<dir> --mode=<mode>`.

Modes: `train` (resumes from the workdir, samples at the end), `sample` (samples.png / samples.npz from the
latest checkpoint's EMA parameters), `eval` (metrics of those parameters into eval_<step>.json), `inpaint`
(inpaint.png / .npz / .json: masked images filled in; conprediff_jax/inpainting/run.py), `export` (a diffusers
DDIMPipeline folder in <workdir>/export).

With no flags it trains configs/default.py (the embedded digits) into workdirs/default. Any config value can be
overridden from the command line, e.g. `--config.train.steps=200 --config.context.solver=sinkhorn`.

A bad flag, config value or data location is one line on stderr, `error: ...`, and exit status 2 (see
config_validation.py), found before anything is compiled.
"""

import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from conprediff_jax import config_validation

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "default.py")

# No default here: ml_collections would load a default at import and apply the command line's overrides to it
# there, outside any error handling; parse_flags supplies configs/default.py instead.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file (default: configs/default.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/default", "Checkpoints, metrics and samples go here.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False,
                                         "Continue a workdir that was trained with a different config.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "inpaint", "export"],
                          "train (resumes from the workdir), sample, eval, inpaint, or export to diffusers.")

USAGE_ERROR = 2


def fail(message: str):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a one-line error and exit 2 instead of a traceback or a usage dump."""
  if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    argv = [argv[0], f"--config={_DEFAULT_CONFIG}", *argv[1:]]
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # a config file that failed to load raises only when first used
  except (KeyError, AttributeError) as e:  # ml_collections: an override names a key the config lacks
    fail(unknown_override(e, argv))
  except OSError as e:  # the config file itself
    fail(f"--config: {str(e).strip().splitlines()[-1].strip()}; pass a config file, e.g. --config=configs/smoke.py")
  except (flags.Error, ValueError, TypeError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")  # a config file's own error is the last line
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]}; pass settings as --flag=value or --config.<key>=value")
  return rest


def unknown_override(e: LookupError | AttributeError, argv: list[str]) -> str:
  """ml_collections nests `'key'\\nDid you mean ...` in KeyErrors; names the flag that asked for the key."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  key, _, hint = str(e.args[0] if e.args else e).partition("\n")
  flag = next((a.split("=")[0] for a in argv
               if a.startswith("--config.") and key.strip("'") in a.split("=")[0].split(".")), "--config.*")
  return f"{flag}: {key} is not a config key; {hint or 'see configs/default.py for the keys'}"


def is_startup_error(e: Exception) -> bool:
  """FileNotFoundError/ValueError from opening the data, the prompts to sample or the images and masks to inpaint,
  finding no checkpoint, text embeddings of the wrong width, or exporting (inpainting) with a family that has no
  exporter (inpainter): user errors."""
  if not isinstance(e, (FileNotFoundError, ValueError)):
    return False
  from conprediff_jax import families, sample_requests, sampling  # pylint: disable=g-import-not-at-top
  from conprediff_jax.data import registry  # pylint: disable=g-import-not-at-top
  from conprediff_jax.inpainting import run as inpaint_run  # pylint: disable=g-import-not-at-top
  from conprediff_jax.models import text_encoder  # pylint: disable=g-import-not-at-top

  frames = [frame.f_code for frame, _ in traceback.walk_tb(e.__traceback__)]
  reading_inputs = (registry.make_source, sample_requests.request, sample_requests.cond, inpaint_run.load_images,
                    inpaint_run.load_known)
  refusing = (sampling.restore_ema_weights, families.Family.export, families.FAMILIES["gaussian"].export,
              families.Family.inpainter, text_encoder.TextEncoder.__call__)
  return (any(f.__code__ in frames for f in reading_inputs) or frames[-1] in [f.__code__ for f in refusing])


def run(config, workdir: str, mode: str):
  # Heavy imports after validation, so `--help` and config errors answer at once.
  from conprediff_jax import train  # pylint: disable=g-import-not-at-top

  if mode == "train":
    return train.train(config, workdir)
  if mode == "sample":
    train.sample(config, workdir)
    return {"written": os.path.join(workdir, "samples.png")}
  if mode == "eval":
    from conprediff_jax import evaluate  # pylint: disable=g-import-not-at-top
    metrics = evaluate.evaluate(config, workdir)
    return {"written": os.path.join(workdir, f"eval_{metrics['step']}.json"), "metrics": metrics}
  if mode == "inpaint":
    from conprediff_jax.inpainting import run as inpaint_run  # pylint: disable=g-import-not-at-top
    return {"written": os.path.join(workdir, "inpaint.png"), "metrics": inpaint_run.inpaint(config, workdir)}
  return {"written": export_from_workdir(config, workdir)}


def export_from_workdir(config, workdir: str) -> str:
  """--mode=export: the latest checkpoint's EMA weights, in the family's export format, into <workdir>/export."""
  import jax  # pylint: disable=g-import-not-at-top
  from conprediff_jax import parallel, sampling  # pylint: disable=g-import-not-at-top
  trained = sampling.load_latest_ema(config, workdir)
  weights = jax.tree.map(parallel.to_host, trained.weights)  # whole arrays on every process
  out_dir = os.path.join(workdir, "export")
  if jax.process_index() == 0:
    trained.family.export(weights, out_dir)
  return out_dir


def main(argv):
  del argv  # parse_flags refused positional arguments
  import jax  # pylint: disable=g-import-not-at-top  # counting devices compiles nothing
  from conprediff_jax import parallel  # pylint: disable=g-import-not-at-top

  parallel.maybe_initialize_distributed()  # before the device count, which then spans every host
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  try:
    config_validation.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    if not _ALLOW_CONFIG_CHANGE.value:
      config_validation.check_workdir(config, workdir, mode=mode)
  except config_validation.ConfigError as e:
    fail(str(e))
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save at INFO; keep its warnings and our own messages.
  logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname or r.levelno >= std_logging.WARNING)
  from conprediff_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    result = run(config, workdir, mode)
  except workdir_lock.WorkdirBusy as e:
    fail(str(e))
  except (FileNotFoundError, ValueError) as e:
    if not is_startup_error(e):
      raise
    fail(str(e))
  if result.get("stopped"):
    print(f"stopped at step {result['step']}: {result['stopped']}; resume with the same command", file=sys.stderr)
  elif "written" in result:
    print(f"wrote {result['written']}" + (f": {result['metrics']}" if "metrics" in result else ""))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

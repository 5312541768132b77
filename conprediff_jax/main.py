r"""Entry point: `python -m conprediff_jax.main --config=configs/<name>.py --workdir=<dir> --mode=<mode>`.

Modes: `train` (resumes from the workdir, samples at the end), `sample` (samples.png / samples.npz from the
latest checkpoint's EMA parameters), `eval` (metrics of those parameters into eval_<step>.json), `inpaint`
(inpaint.png / .npz / .json: masked images filled in; conprediff_jax/inpainting/run.py), `export` (diffusers folders
in <workdir>/export: a DDIMPipeline, LDMPipeline, AutoencoderKL or UNet2DConditionModel; docs/pytorch.md),
`compile` (the train step and sampler compiled for a TPU slice, `--topology=v5p-32`, with no TPU needed: memory
per chip, whether it fits, predicted step time and MFU, into compile_<slice>.json; compile_report.py).

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

from conprediff_jax import cli
from conprediff_jax import config_validation

_CONFIG = cli.define_config("Training configuration file")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/default", "Checkpoints, metrics and samples go here.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False,
                                         "Continue a workdir that was trained with a different config.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "inpaint", "export", "compile"],
                          "train (resumes from the workdir), sample, eval, inpaint, export to diffusers, or compile "
                          "for a TPU slice.")
_TOPOLOGY = flags.DEFINE_string("topology", "", "--mode=compile: the TPU slice to compile for, as the cloud names it "
                                "(v4-32, v5p-8, v5e-16, v6e-64); empty: the attached TPUs.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "--mode=compile: slices of --topology in the job (multi-slice).")

def is_startup_error(e: Exception) -> bool:
  """FileNotFoundError/ValueError from opening the data, the prompts to sample or the images and masks to inpaint,
  the weights to start from (model.init_from), finding no checkpoint, text embeddings of the wrong width, a model
  the export format cannot express, or exporting (inpainting) with a family that has no exporter (inpainter): user
  errors."""
  if not isinstance(e, (FileNotFoundError, ValueError)):
    return False
  from conprediff_jax import checkpointing, export, families, sample_requests  # pylint: disable=g-import-not-at-top
  from conprediff_jax.data import registry  # pylint: disable=g-import-not-at-top
  from conprediff_jax.inpainting import run as inpaint_run  # pylint: disable=g-import-not-at-top
  from conprediff_jax.models import text_encoder  # pylint: disable=g-import-not-at-top

  frames = [frame.f_code for frame, _ in traceback.walk_tb(e.__traceback__)]
  # A ValueError anywhere under these is about the user's input: their data, prompts, weights, or a model the
  # export format cannot express.
  reading_inputs = (registry.make_source, sample_requests.request, sample_requests.cond, inpaint_run.load_images,
                    inpaint_run.load_known, export.import_weights, export.export)
  refusing = (families.restore_ema_weights, checkpointing.restore_latest, checkpointing.restore_ema,
              text_encoder.TextEncoder.__call__, *(cls.inpainter for cls in families.FAMILIES.values()))
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
  from conprediff_jax import export, parallel, sampling  # pylint: disable=g-import-not-at-top
  trained = sampling.load_latest_ema(config, workdir)
  weights = jax.tree.map(parallel.to_host, trained.weights)  # whole arrays on every process
  out_dir = os.path.join(workdir, "export")
  if jax.process_index() == 0:
    export.export(trained.family, weights, out_dir)
  return out_dir


def compile_for_slice(config, workdir: str):
  """--mode=compile: validated against the slice's devices (no data or trained first stage needed)."""
  import jax  # pylint: disable=g-import-not-at-top
  from conprediff_jax import compile_report, families, hardware, parallel  # pylint: disable=g-import-not-at-top
  if _NUM_SLICES.value != 1 and not _TOPOLOGY.value:
    cli.fail("--num_slices needs --topology (the attached devices are one job already)")
  if not _TOPOLOGY.value:
    parallel.maybe_initialize_distributed()  # a pod's attached devices span its hosts
  try:
    name, devices = compile_report.target_devices(_TOPOLOGY.value, _NUM_SLICES.value)
    families.validate(config, num_devices=len(devices), process_count=hardware.hosts(devices),
                      num_slices=parallel.num_slices(devices), files=False)
  except ValueError as e:
    cli.fail(str(e))
  report = compile_report.report(config, name, devices, config_name=flags.FLAGS["config"].config_filename)
  if jax.process_index() == 0:
    print(compile_report.table(report))
    print(f"wrote {compile_report.write(report, workdir)}")


def main(argv):
  del argv  # parse_flags refused positional arguments
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if mode == "compile":
    if _TOPOLOGY.value:  # compiled on this machine's CPU for a slice it does not have: JAX itself stays on the CPU
      os.environ.setdefault("JAX_PLATFORMS", "cpu")
    logging.set_verbosity(logging.WARNING)
    return compile_for_slice(config, workdir)
  import jax  # pylint: disable=g-import-not-at-top  # counting devices compiles nothing
  from conprediff_jax import families, parallel  # pylint: disable=g-import-not-at-top

  parallel.maybe_initialize_distributed()  # before the device count, which then spans every host
  try:
    families.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    if not _ALLOW_CONFIG_CHANGE.value:
      families.check_workdir(config, workdir, mode=mode)
  except config_validation.ConfigError as e:
    cli.fail(str(e))
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save at INFO; keep its warnings and our own messages.
  logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname or r.levelno >= std_logging.WARNING)
  from conprediff_jax import atomic_files, workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    result = run(config, workdir, mode)
  except (workdir_lock.WorkdirBusy, atomic_files.WriteError) as e:
    cli.fail(str(e))
  except (FileNotFoundError, ValueError) as e:
    if not is_startup_error(e):
      raise
    cli.fail(str(e))
  if result.get("stopped"):
    print(f"stopped at step {result['step']}: {result['stopped']}; resume with the same command", file=sys.stderr)
  elif "written" in result:
    print(f"wrote {result['written']}" + (f": {result['metrics']}" if "metrics" in result else ""))


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse(argv, _CONFIG))

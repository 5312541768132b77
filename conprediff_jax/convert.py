r"""Conversions between this project's models and PyTorch's (diffusers), from the command line.

    python -m conprediff_jax.convert import DIR [--config=configs/default.py]

`import` reads a diffusers UNet2DModel, UNet2DConditionModel or DiTTransformer2DModel folder (safetensors), checks
every tensor against the network that the config with the printed overrides builds, and prints the command that
fine-tunes it here (with the context loss on, as the config has it): `--config.model.init_from=DIR` and the model
settings that match DIR. Given an AutoencoderKL folder, it prints the command that trains a latent model on it
(`--config.first_stage.workdir=DIR`), and given a VQModel folder the token model's. Export runs through the
trainer: `python -m conprediff_jax.main --workdir=W --mode=export` (docs/pytorch.md).
"""

from absl import app
from absl import logging

from conprediff_jax import cli

_CONFIG = None  # the --config flag, defined when run as a program: importing this module defines no flags


def import_command(path: str, config) -> str:
  """The verified command line that fine-tunes the diffusers UNet or DiT at `path` with `config`; ValueError if it
  cannot be."""
  import jax  # pylint: disable=g-import-not-at-top
  from conprediff_jax import families  # pylint: disable=g-import-not-at-top
  from conprediff_jax import export  # pylint: disable=g-import-not-at-top
  from conprediff_jax.families import first_stage  # pylint: disable=g-import-not-at-top
  vae = first_stage.read_config(path)
  if vae is not None and first_stage.from_diffusers(vae):  # a first stage: a VQModel's tokens, AutoencoderKL's latents
    tokens = vae["family"] == "autoencoder"
    kind, stage_config, workdir = (("VQModel", "configs/digits_tokens.py", "tokens") if tokens else
                                   ("AutoencoderKL", "configs/digits_latent.py", "latent"))
    shape = {"data.image_size": vae["data"]["image_size"], "data.channels": vae["data"]["channels"]}
    config = cli.override(cli.load_config_file(stage_config) if tokens else config,
                          {"first_stage.workdir": path, **shape}, path)
    stage = families.get(config).first_stage()
    count = sum(v.size for v in jax.tree.leaves(stage.weights))
    scaling = "" if tokens else f", scaling factor {vae['scaling_factor']}"
    return (f"# {path}: {kind}, {count:,} parameters, every tensor matched{scaling}\npython -m conprediff_jax.main "
            f"--config={stage_config} --config.first_stage.workdir={path} "
            + " ".join(f"--config.{k}={v}" for k, v in shape.items()) + f" --workdir=workdirs/{workdir}")
  folder, overrides = export.import_overrides(path)
  overrides["model.init_from"] = path
  config = cli.override(config, overrides, path)
  families.validate(config, num_devices=1, process_count=1)
  params = export.import_weights(families.get(config), path)
  count = sum(v.size for v in jax.tree.leaves(params))
  flags = " ".join(f"--config.{k}={_flag_value(v)}" for k, v in overrides.items())
  return (f"# {folder}: {count:,} parameters, every tensor matched\n"
          f"python -m conprediff_jax.main {flags} --workdir=workdirs/finetune")


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return f"'({', '.join(map(str, value))}{',' if len(value) == 1 else ''})'"
  return str(value)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) != 3 or argv[1] != "import":
    cli.fail("usage: python -m conprediff_jax.convert import DIR [--config=...]; export is "
             "python -m conprediff_jax.main --workdir=W --mode=export")
  try:
    print(import_command(argv[2], _CONFIG.value))
  except (FileNotFoundError, ValueError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  _CONFIG = cli.define_config("The config to fine-tune with")
  app.run(main, flags_parser=lambda argv: cli.parse(argv, _CONFIG, positional=2))

"""Config validation: malformed configs and flags give one line naming the key, exit 2, and no traceback.

Most cases call `validate` in-process (microseconds each); a few go through the real CLI, which answers in a
second or two because everything it rejects is rejected before the trainer is imported or anything compiles.
"""

import importlib
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from conprediff_jax import config_validation, families
from conprediff_jax.config_validation import ConfigError
from conprediff_jax.families import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DELETE = object()
MISSING_DIR = "/nonexistent/conprediff/data"


def smoke(**changes):
  """configs/smoke.py as a plain ConfigDict with `changes` ({"a.b": value | DELETE}) applied.

  Going through a dict sidesteps ConfigDict's own type safety, so any value can be planted, as a config file could.
  """
  from configs import smoke as smoke_config  # pylint: disable=g-import-not-at-top
  tree = smoke_config.get_config().to_dict()
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
      node = node[key]
    if value is DELETE:
      del node[leaf]
    else:
      node[leaf] = value
  return ml_collections.ConfigDict(tree)


# (changes to configs/smoke.py, the key the error must name, devices, processes)
MALFORMED = {
    "unknown top-level key": ({"trian": {"steps": 3}}, "trian", 1, 1),
    "unknown nested key": ({"train.stepz": 3}, "train.stepz", 1, 1),
    "missing key": ({"train.steps": DELETE}, "train.steps", 1, 1),
    "str for int": ({"train.steps": "10"}, "train.steps", 1, 1),
    "float for int": ({"train.batch_size": 8.0}, "train.batch_size", 1, 1),
    "bool for int": ({"train.batch_size": True}, "train.batch_size", 1, 1),
    "int for bool": ({"model.class_conditional": 1}, "model.class_conditional", 1, 1),
    "bad element type": ({"model.channel_mults": (1, "2")}, "model.channel_mults", 1, 1),
    "scalar for section": ({"model": 3}, "model", 1, 1),
    "unknown data source": ({"data.name": "digitz"}, "data.name", 1, 1),
    "unknown model": ({"model.name": "vit"}, "model.name", 1, 1),
    "unknown dtype": ({"model.dtype": "float16"}, "model.dtype", 1, 1),
    "unknown schedule": ({"diffusion.schedule": "quadratic"}, "diffusion.schedule", 1, 1),
    "unknown prediction": ({"diffusion.prediction": "x0"}, "diffusion.prediction", 1, 1),
    "unknown solver": ({"context.solver": "sinkorn"}, "context.solver", 1, 1),
    "unknown sampler": ({"sample.sampler": "euler_a"}, "sample.sampler", 1, 1),
    "unknown spacing": ({"sample.spacing": "leading"}, "sample.spacing", 1, 1),
    "unsupported channels": ({"data.channels": 2}, "data.channels", 1, 1),
    "image size vs downsampling": ({"data.image_size": 9, "model.channel_mults": (1, 2)}, "data.image_size", 1, 1),
    "odd base width": ({"model.channels": 9, "model.num_groups": 3}, "model.channels", 1, 1),
    "groups do not divide widths": ({"model.num_groups": 3}, "model.num_groups", 1, 1),
    "heads do not divide widths": ({"model.num_heads": 3}, "model.num_heads", 1, 1),
    "attention at no level": ({"model.attention_resolutions": (5,)}, "model.attention_resolutions", 1, 1),
    "empty channel_mults": ({"model.channel_mults": ()}, "model.channel_mults", 1, 1),
    "no strides": ({"context.strides": ()}, "context.strides", 1, 1),
    "zero stride": ({"context.strides": (0, 1)}, "context.strides", 1, 1),
    "stride off the grid": ({"context.strides": (1, 8)}, "context.strides", 1, 1),
    "zero steps": ({"train.steps": 0}, "train.steps", 1, 1),
    "negative batch": ({"train.batch_size": -8}, "train.batch_size", 1, 1),
    "zero learning rate": ({"train.learning_rate": 0.0}, "train.learning_rate", 1, 1),
    "nan learning rate": ({"train.learning_rate": float("nan")}, "train.learning_rate", 1, 1),
    "ema_decay of 1": ({"train.ema_decay": 1.0}, "train.ema_decay", 1, 1),
    "zero every_steps": ({"checkpoint.every_steps": 0}, "checkpoint.every_steps", 1, 1),
    "zero max_to_keep": ({"checkpoint.max_to_keep": 0}, "checkpoint.max_to_keep", 1, 1),
    "zero num_images": ({"sample.num_images": 0}, "sample.num_images", 1, 1),
    "zero sample steps": ({"sample.steps": 0}, "sample.steps", 1, 1),
    "more sample steps than timesteps": ({"sample.steps": 1001}, "sample.steps", 1, 1),
    "negative context weight": ({"context.weight": -0.1}, "context.weight", 1, 1),
    "no context samples": ({"context.num_samples": 0}, "context.num_samples", 1, 1),
    "zero epsilon": ({"context.epsilon": 0.0}, "context.epsilon", 1, 1),
    "tfds without a name": ({"data.name": "tfds", "data.data_dir": REPO}, "data.tfds_name", 1, 1),
    "tfds data_dir missing": ({"data.name": "tfds", "data.tfds_name": "mnist", "data.data_dir": MISSING_DIR},
                              "data.data_dir", 1, 1),
    "folder without data_dir": ({"data.name": "folder"}, "data.data_dir", 1, 1),
    "conditional without classes": ({"model.class_conditional": True, "data.num_classes": 0}, "data.num_classes",
                                    1, 1),
    "guidance without a condition": ({"sample.guidance_scale": 2.0}, "sample.guidance_scale", 1, 1),
    "guidance without an unconditional model": ({"model.class_conditional": True, "train.cond_dropout": 0.0,
                                                 "sample.guidance_scale": 2.0}, "sample.guidance_scale", 1, 1),
    "condition always dropped": ({"model.class_conditional": True, "train.cond_dropout": 1.0},
                                 "train.cond_dropout", 1, 1),
    "text without captions": ({"model.text_conditional": True, "sample.prompts": "a"}, "data.captions", 1, 1),
    "digit captions for a folder": ({"model.text_conditional": True, "data.captions": "digit_templates",
                                     "data.name": "folder", "data.data_dir": REPO}, "data.captions", 1, 1),
    "captions file missing": ({"model.text_conditional": True, "data.captions": MISSING_DIR}, "data.captions", 1, 1),
    "text without prompts": ({"model.text_conditional": True, "data.captions": "digit_templates",
                              "sample.prompts": " | "}, "sample.prompts", 1, 1),
    "text heads vs width": ({"model.text_conditional": True, "text.num_heads": 5}, "text.num_heads", 1, 1),
    "unknown text encoder": ({"text.encoder": "clip"}, "text.encoder", 1, 1),
    "precomputed without width": ({"model.text_conditional": True, "text.encoder": "precomputed"},
                                  "text.embedding_dim", 1, 1),
    "precomputed without prompts": ({"model.text_conditional": True, "text.encoder": "precomputed",
                                     "text.embedding_dim": 8, "data.text_embeddings_file": REPO},
                                    "sample.prompt_embeddings_file", 1, 1),
    "guidance on text without dropout": ({"model.text_conditional": True, "data.captions": "digit_templates",
                                          "sample.prompts": "a", "train.cond_dropout": 0.0,
                                          "sample.guidance_scale": 2.0}, "sample.guidance_scale", 1, 1),
    "negative min-SNR gamma": ({"diffusion.min_snr_gamma": -1.0}, "diffusion.min_snr_gamma", 1, 1),
    "batch vs data parallelism": ({"train.batch_size": 6}, "train.batch_size", 4, 1),
    "batch vs data x fsdp": ({"mesh.shape": (2, 4), "train.batch_size": 12}, "train.batch_size", 8, 1),
    "batch vs processes": ({"train.batch_size": 9, "mesh.shape": (1, 1)}, "train.batch_size", 1, 2),
    "mesh larger than devices": ({"mesh.shape": (16, 1)}, "mesh.shape", 8, 1),
    "mesh smaller than devices": ({"mesh.shape": (2, 1)}, "mesh.shape", 8, 1),
    "two -1 in mesh": ({"mesh.shape": (-1, -1)}, "mesh.shape", 8, 1),
    "negative mesh size": ({"mesh.shape": (-2, -2)}, "mesh.shape", 4, 1),
    "mesh shape vs axes": ({"mesh.shape": (-1, 1, 1)}, "mesh.shape", 1, 1),
    "mesh without fsdp": ({"mesh.axes": ("data", "model")}, "mesh.axes", 1, 1),
    "unknown mesh axis": ({"mesh.axes": ("data", "fsdp", "tensor"), "mesh.shape": (-1, 1, 1)}, "mesh.axes", 1, 1),
}


def test_param_spec_splits_output_features_over_model_then_the_rest_over_fsdp():
  from conprediff_jax import parallel  # pylint: disable=g-import-not-at-top
  P = parallel.P  # pylint: disable=invalid-name
  assert parallel.param_spec((3, 3, 64, 128), fsdp_size=4, model_size=2) == P(None, None, "fsdp", "model")
  assert parallel.param_spec((256, 512), fsdp_size=1, model_size=4) == P(None, "model")
  assert parallel.param_spec((8192, 3), fsdp_size=2, model_size=2) == P("fsdp", None)  # 3 outputs: not split
  assert parallel.param_spec((8192,), fsdp_size=1, model_size=2) == P()  # a bias or norm scale: replicated
  assert parallel.param_spec((16, 16), fsdp_size=4, model_size=2) == P()  # small: replicated
  assert parallel.param_spec((3, 3, 64, 128), fsdp_size=4) == P(None, None, None, "fsdp")  # fsdp alone as before


@pytest.mark.parametrize("changes,key,devices,processes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_config_is_one_line_naming_the_key(changes, key, devices, processes):
  with pytest.raises(ConfigError) as error:
    validate(smoke(**changes), num_devices=devices, process_count=processes)
  message = str(error.value)
  assert error.value.key == key, message
  assert message.startswith(f"config.{key}: ") and "; " in message, message
  assert "\n" not in message


@pytest.mark.parametrize("name", ["default", "smoke", "digits_cond", "digits_inpaint", "digits_text"])
@pytest.mark.parametrize("devices,processes", [(1, 1), (2, 1), (8, 1), (8, 2)])
def test_shipped_configs_pass(name, devices, processes):
  config = importlib.import_module(f"configs.{name}").get_config()
  validate(config, num_devices=devices, process_count=processes)


def test_lenient_where_the_code_is():
  """Ints stand for floats, lists for tuples; a tfds or folder data_dir that exists passes."""
  validate(smoke(**{"train.learning_rate": 1, "context.weight": 0, "model.channel_mults": [1, 2],
                    "mesh.shape": [-1, 1], "data.name": "folder", "data.data_dir": REPO}), num_devices=2)
  validate(smoke(**{"train.max_nonfinite_steps": 0}), num_devices=1)  # 0: never stop


def test_files_named_by_keys_must_exist(tmp_path):
  validate(smoke(**{"eval.inception_weights": ""}), num_devices=1)  # empty: not used
  weights = tmp_path / "inception.safetensors"
  weights.write_bytes(b"")
  validate(smoke(**{"eval.inception_weights": str(weights)}), num_devices=1)
  for key in ("eval.inception_weights", "eval.reference_stats"):
    with pytest.raises(ConfigError, match=rf"^config\.{key.replace('.', '[.]')}: .* does not exist; "):
      validate(smoke(**{key: str(tmp_path / "gone")}), num_devices=1)


def test_choices_match_the_registries(tokenizer_workdir):
  """The shared CHOICES spell the registries out so checking loads none of them; this keeps the two in step. A
  family's own choices are its registries' names, and its reference config builds it."""
  from conprediff_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  from conprediff_jax.context import objective, wasserstein  # pylint: disable=g-import-not-at-top
  from conprediff_jax.inpainting import masks  # pylint: disable=g-import-not-at-top
  from conprediff_jax.models import text_encoder  # pylint: disable=g-import-not-at-top

  registries = {"context.solver": wasserstein.SOLVERS, "eval.metric": evaluate.LOWER_IS_BETTER,
                "train.lr_schedule": train.LR_SCHEDULES, "context.head_input": objective.HEAD_INPUTS,
                "context.targets": objective.TARGETS, "context.timestep_weighting": objective.TIMESTEP_WEIGHTINGS,
                "inpaint.mask": masks.GENERATORS, "text.encoder": text_encoder.ENCODERS}
  for key, names in registries.items():
    assert sorted(config_validation.CHOICES[key]) == sorted(names), key
  for name, family in families.FAMILIES.items():  # each family's reference config builds that family
    config = family.schema().as_configdict()
    assert config.family == name
    if name == "masked":
      config.first_stage.workdir = tokenizer_workdir
    assert isinstance(families.get(config), family)


def test_data_errors_at_startup_are_user_errors_and_others_are_not(tmp_path):
  from conprediff_jax import main  # pylint: disable=g-import-not-at-top
  from conprediff_jax.data import registry  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError) as error:  # an existing folder without images
    registry.make_source(smoke(**{"data.name": "folder", "data.data_dir": str(tmp_path)}).data)
  assert main.is_startup_error(error.value)
  try:
    raise ValueError("a bug elsewhere")
  except ValueError as e:
    assert not main.is_startup_error(e)


# ------------------------------------------------------------------------------------------------------------------
# Through the real command line.
# ------------------------------------------------------------------------------------------------------------------
CLI = {
    "unknown override key": (["--config.train.stepz=3"], "--config.train.stepz"),
    "override of the wrong type": (["--config.train.steps=abc"], "--config.train.steps"),
    "missing config file": (["--config=missing.py"], "missing.py"),
    "unknown mode": (["--mode=bogus"], "--mode"),
    "positional argument": (["extra"], "extra"),
    "invalid value": (["--config.context.solver=sinkorn"], "config.context.solver"),
    "mesh too large": (["--config.mesh.shape=(64,1)"], "config.mesh.shape"),
    # Found by the data source as the run starts: after the model is traced, before anything compiles.
    "folder without images": (["--config.data.name=folder", "--config.data.data_dir={empty}"],
                              "config.data.data_dir"),
    "inpainting photos of another size": (["--mode=inpaint", "--config.inpaint.images={photos}"],
                                          "resize (or crop) them to that size first"),
}


@pytest.mark.parametrize("flags,named", CLI.values(), ids=CLI.keys())
def test_cli_rejects_in_one_line_with_exit_2(tmp_path, flags, named):
  (tmp_path / "empty").mkdir()
  (tmp_path / "photos").mkdir()
  Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "photos" / "photo.jpg")
  flags = [f.format(empty=tmp_path / "empty", photos=tmp_path / "photos") for f in flags]
  cmd = [sys.executable, "-m", "conprediff_jax.main", "--config=configs/smoke.py", f"--workdir={tmp_path / 'work'}",
         *flags]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert last.startswith("error: ") and named in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


# What a newcomer types first: the default config, no --config flag (ml_collections once applied these overrides
# while importing main.py, outside any error handling: a 40-line traceback).
FIRST_CONTACT = {
    "typo in an override key": (["--config.trian.steps=5"], "--config.trian.steps: 'trian' is not a config key; "
                                                            "Did you mean \"train\""),
    "override of the wrong type": (["--config.train.steps=five"], "--config.train.steps"),
    "override of a section": (["--config.train=5"], "--config.train"),
    "unknown flag": (["--wokdir=/tmp/x"], "'wokdir'. Did you mean: workdir"),
}


@pytest.mark.parametrize("program", ["conprediff_jax.main", "conprediff_jax.experiments.ablation"])
@pytest.mark.parametrize("flags,named", FIRST_CONTACT.values(), ids=FIRST_CONTACT.keys())
def test_cli_without_config_flag_rejects_in_one_line(tmp_path, flags, named, program):
  cmd = [sys.executable, "-m", program, *flags]
  proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and named in proc.stderr, proc.stderr
  assert not os.listdir(tmp_path)  # no workdir made


def test_workdir_of_another_config_is_refused_but_resumable_changes_pass(tmp_path):
  config = smoke()
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  families.check_workdir(config, str(tmp_path))  # the same config: fine
  config.train.steps, config.sample.num_images, config.mesh.shape = 1000, 3, (1, -1)
  families.check_workdir(config, str(tmp_path))  # train longer, sample differently, other mesh: fine
  config.model.channels = 16
  with pytest.raises(ConfigError, match=r"config.model.channels: is 16, but .* trained with 8; use a new --workdir") as e:
    families.check_workdir(config, str(tmp_path))
  assert "\n" not in str(e.value)


def test_using_a_trained_model_refuses_a_config_that_reads_its_weights_differently(tmp_path):
  config = smoke()
  saved = config.to_dict()
  del saved["diffusion"]["min_snr_gamma"]  # a key the run's code did not have yet
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config.sample.steps, config.eval.num_samples, config.context.weight, config.train.learning_rate = 3, 7, 0.0, 1.0
  config.inpaint.mask, config.diffusion.min_snr_gamma = "half", 1.0
  for mode in ("sample", "eval", "inpaint", "export"):  # inference settings and training-only keys may change
    families.check_workdir(config, str(tmp_path), mode=mode)
  config.diffusion.prediction = "eps" if config.diffusion.prediction == "v" else "v"
  with pytest.raises(ConfigError, match=r"config.diffusion.prediction: .* trained with .*; pass the config it was "
                                        r"trained with") as e:
    families.check_workdir(config, str(tmp_path), mode="eval")
  assert "\n" not in str(e.value)


def test_cli_refuses_foreign_workdir_unless_allowed(tmp_path):
  (tmp_path / "config.json").write_text(smoke().to_json_best_effort())
  cmd = [sys.executable, "-m", "conprediff_jax.main", "--config=configs/smoke.py", f"--workdir={tmp_path}",
         "--config.model.channels=16"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: config.model.channels: is 16, but the run in --workdir="), proc.stderr
  assert "Traceback" not in proc.stderr
  # --allow_config_change gets past the check (and then trains; --mode=sample shows it without training).
  proc = subprocess.run(cmd + ["--allow_config_change", "--mode=sample"], cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=False)
  assert "--workdir=" not in proc.stderr and "no checkpoint" in proc.stderr.strip().splitlines()[-1]


def test_resuming_a_run_from_before_a_key_existed_passes_at_its_default_only(tmp_path):
  """A run saved by code that lacked a key behaved as the key's default: resuming at that value is no change,
  resuming at another value is."""
  config = smoke()
  saved = config.to_dict()
  del saved["context"]["timestep_weighting"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  families.check_workdir(config, str(tmp_path))
  config.context.timestep_weighting = "snr"
  with pytest.raises(ConfigError, match=r"config.context.timestep_weighting: is 'snr', but .* trained with None"):
    families.check_workdir(config, str(tmp_path))

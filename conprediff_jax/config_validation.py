"""Checks a config before anything is built or compiled, so a bad setting costs seconds, not a failed compile.

    validate(config, num_devices=jax.device_count(), process_count=jax.process_count())

raises the first problem found as a `ConfigError` whose message is one line, `config.<key>: <what is wrong>;
<the fix>`; main.py prints it as `error: ...` and exits with status 2. The checks, in order:

1. schema: `config.family` names a family, and every key of that family's reference config (SCHEMAS: for
   "gaussian" configs/default.py) is present with a value of the reference's type (ints pass for floats, tuples
   and lists are interchangeable), and there are no other keys;
2. names that must be in a registry (CHOICES), numeric bounds (BOUNDS), each where the family's schema has the key;
3. rules across keys, the family's own (FAMILY_RULES: network shapes, first stage, context strides on the family's
   feature grid, sampling steps) and then the common ones (RULES: data location, files named by keys);
4. the mesh against the devices present, and the global batch against the mesh and the processes.

Only the mesh check imports jax (through parallel.py, whose shape arithmetic it reuses); main.py has jax loaded by
then to count devices. Nothing here traces or compiles.
"""

import difflib
import functools
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(_REPO, "configs")

# Each family's reference config: its keys and value types are the schema every config of that family must match.
# Spelled out like CHOICES (families/__init__.py FAMILIES is the registry; a test keeps the two in step).
SCHEMAS: dict[str, str] = {"gaussian": "default.py", "masked": "digits_tokens.py", "autoencoder": "digits_vq.py",
                           "kl_autoencoder": "digits_kl.py"}

# Registry names by key. Spelled out rather than imported: the registries live in modules that load jax, flax or
# ott-jax, and tests/test_config_validation.py checks that these match them.
CHOICES: dict[str, tuple] = {
    "data.name": ("digits", "folder", "tfds"),             # data/registry.py SOURCES
    "data.channels": (1, 3),                               # data/imaging.py target_mode
    "model.dtype": ("bfloat16", "float32"),
    "diffusion.schedule": ("cosine", "linear"),            # diffusion/gaussian.py SCHEDULES
    "diffusion.prediction": ("eps", "v"),                  # diffusion/gaussian.py GaussianDiffusion
    "context.solver": ("exact", "sinkhorn", "sorted"),     # context/wasserstein.py SOLVERS
    "context.head_input": ("features", "features+denoised"),  # context/objective.py HEAD_INPUTS
    "context.targets": ("clean", "denoised"),              # context/objective.py TARGETS
    "context.timestep_weighting": ("alpha_bar", "cutoff", "none", "snr"),  # context/objective.py
    "train.lr_schedule": ("constant", "cosine"),           # train.py LR_SCHEDULES
    "masking.schedule": ("cosine", "linear", "square"),    # families/masked_process.py MASK_SCHEDULES
    "inpaint.mask": ("border", "box", "half", "strokes"),  # inpainting/masks.py GENERATORS
    "text.encoder": ("bytes", "precomputed"),              # models/text_encoder.py TextEncoder
    "eval.metric": ("class_accuracy", "fd_digits", "fid", "kid", "kid_digits", "precision_digits", "recall_digits",
                    "reconstruction_mse"),  # evaluate.py
}
# What differs by family: its network, and how it samples.
FAMILY_CHOICES: dict[str, dict[str, tuple]] = {
    "gaussian": {"model.name": ("unet",),                  # models/__init__.py MODELS
                 "sample.sampler": ("ddim", "ddpm", "dpm++2m", "euler", "heun", "unipc"),  # diffusion/samplers.py SAMPLERS
                 "sample.spacing": ("karras", "linspace", "trailing", "uniform")},  # samplers.py SPACINGS
    "masked": {"model.name": ("transformer",), "sample.sampler": ("maskgit",),
               "sample.schedule": ("cosine", "linear", "square")},  # masked_process.py MASK_SCHEDULES
    "autoencoder": {"model.name": ("vq",)},
    "kl_autoencoder": {"model.name": ("kl",)},
}

# Numeric bounds by key: (test, the requirement in words).
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "data.image_size": _POSITIVE,
    "data.num_classes": _NON_NEGATIVE,
    "model.channels": _POSITIVE,
    "model.num_res_blocks": _POSITIVE,
    "model.num_heads": _POSITIVE,
    "model.num_groups": _POSITIVE,
    "model.dropout": _FRACTION,
    "diffusion.timesteps": _POSITIVE,
    "diffusion.min_snr_gamma": _NON_NEGATIVE,
    "context.weight": _NON_NEGATIVE,
    "context.num_samples": _POSITIVE,
    "context.epsilon": _POSITIVE,
    "context.sinkhorn_iterations": _POSITIVE,
    "context.num_projections": _NON_NEGATIVE,
    "context.latent_dim": _NON_NEGATIVE,  # 0: the feature width
    "context.position_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "context.hidden_dim": _POSITIVE,
    "context.snr_gamma": _POSITIVE,
    "context.min_signal": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "context.weight_warmup_steps": _NON_NEGATIVE,
    "train.steps": _POSITIVE,
    "train.batch_size": _POSITIVE,
    "train.microbatches": _POSITIVE,
    "train.learning_rate": _POSITIVE,
    "train.warmup_steps": _NON_NEGATIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.grad_clip": _POSITIVE,  # optax clips to this norm: 0 would zero every update
    "train.ema_decay": _FRACTION,
    "train.log_every": _POSITIVE,
    "train.max_nonfinite_steps": _NON_NEGATIVE,  # 0: never stop
    "train.cond_dropout": _FRACTION,
    "checkpoint.every_steps": _POSITIVE,
    "checkpoint.max_to_keep": _POSITIVE,
    "sample.num_images": _POSITIVE,
    "sample.batch_size": _POSITIVE,
    "sample.steps": _POSITIVE,
    "sample.eta": _NON_NEGATIVE,
    "sample.sigma_max": _NON_NEGATIVE,
    "sample.temperature": _NON_NEGATIVE,
    "sample.choice_temperature": _NON_NEGATIVE,
    "sample.guidance_scale": _NON_NEGATIVE,
    "model.width": _POSITIVE,
    "model.depth": _POSITIVE,
    "model.mlp_ratio": _POSITIVE,
    "model.codebook_size": _POSITIVE,
    "model.code_dim": _POSITIVE,
    "model.commitment_cost": _NON_NEGATIVE,
    "model.codebook_decay": _FRACTION,
    "model.dead_code_threshold": _NON_NEGATIVE,
    "model.latent_channels": _POSITIVE,
    "model.kl_weight": _NON_NEGATIVE,
    "text.max_length": _POSITIVE,
    "text.width": _POSITIVE,
    "text.depth": _NON_NEGATIVE,
    "text.num_heads": _POSITIVE,
    "text.embedding_dim": _NON_NEGATIVE,
    "inpaint.num_images": _POSITIVE,
    "inpaint.steps": _POSITIVE,
    "inpaint.jump_length": _POSITIVE,
    "inpaint.resamples": _POSITIVE,
    "eval.every_steps": _NON_NEGATIVE,  # 0: no periodic eval
    "eval.num_samples": _POSITIVE,
    "eval.batch_size": _POSITIVE,
    "eval.reference_samples": _POSITIVE,
}

# A string key whose name ends so names a file (e.g. weights) that must exist when it is set.
PATH_SUFFIXES = ("_path", "_file", "_weights", "_stats")


class ConfigError(ValueError):
  """A config problem, as one line: `config.<key>: <what is wrong>; <the fix>`."""

  def __init__(self, key: str, problem: str, fix: str):
    self.key = key
    super().__init__(" ".join(f"config.{key}: {problem}; {fix}".splitlines()))


def validate(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1, num_slices: int = 1,
             schema: ml_collections.ConfigDict | None = None, files: bool = True) -> None:
  """Raises ConfigError for the first problem in `config`; `schema` defaults to its family's reference config.
  `files=False` leaves out the rules that need what training reads from disk (data, weights, a trained first
  stage, captions): what --mode=compile needs is the config's shapes alone."""
  family = config.get("family", "gaussian") if schema is None else schema.family
  if family not in SCHEMAS:
    raise ConfigError("family", f"{family!r} is not one of {list(SCHEMAS)}",
                      _suggest(family, SCHEMAS, "pick one of them"))
  _check_schema(config, family_schema(family) if schema is None else schema, "")
  for key, choices in {**CHOICES, **FAMILY_CHOICES[family]}.items():
    value = _get(config, key)
    if value is not _ABSENT and value not in choices:
      raise ConfigError(key, f"{value!r} is not one of {list(choices)}", _suggest(value, choices, "pick one of them"))
  for key, (test, requirement) in BOUNDS.items():
    value = _get(config, key)
    if value is not _ABSENT and not (math.isfinite(value) and test(value)):
      raise ConfigError(key, f"{value!r} is not {requirement}", f"set a value {requirement}")
  FIRST_STAGE_RULES.get(family, lambda c, files: None)(config, files)
  for rule in FAMILY_RULES[family] + RULES:
    if files or rule not in FILE_RULES:
      rule(config)
  _check_mesh_and_batch(config, num_devices, process_count, num_slices)


@functools.cache
def family_schema(family: str) -> ml_collections.FrozenConfigDict:
  """The family's reference config, loaded by path (as main.py does)."""
  return ml_collections.FrozenConfigDict(load_config_file(os.path.join(_CONFIGS, SCHEMAS[family])))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config a config file makes, named as --config names it: `path[:argument]` (configs/paper_kl.py:celebahq),
  the path relative to the current directory or to the repository. FileNotFoundError (one line) if there is none."""
  path, _, argument = spec.partition(":")
  found = next((p for p in (os.path.expanduser(path), os.path.join(_REPO, path)) if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"config file {path!r} does not exist (nor under {_REPO})")
  if _REPO not in sys.path:  # config files import their bases as `configs.<name>`
    sys.path.append(_REPO)
  name = "_conprediff_config_" + os.path.splitext(os.path.basename(found))[0]
  module_spec = importlib.util.spec_from_file_location(name, found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


# ------------------------------------------------------------------------------------------------------------------
# Schema: keys and types.
# ------------------------------------------------------------------------------------------------------------------
# What a value may be, by the type of the schema's default.
_ACCEPTS = {int: (int,), float: (int, float), tuple: (tuple, list), list: (tuple, list)}


def _fits(value, default) -> bool:
  if default is None:
    return True
  # bool is an int subclass: refuse True where a number goes, and 1 where a flag goes.
  return (isinstance(value, _ACCEPTS.get(type(default), (type(default),)))
          and isinstance(value, bool) == isinstance(default, bool))


def _is_section(value) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, dict))


def _check_schema(config, schema, prefix: str) -> None:
  for key in config.keys():
    if key not in schema:
      raise ConfigError(prefix + key, "is not a config key",
                        "remove it, or " + _suggest(key, list(schema.keys()), f"use one of {list(schema.keys())}"))
  for key, default in schema.items():
    path = prefix + key
    if key not in config:
      raise ConfigError(path, "is missing", f"add it (configs/default.py sets {_show(default)})")
    value = config[key]
    if _is_section(default):
      if not _is_section(value):
        raise ConfigError(path, f"is {value!r}, not a section of keys", f"set its keys instead, e.g. {path}.<key>")
      _check_schema(value, default, path + ".")
    elif not _fits(value, default):
      raise ConfigError(path, f"{value!r} is {_kind(value)}, not {_kind(default)}", f"set {_kind(default)} like "
                        f"{_show(default)}")
    elif isinstance(default, (tuple, list)) and default:
      wrong = [v for v in value if not _fits(v, default[0])]
      if wrong:
        raise ConfigError(path, f"holds {wrong[0]!r}, which is {_kind(wrong[0])}, not {_kind(default[0])}",
                          f"give a tuple of {type(default[0]).__name__}s like {_show(default)}")


def _kind(value) -> str:
  name = type(value).__name__
  return ("an " if name[0] in "aeiou" else "a ") + name


def _show(value) -> str:
  return repr(value.to_dict() if _is_section(value) and hasattr(value, "to_dict") else value)


def _suggest(value, options, otherwise: str) -> str:
  close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
  return f"did you mean {close[0]!r}?" if close else otherwise


_ABSENT = object()


def _get(config, dotted: str):
  """The value at a dotted key, or _ABSENT where the config (its family's schema) has no such key."""
  for key in dotted.split("."):
    if not _is_section(config) or key not in config:
      return _ABSENT
    config = config[key]
  return config


# ------------------------------------------------------------------------------------------------------------------
# Rules across keys.
# ------------------------------------------------------------------------------------------------------------------
def _check_unet(config) -> None:
  """The shapes unet.py builds: every level halves the grid, GroupNorm and attention split the widths."""
  _check_levels(config)
  m, size = config.model, config.data.image_size
  mults = tuple(m.channel_mults)
  if m.channels % 2:
    raise ConfigError("model.channels", f"{m.channels} is odd, but the sinusoidal timestep embedding is "
                      "sin/cos pairs of this width", "use an even width")
  widths = [m.channels * k for k in mults]
  levels = [size // 2**i for i in range(len(mults))]
  unused = [r for r in m.attention_resolutions if r not in levels]
  if unused:
    raise ConfigError("model.attention_resolutions", f"{unused} match no UNet level (the levels are {levels}), "
                      "so no attention would be added there", f"use sizes from {levels}, or () for none")
  # The mid block always attends at the last width.
  attended = sorted({w for w, r in zip(widths, levels) if r in m.attention_resolutions} | {widths[-1]})
  if math.gcd(*attended) % m.num_heads:
    raise ConfigError("model.num_heads", f"{m.num_heads} does not divide the attention widths {attended}",
                      f"use a divisor of {math.gcd(*attended)}")


def _grid_check(grid_of: Callable[[ml_collections.ConfigDict], tuple[int, str]]):
  """A rule for the context strides on the family's feature grid: `grid_of(config) -> (size, what it is)`."""

  def check_context(config) -> None:
    if config.context.weight == 0:
      return
    strides = tuple(config.context.strides)
    if not strides:
      raise ConfigError("context.strides", "is empty", "give at least one stride, e.g. (1, 2, 3), or set "
                        "config.context.weight=0 to turn the context loss off")
    if min(strides) < 1:
      raise ConfigError("context.strides", f"{strides} holds non-positive strides", "use strides >= 1")
    size, what = grid_of(config)
    if max(strides) >= size:
      raise ConfigError("context.strides", f"{strides} reaches outside the {size}x{size} grid ({what}): every "
                        "neighbour at that stride would be masked", f"use strides below {size}")

  return check_context


def _check_sampling(config) -> None:
  timesteps = config.diffusion.timesteps
  for key, steps in (("sample.steps", config.sample.steps), ("inpaint.steps", config.inpaint.steps)):
    if steps > timesteps:
      raise ConfigError(key, f"{steps} exceeds config.diffusion.timesteps={timesteps}", f"use at most {timesteps}")


def _check_levels(config) -> None:
  """A convolutional network that halves the grid at every level after the first, GroupNorm over its widths."""
  m, size = config.model, config.data.image_size
  mults = tuple(m.channel_mults)
  if not mults or min(mults) < 1:
    raise ConfigError("model.channel_mults", f"{mults} is not a non-empty tuple of positive ints",
                      "give one multiplier per level, e.g. (1, 2, 2)")
  factor = 2 ** (len(mults) - 1)
  if size % factor:
    raise ConfigError("data.image_size", f"{size} is not divisible by {factor}, the downsampling over "
                      f"{len(mults)} levels (config.model.channel_mults)",
                      f"use a multiple of {factor}, or fewer levels")
  widths = [m.channels * k for k in mults]
  if math.gcd(*widths) % m.num_groups:
    raise ConfigError("model.num_groups", f"{m.num_groups} does not divide the channel widths {widths} "
                      "(config.model.channels x channel_mults)", f"use a divisor of {math.gcd(*widths)}")


def _check_no_context(config) -> None:
  if config.context.weight != 0:
    raise ConfigError("context.weight", f"{config.context.weight} with config.family={config.family!r}, which has "
                      "no context loss (it is defined for the denoising families)", "set config.context.weight=0")


def _check_vq(config) -> None:
  _check_levels(config)
  m = config.model
  if m.codebook_size < 2:
    raise ConfigError("model.codebook_size", f"{m.codebook_size} codes", "use at least 2 codes")


def read_first_stage_config(workdir: str) -> dict | None:
  """The config.json a first-stage run wrote into its workdir, or None when there is none. A diffusers
  AutoencoderKL folder reads as the config of the KL autoencoder it imports as (export/diffusers_import.py)."""
  path = os.path.join(os.path.expanduser(workdir), "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  if saved.get("_class_name") == "AutoencoderKL":
    from conprediff_jax.export import diffusers_import  # pylint: disable=g-import-not-at-top  # loads jax
    return diffusers_import.autoencoder_config(saved, family_schema("kl_autoencoder").to_dict())
  return saved


def first_stage_config(config) -> dict | None:
  """The config of the first stage `config` reads: the one its run saved in config.first_stage.workdir, or, where
  that holds none, the one config.first_stage.config names (the config that would train it: enough for shapes,
  as --mode=compile needs); None when neither is there."""
  stage = config.get("first_stage", None)
  if not stage or not stage.workdir:
    return None
  saved = read_first_stage_config(stage.workdir)
  if saved is None and stage.get("config", ""):
    saved = load_config_file(stage.config).to_dict()
  return saved


def from_diffusers(saved) -> bool:
  """Whether a first stage's config (read_first_stage_config) is a diffusers AutoencoderKL's: only those carry the
  diffusers scaling factor."""
  return "scaling_factor" in saved


def has_weights(workdir: str) -> bool:
  """Whether a first stage's folder holds weights: a run's checkpoints, or a diffusers folder's safetensors."""
  workdir = os.path.expanduser(workdir)
  return (os.path.isdir(os.path.join(workdir, "checkpoints"))
          or os.path.exists(os.path.join(workdir, "diffusion_pytorch_model.safetensors")))


def token_grid(first_stage: dict) -> int:
  """The tokenizer's grid: its image size over its downsampling (one halving per level after the first)."""
  return first_stage["data"]["image_size"] // 2 ** (len(first_stage["model"]["channel_mults"]) - 1)


def _check_first_stage(config, *, family: str, kind: str, make: str, files: bool, diffusers_ok: bool = False) -> None:
  """config.first_stage.workdir holds a trained `family` run (`kind` in messages) of the config's image shape, or,
  with `diffusers_ok`, a diffusers folder that reads as one; `make` says how to train it. Without `files`
  (--mode=compile), the config that would train it (config.first_stage.config) stands in for the run."""
  workdir = config.first_stage.workdir
  what = f"{kind} (nor a diffusers AutoencoderKL folder)" if diffusers_ok else kind
  if files:
    saved = read_first_stage_config(workdir) if workdir else None
    weights = has_weights if diffusers_ok else lambda w: os.path.isdir(os.path.join(os.path.expanduser(w), "checkpoints"))
    if saved is None or not weights(workdir):
      raise ConfigError("first_stage.workdir", f"{workdir!r} holds no trained {what}", make)
  else:
    saved = first_stage_config(config)
    if saved is None:
      raise ConfigError("first_stage.config", f"is empty and {workdir!r} holds no trained {what}, so its shapes are "
                        "unknown", "name the config that trains it, e.g. configs/paper_kl.py:celebahq")
  if saved.get("family") != family:
    raise ConfigError("first_stage.workdir", f"{workdir!r} holds a {saved.get('family', 'gaussian')!r} run, not a "
                      f"{kind} (family {family!r})", make)
  for key in ("image_size", "channels"):
    if saved["data"][key] != config.data[key]:
      raise ConfigError(f"data.{key}", f"{config.data[key]} but the {kind} in {workdir!r} was trained with "
                        f"{saved['data'][key]}", f"set config.data.{key}={saved['data'][key]}")


def _check_tokenizer(config, files: bool) -> None:
  """The masked family reads a trained tokenizer; say which command makes one when it is missing."""
  workdir = config.first_stage.workdir
  make = (f"train the tokenizer first: python -m conprediff_jax.main --config=configs/digits_vq.py "
          f"--workdir={workdir or 'workdirs/digits_vq'}")
  _check_first_stage(config, family="autoencoder", kind="tokenizer", make=make, files=files)


def _check_transformer(config) -> None:
  m = config.model
  if m.width % m.num_heads:
    raise ConfigError("model.num_heads", f"{m.num_heads} does not divide config.model.width={m.width}",
                      "use a divisor of the width")
  tokens = token_grid(first_stage_config(config)) ** 2
  if config.sample.steps > tokens:
    raise ConfigError("sample.steps", f"{config.sample.steps} decoding steps for {tokens} tokens",
                      f"use at most {tokens} (every step decodes at least one token)")


def _check_conditioning(config) -> None:
  if config.model.get("class_conditional") and config.data.num_classes < 1:
    raise ConfigError("data.num_classes", f"{config.data.num_classes} with config.model.class_conditional=True",
                      "set the number of classes, or class_conditional=False")
  if config.model.get("text_conditional"):
    _check_text(config)
  scale = config.get("sample", {}).get("guidance_scale", 1.0)
  if scale != 1.0 and not (config.model.get("class_conditional") or config.model.get("text_conditional")):
    raise ConfigError("sample.guidance_scale", f"{scale} for an unconditional model (guidance needs a condition)",
                      "set config.model.class_conditional (or text_conditional) =True and train, or leave "
                      "guidance_scale=1")
  if scale != 1.0 and config.train.get("cond_dropout", 0.0) == 0:
    raise ConfigError("sample.guidance_scale", f"{scale} with config.train.cond_dropout=0: the unconditional "
                      "model guidance subtracts was never trained", "train with cond_dropout > 0 (e.g. 0.1)")


def _check_text(config) -> None:
  """Where a text-conditional model's training text and its sampling prompts come from (checked now: samples are
  written after training, too late to learn that there are no prompts)."""
  t, d, s = config.text, config.data, config.sample
  if t.encoder == "bytes":
    if t.width % t.num_heads:
      raise ConfigError("text.num_heads", f"{t.num_heads} does not divide config.text.width={t.width}",
                        "use a divisor of the width")
    if not d.captions:
      raise ConfigError("data.captions", "is empty with config.model.text_conditional=True",
                        "set 'digit_templates' (the embedded digits) or a captions file, one line per example")
    if d.captions == "digit_templates" and d.name != "digits":
      raise ConfigError("data.captions", f"'digit_templates' with config.data.name={d.name!r}",
                        "give a captions file for this data (one caption per line, in the source's order)")
    if not (s.prompts.strip(" |") or s.prompts_file):
      raise ConfigError("sample.prompts", "is empty (and so is sample.prompts_file): a text-conditional model "
                        "samples from prompts", "e.g. --config.sample.prompts='the digit 3|a handwritten seven'")
    return
  for key, value in (("text.embedding_dim", t.embedding_dim), ("data.text_embeddings_file", d.text_embeddings_file),
                     ("sample.prompt_embeddings_file", s.prompt_embeddings_file)):
    if not value:
      raise ConfigError(key, f"is {value!r} with config.text.encoder='precomputed'",
                        "set it: the width of the stored embeddings, the training data's embeddings (.npz: "
                        "embedding, mask), and the sampling prompts' (.npz: prompts, embedding, mask)")


def _check_data(config) -> None:
  """What a source reads from disk; the sources themselves check the contents when they open."""
  d = config.data
  if d.name == "tfds" and not d.tfds_name:
    raise ConfigError("data.tfds_name", "is empty with config.data.name='tfds'",
                      "set a prepared TFDS dataset, e.g. 'celebahq256'")
  if d.name in ("tfds", "folder") and not os.path.isdir(os.path.expanduser(d.data_dir)):
    what = "the TFDS data_dir holding the prepared dataset" if d.name == "tfds" else "a folder of images"
    problem = "is empty" if not d.data_dir else f"{d.data_dir!r} is not an existing directory"
    raise ConfigError("data.data_dir", f"{problem} (config.data.name={d.name!r})", f"point it at {what}")


def _check_captions(config) -> None:
  """The captions file a text-conditional model trains on."""
  captions = config.data.get("captions", "")
  if not (config.model.get("text_conditional") and captions and captions != "digit_templates"):
    return
  if not os.path.isfile(os.path.expanduser(captions)):
    raise ConfigError("data.captions", f"{captions!r} is neither 'digit_templates' nor an existing file",
                      "point it at a captions file")


def _check_paths(config, prefix: str = "") -> None:
  for key, value in config.items():
    if _is_section(value):
      _check_paths(value, f"{prefix}{key}.")
    elif (key.endswith(PATH_SUFFIXES) and isinstance(value, str) and value
          and not os.path.exists(os.path.expanduser(value))):
      raise ConfigError(prefix + key, f"{value!r} does not exist", "point it at the file, or leave it empty")


def denoiser_view(config) -> ml_collections.ConfigDict:
  """The data shape a Gaussian model's UNet sees: the config's own, or, with config.first_stage.workdir, the latent
  grid and channels of the autoencoder there (families/latent.py)."""
  saved = first_stage_config(config)
  if saved is None:
    return config
  view = config.copy_and_resolve_references()
  view.data.image_size = saved["data"]["image_size"] // 2 ** (len(saved["model"]["channel_mults"]) - 1)
  view.data.channels = saved["model"]["latent_channels"]
  return view


def _check_autoencoder(config, files: bool) -> None:
  """Latent diffusion reads a trained KL autoencoder of the same images."""
  workdir = config.first_stage.workdir
  if not workdir:
    return
  make = (f"train it first: python -m conprediff_jax.main --config=<its autoencoder config: configs/digits_kl.py "
          f"for the digits, configs/paper_kl.py:<task> for the paper's tasks> --workdir={workdir}")
  _check_first_stage(config, family="kl_autoencoder", kind="KL autoencoder", make=make, files=files,
                     diffusers_ok=True)


def _check_init_from(config) -> None:
  path = config.model.init_from
  if path and not os.path.isdir(os.path.expanduser(path)):
    raise ConfigError("model.init_from", f"{path!r} is not an existing directory",
                      "point it at a diffusers UNet2DModel folder (safetensors), or leave it empty")


Rule = Callable[[ml_collections.ConfigDict], None]
FAMILY_RULES: dict[str, tuple[Rule, ...]] = {
    "gaussian": (lambda c: _check_unet(denoiser_view(c)),
                 _grid_check(lambda c: (denoiser_view(c).data.image_size, "the denoiser's grid")), _check_sampling,
                 _check_init_from),
    "masked": (_check_transformer, _grid_check(
        lambda c: (token_grid(first_stage_config(c)), "the tokenizer's token grid"))),
    "autoencoder": (_check_vq, _check_no_context),
    "kl_autoencoder": (_check_levels, _check_no_context),
}
RULES: tuple[Rule, ...] = (_check_captions, _check_conditioning, _check_data, _check_paths)  # every family's
# What a family's first stage must be, checked before its other rules (which read the first stage's shapes).
FIRST_STAGE_RULES = {"gaussian": _check_autoencoder, "masked": _check_tokenizer}
# Rules about files that training reads (data, weights, captions), left out where only shapes matter (files=False).
FILE_RULES = (_check_data, _check_captions, _check_paths, _check_init_from)


# ------------------------------------------------------------------------------------------------------------------
# Mesh and batch against the devices and processes present.
# ------------------------------------------------------------------------------------------------------------------
def _check_mesh_and_batch(config, num_devices: int, process_count: int, num_slices: int = 1) -> None:
  from conprediff_jax import parallel  # pylint: disable=g-import-not-at-top  # loads jax; see the docstring

  shape, axes = tuple(config.mesh.shape), tuple(config.mesh.axes)
  if len(shape) != len(axes):
    raise ConfigError("mesh.shape", f"{shape} has {len(shape)} sizes for the {len(axes)} axes {axes} "
                      "(config.mesh.axes)", "give one size per axis")
  missing = [a for a in parallel.BATCH_AXES if a not in axes]
  if missing or len(set(axes)) != len(axes) or not set(axes) <= set(parallel.AXES):
    raise ConfigError("mesh.axes", f"{axes} must name each of {parallel.BATCH_AXES} once, and may add "
                      f"{parallel.MODEL_AXIS!r}", "e.g. ('data', 'fsdp') or ('data', 'fsdp', 'model')")
  if any(s != -1 and s < 1 for s in shape):
    raise ConfigError("mesh.shape", f"{shape} holds sizes other than positive ints and -1",
                      "use positive sizes, and -1 for all remaining devices")
  try:
    resolved = parallel.resolve_mesh_shape(shape, num_devices)
  except ValueError:
    raise ConfigError("mesh.shape", f"{shape} does not fit the {num_devices} device(s) present",
                      f"use sizes whose product is {num_devices}, or one -1 for all remaining devices, "
                      "e.g. (-1, 1)") from None
  data = resolved[axes.index("data")]
  if data % num_slices:
    raise ConfigError("mesh.shape", f"{shape} gives the data axis {data} devices, which do not split over the "
                      f"{num_slices} slices that axis spans", f"use a multiple of {num_slices} for the data axis")
  batch, parts = config.train.batch_size, config.train.get("microbatches", 1)
  split = math.prod(resolved[axes.index(a)] for a in parallel.BATCH_AXES)
  if batch % split:
    raise ConfigError("train.batch_size", f"{batch} (global) does not split over the {split}-way data "
                      f"parallelism of the mesh {dict(zip(axes, resolved))}",
                      f"use a multiple of {split}, e.g. {split * math.ceil(batch / split)}")
  if batch % (split * parts):
    raise ConfigError("train.microbatches", f"{parts} parts of the global batch {batch} do not each split over "
                      f"the {split}-way data parallelism of the mesh {dict(zip(axes, resolved))}",
                      f"use a divisor of {batch // split}")
  if batch % process_count:
    raise ConfigError("train.batch_size", f"{batch} (global) does not split over the {process_count} processes",
                      f"use a multiple of {process_count}")


# A resumed run may change how long it trains, how it logs, checkpoints and samples, and on which mesh it runs
# (checkpoints restore onto any mesh); any other change means the workdir holds a different experiment.
RESUMABLE_PREFIXES = ("train.steps", "train.log_every", "train.max_nonfinite_steps", "train.microbatches",
                      "checkpoint.", "sample.",
                      "mesh.", "model.remat", "model.init_from", "first_stage.config")


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


# What sampling, evaluation, inpainting and export read from a trained model: with any of these changed they would
# run the weights as another model (e.g. v-prediction weights read as eps), and silently produce garbage.
INFERENCE_PREFIXES = ("family", "model.", "text.", "diffusion.schedule", "diffusion.timesteps", "diffusion.prediction",
                      "data.image_size", "data.channels", "data.num_classes", "masking.")


def check_workdir(config: ml_collections.ConfigDict, workdir: str, *, mode: str = "train") -> None:
  """Refuses to use a workdir whose saved config.json differs from `config` in a key that matters: to continue
  training, any key but the RESUMABLE ones; to use the trained model (every other mode), the INFERENCE ones that
  the saved config has."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = _flatten(json.load(f))
  current = _flatten(json.loads(config.to_json_best_effort()))
  # A key the run's code did not have yet is no change at the value that code behaved as: the schema's default.
  defaults = _flatten(json.loads(family_schema(config.family).to_json_best_effort())) if config.family in SCHEMAS else {}
  saved.update({k: v for k, v in current.items() if k not in saved and k in defaults and defaults[k] == v})
  if mode == "train":
    matters = lambda k: not k.startswith(RESUMABLE_PREFIXES)
    keys, fix = saved.keys() | current.keys(), "use a new --workdir, or pass --allow_config_change to continue that run"
  else:
    matters = lambda k: k.startswith(INFERENCE_PREFIXES) and not k.startswith(RESUMABLE_PREFIXES)
    keys, fix = saved.keys(), "pass the config it was trained with (its config.json), or --allow_config_change"
  changed = [k for k in sorted(keys) if saved.get(k) != current.get(k) and matters(k)]
  if changed:
    key, more = changed[0], f" (and {len(changed) - 1} more keys)" if len(changed) > 1 else ""
    raise ConfigError(key, f"is {current.get(key)!r}, but the run in --workdir={workdir} was trained with "
                      f"{saved.get(key)!r}{more}", fix + " with this config")

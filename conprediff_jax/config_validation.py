"""What every config shares, checked before anything is built or compiled. Each problem is a `ConfigError` whose
message is one line, `config.<key>: <what is wrong>; <the fix>`; main.py prints it as `error: ...`, exit status 2.

`families.validate` runs the whole check: the family's schema (its reference config's keys and value types:
`check_schema`), the shared choices and bounds below and the family's own (`check_values`), the rules of the data
(data/registry.py), of the family (`Family.check_config`) and of the conditioning (conditioning.py), the files
(`check_paths`), and the mesh and batch (parallel.py). `check_workdir` keeps a workdir to the experiment it holds.
"""

import difflib
import json
import math
import os
from collections.abc import Callable

import ml_collections

class ConfigError(ValueError):
  """A config problem, as one line: `config.<key>: <what is wrong>; <the fix>` (no key: a workdir's config.json)."""

  def __init__(self, key: str, problem: str, fix: str):
    self.key = key
    super().__init__(" ".join(f"{f'config.{key}: ' if key else ''}{problem}; {fix}".splitlines()))


# ------------------------------------------------------------------------------------------------------------------
# Keys and types, against a family's reference config.
# ------------------------------------------------------------------------------------------------------------------
_ACCEPTS = {int: (int,), float: (int, float), tuple: (tuple, list), list: (tuple, list)}  # by the default's type


def _fits(value, default) -> bool:
  # bool is an int subclass: refuse True where a number goes, and 1 where a flag goes.
  return default is None or (isinstance(value, _ACCEPTS.get(type(default), (type(default),)))
                             and isinstance(value, bool) == isinstance(default, bool))


def is_section(value) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, dict))


def _kind(value) -> str:
  name = type(value).__name__
  return ("an " if name[0] in "aeiou" else "a ") + name


def _show(value) -> str:
  return repr(value.to_dict() if is_section(value) and hasattr(value, "to_dict") else value)


def suggest(value, options, otherwise: str) -> str:
  close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
  return f"did you mean {close[0]!r}?" if close else otherwise


def check_schema(config, schema, prefix: str = "") -> None:
  """Every key of `schema` is in `config` with a value of its type (ints pass for floats, tuples and lists are
  interchangeable), and there are no other keys."""
  for key in config.keys():
    if key not in schema:
      raise ConfigError(prefix + key, "is not a config key",
                        "remove it, or " + suggest(key, list(schema.keys()), f"use one of {list(schema.keys())}"))
  for key, default in schema.items():
    path, value = prefix + key, config.get(key, None)
    if key not in config:
      raise ConfigError(path, "is missing", f"add it (the family's reference config sets {_show(default)})")
    if is_section(default):
      if not is_section(value):
        raise ConfigError(path, f"is {value!r}, not a section of keys", f"set its keys instead, e.g. {path}.<key>")
      check_schema(value, default, path + ".")
    elif not _fits(value, default):
      raise ConfigError(path, f"{value!r} is {_kind(value)}, not {_kind(default)}",
                        f"set {_kind(default)} like {_show(default)}")
    elif isinstance(default, (tuple, list)) and default:
      wrong = [v for v in value if not _fits(v, default[0])]
      if wrong:
        raise ConfigError(path, f"holds {wrong[0]!r}, which is {_kind(wrong[0])}, not {_kind(default[0])}",
                          f"give a tuple of {type(default[0]).__name__}s like {_show(default)}")


# ------------------------------------------------------------------------------------------------------------------
# Values: names that must be in a registry, numeric bounds. Each family adds its own (Family.CHOICES, .BOUNDS).
# ------------------------------------------------------------------------------------------------------------------
Bound = tuple[Callable[[float], bool], str]
POSITIVE: Bound = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Bound = (lambda v: v >= 0, ">= 0")
FRACTION: Bound = (lambda v: 0 <= v < 1, "in [0, 1)")

# The registries' names, spelled out so that checking needs no registry loaded (tests/test_config_validation.py
# keeps them in step): context/wasserstein.py and objective.py, train.py, inpainting/masks.py, text_encoder.py,
# evaluate.py.
MASKS = ("border", "box", "half", "lines", "strokes", "super_resolve")
# A key whose value is a tuple takes each of its entries from its choices.
CHOICES: dict[str, tuple] = {
    "model.dtype": ("bfloat16", "float32"),
    "context.solver": ("exact", "sinkhorn", "sorted"),
    "context.head_input": ("features", "features+denoised"),
    "context.targets": ("clean", "denoised"),
    "context.timestep_weighting": ("alpha_bar", "cutoff", "none", "snr"),
    "train.lr_schedule": ("constant", "cosine"),
    "inpaint.mask": MASKS,
    "eval.inpaint_masks": MASKS,
    "text.encoder": ("bytes", "precomputed"),
    "eval.metric": ("class_accuracy", "fd_digits", "fid", "kid", "kid_digits", "precision_digits", "recall_digits",
                    "reconstruction_mse"),
}
BOUNDS: dict[str, Bound] = {
    **dict.fromkeys(("context.weight", "context.num_projections", "context.latent_dim", "context.weight_warmup_steps",
                     "train.warmup_steps", "train.weight_decay", "train.max_nonfinite_steps", "eval.every_steps",
                     "text.depth", "text.embedding_dim", "sample.guidance_scale"), NON_NEGATIVE),
    **dict.fromkeys(("context.num_samples", "context.epsilon", "context.sinkhorn_iterations", "context.hidden_dim",
                     "context.snr_gamma", "train.steps", "train.batch_size", "train.microbatches",
                     "train.learning_rate", "train.grad_clip", "train.log_every", "checkpoint.every_steps",
                     "checkpoint.max_to_keep", "sample.num_images", "sample.batch_size", "sample.steps",
                     "text.max_length", "text.width", "text.num_heads", "inpaint.num_images", "inpaint.steps",
                     "inpaint.jump_length", "inpaint.resamples", "eval.num_samples", "eval.batch_size",
                     "eval.reference_samples"), POSITIVE),
    **dict.fromkeys(("train.ema_decay", "train.cond_dropout"), FRACTION),
    "context.position_fraction": (lambda v: 0 < v <= 1 and abs(round(1 / v) * v - 1) < 1e-6,
                                  "1/g for an integer g >= 1 (1.0, 0.5, 0.25, ...)"),
    "context.min_signal": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}
ABSENT = object()  # what `get` returns for a key the config lacks


def get(config, dotted: str):
  """The value at a dotted key, or ABSENT where the config has no such key."""
  for key in dotted.split("."):
    if not is_section(config) or key not in config:
      return ABSENT
    config = config[key]
  return config


def check_values(config, choices: dict[str, tuple], bounds: dict[str, Bound]) -> None:
  for key, options in choices.items():
    value = get(config, key)
    for entry in () if value is ABSENT else value if isinstance(value, (tuple, list)) else (value,):
      if entry not in options:
        raise ConfigError(key, f"{entry!r} is not one of {list(options)}", suggest(entry, options, "pick one of them"))
  for key, (test, requirement) in bounds.items():
    value = get(config, key)
    if value is not ABSENT and not (math.isfinite(value) and test(value)):
      raise ConfigError(key, f"{value!r} is not {requirement}", f"set a value {requirement}")


# ------------------------------------------------------------------------------------------------------------------
# Rules every family shares.
# ------------------------------------------------------------------------------------------------------------------
# A string key whose name ends so names a file (e.g. weights) that must exist when it is set.
PATH_SUFFIXES = ("_path", "_file", "_weights", "_stats")


def check_paths(config, prefix: str = "") -> None:
  for key, value in config.items():
    if is_section(value):
      check_paths(value, f"{prefix}{key}.")
    elif (key.endswith(PATH_SUFFIXES) and isinstance(value, str) and value
          and not os.path.exists(os.path.expanduser(value))):
      raise ConfigError(prefix + key, f"{value!r} does not exist", "point it at the file, or leave it empty")


# ------------------------------------------------------------------------------------------------------------------
# A workdir holds one experiment.
# ------------------------------------------------------------------------------------------------------------------
# A resumed run may change how long it trains, how it logs, checkpoints and samples, and on which mesh it runs
# (checkpoints restore onto any mesh); any other change means the workdir holds a different experiment.
RESUMABLE_PREFIXES = ("train.steps", "train.log_every", "train.max_nonfinite_steps", "train.microbatches",
                      "checkpoint.", "sample.", "mesh.", "model.remat", "model.init_from", "first_stage.config")
# What sampling, evaluation, inpainting and export read from a trained model: with any of these changed they would
# run the weights as another model (e.g. v-prediction weights read as eps), and silently produce garbage.
INFERENCE_PREFIXES = ("family", "model.", "text.", "diffusion.schedule", "diffusion.timesteps", "diffusion.prediction",
                      "diffusion.process",
                      "data.image_size", "data.channels", "data.num_classes", "masking.")


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def check_workdir(config, workdir: str, *, schema, mode: str = "train") -> None:
  """Refuses to use a workdir whose saved config.json differs from `config` in a key that matters: to continue
  training, any key but the RESUMABLE ones; to use the trained model (every other mode), the INFERENCE ones that
  the saved config has. `schema` is the family's reference config: a key the run's code did not have yet is no
  change at the value that code behaved as, its default."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      saved = _flatten(json.load(f))
  except (OSError, ValueError) as e:  # cut, emptied or bytes flipped
    raise ConfigError("", f"{path} is unreadable ({type(e).__name__}), so the run there cannot be compared with "
                      "this config", "restore it, or pass --allow_config_change to use the workdir as this config "
                      "says (training rewrites it)") from None
  current = _flatten(json.loads(config.to_json_best_effort()))
  defaults = _flatten(json.loads(schema.to_json_best_effort()))
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

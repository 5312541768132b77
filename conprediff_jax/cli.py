"""Command-line parsing shared by every program that takes a `--config` file (main.py, experiments/): one-line
errors and exit status 2 instead of tracebacks or usage dumps, and configs/default.py when no --config is given.

The config flag is defined with no default: ml_collections would load a default while the flag is being defined
and apply the command line's overrides to it there, at import, outside any error handling (a mistyped override
was a 40-line traceback). `parse` supplies the default instead.
"""

import importlib.util
import os
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "default.py")
USAGE_ERROR = 2


def define_config(help_text: str = "Configuration file"):
  return config_flags.DEFINE_config_file("config", None, f"{help_text} (default: configs/default.py).",
                                         lock_config=True)


def fail(message: str):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse(argv: list[str], config_flag, positional: int = 0) -> list[str]:
  """absl's parsing of `argv` (the config file `config_flag` names, configs/default.py by default); up to
  `positional` arguments that are not flags are returned after the program's name."""
  if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
  try:
    rest = flags.FLAGS(argv)
    config_flag.value.keys()  # a config file that failed to load raises only when first used
  except (KeyError, AttributeError) as e:  # ml_collections: an override names a key the config lacks
    fail(unknown_override(e, argv))
  except OSError as e:  # the config file itself
    fail(f"--config: {str(e).strip().splitlines()[-1].strip()}; pass a config file, e.g. --config=configs/smoke.py")
  except (flags.Error, ValueError, TypeError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")  # a config file's own error is the last line
  if len(rest) > 1 + positional:
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


def override(config, settings: dict, where: str):
  """A copy of `config` with each `dotted.key = value` of `settings` set; a key it lacks is a one-line error."""
  config = config.copy_and_resolve_references()
  for key, value in settings.items():
    *path, leaf = key.split(".")
    parent = config
    for part in path:
      parent = parent[part] if isinstance(parent, ml_collections.ConfigDict) and part in parent else None
    if not isinstance(parent, ml_collections.ConfigDict) or leaf not in parent:
      raise ValueError(f"{where}: {key!r} is not a config key; see configs/default.py for the keys")
    try:
      parent[leaf] = tuple(value) if isinstance(parent[leaf], tuple) else value
    except TypeError as e:
      raise ValueError(f"{where}: {key} = {value!r}: {e}") from None
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config a config file makes, named as --config names it: `path[:argument]` (configs/paper_kl.py:celebahq),
  the path relative to the current directory or to the repository. FileNotFoundError (one line) if there is none."""
  path, _, argument = spec.partition(":")
  found = next((p for p in (os.path.expanduser(path), os.path.join(REPO, path)) if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"config file {path!r} does not exist (nor under {REPO})")
  if REPO not in sys.path:  # config files import their bases as `configs.<name>`
    sys.path.append(REPO)
  module_spec = importlib.util.spec_from_file_location(f"_conprediff_config_{os.path.basename(found)[:-3]}", found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()

"""The config key reference, made from the families' reference configs (their schemas), their choices and bounds,
and the comments beside each key in the config files:

    python -m conprediff_jax.config_reference > docs/config.md

docs/config.md is this command's output; tests/test_docs.py checks that it still is.
"""

import os
import re
import sys

from conprediff_jax import cli, config_validation, families
from conprediff_jax.data import registry as data_registry

_ASSIGNMENT = re.compile(r"^\s*(?:config\.)?([a-z_]+\.[a-z_][a-z_.]*)\s*=\s*[^#]*#\s*(.+?)\s*$")


def _comments(files) -> dict[str, str]:
  """key -> the comment on the line that sets it, in `files` (configs/), later files winning."""
  out = {}
  for name in files:
    with open(os.path.join(cli.REPO, "configs", name), encoding="utf-8") as f:
      for line in f:
        found = _ASSIGNMENT.match(line)
        if found:
          out[found.group(1)] = found.group(2)
  return out


def _flatten(section, prefix=""):
  for key, value in section.items():
    if config_validation.is_section(value):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def _allowed(key: str, family: type[families.Family]) -> str:
  choices = {**config_validation.CHOICES, **data_registry.CHOICES, **family.CHOICES}
  bounds = {**config_validation.BOUNDS, **data_registry.BOUNDS, **family.BOUNDS}
  if key in choices:
    return " \\| ".join(f"`{c!r}`" for c in choices[key])
  return bounds[key][1] if key in bounds else ""


def _table(rows) -> list[str]:
  lines = ["| key | default | allowed | what |", "|---|---|---|---|"]
  for key, default, allowed, what in rows:
    lines.append(f"| `{key}` | `{default!r}` | {allowed} | {what.replace('|', chr(92) + '|')} |")
  return lines


def markdown() -> str:
  schemas = {name: dict(_flatten(cls.schema())) for name, cls in families.FAMILIES.items()}
  shared = [k for k, v in schemas["gaussian"].items() if all(s.get(k, object()) == v for s in schemas.values())]
  base = families.FAMILIES["gaussian"]
  comments = {name: _comments(dict.fromkeys([base.SCHEMA, "digits_vq.py", cls.SCHEMA]))
              for name, cls in families.FAMILIES.items()}
  lines = ["# Config keys", "",
           "Made by `python -m conprediff_jax.config_reference` from each family's reference config (its schema: "
           "every config of the family has exactly these keys, with values of these types) and the comments "
           "beside the keys in `configs/`; the checks behind \"allowed\" run before anything is built "
           "(`families.validate`). Keys that scripts rely on keep their names.", "",
           "## Every family", ""]
  lines += _table((k, schemas["gaussian"][k], _allowed(k, base), comments["gaussian"].get(k, "")) for k in shared)
  for name, cls in families.FAMILIES.items():
    rows = [(k, v, _allowed(k, cls), comments[name].get(k, "")) for k, v in schemas[name].items() if k not in shared]
    lines += ["", f"## `{name}` (`configs/{cls.SCHEMA}`)", ""] + _table(rows)
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.stdout.write(markdown())

"""The README and docs/ as a new user reads them: the README a front door (two commands first, at most 200 lines),
every link there, every `python -m` command naming a module, config file, mode and config keys that exist, and the
key reference the output of the command that makes it."""

import glob
import importlib.util
import os
import re
import shlex

import pytest

from conprediff_jax import cli, config_reference, config_validation
from tests.conftest import REPO

PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
MODES = ("train", "sample", "eval", "inpaint", "export", "compile")


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_the_readme_is_a_front_door():
  lines = _read(PAGES[0]).splitlines()
  assert len(lines) <= 200
  assert lines[:4] == ["```bash", "pip install -r requirements.txt && python -m conprediff_jax.main",
                       "pip install -r requirements-dev.txt && pip install --no-deps lpips==0.1.4 && python -m pytest -q tests", "```"]


def test_the_key_reference_is_the_output_of_its_command():
  assert _read(os.path.join(REPO, "docs", "config.md")) == config_reference.markdown(), (
      "docs/config.md is stale: python -m conprediff_jax.config_reference > docs/config.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_links_point_at_files_that_exist(page):
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(page)):
    if not target.startswith(("http://", "https://")):
      assert os.path.exists(os.path.join(os.path.dirname(page), target)), f"{page}: {target}"


def _commands(text: str):
  """Each `python -m <module> ...` command line of a page's code blocks and inline code, continuation lines joined."""
  blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, re.S) + re.findall(r"`(python -m [^`]+)`", text)
  for block in blocks:
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("  #")[0].strip()
      if line.startswith("python -m "):
        yield line


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_commands_name_modules_configs_modes_and_keys_that_exist(page):
  for command in _commands(_read(page)):
    try:
      words = shlex.split(command)
    except ValueError:
      words = command.split()
    module = words[2]
    assert importlib.util.find_spec(module) is not None, f"{page}: {command}: no module {module}"
    if module != "conprediff_jax.main":
      continue
    flags = dict(w.split("=", 1) for w in words[3:] if w.startswith("--") and "=" in w)
    spec = flags.get("--config", "configs/default.py")
    if "<" in spec:  # a placeholder the reader fills in
      continue
    config = cli.load_config_file(spec)
    assert flags.get("--mode", "train") in MODES or "<" in flags.get("--mode", ""), f"{page}: {command}"
    for flag in flags:
      if flag.startswith("--config."):
        key = flag[len("--config."):]
        assert config_validation.get(config, key) is not config_validation.ABSENT, f"{page}: {command}: {flag}"

"""The package's layers point only down (DESIGN.md, "Layout"): every import, also one inside a function, goes to a
module of the same layer or a lower one, and no modules import each other in a circle.

The layer order is written here, once. A module not named below fails the test until it is given a layer."""

import ast
import os

import pytest

from tests.conftest import REPO

PACKAGE = "conprediff_jax"
# Bottom to top. A name covers the module and, if it is a package, everything in it; the longest name matches.
LAYERS = [
    # The ground: no model, no family. Devices and meshes, checkpoint files, the config schema's shared checks.
    ("base", ["", "hardware", "parallel", "checkpointing", "images", "metric_writers", "workdir_lock", "cli", "memory_report",
              "hlo_profile",
              "atomic_files",
              "config_validation", "conditioning"]),
    # What families are made of: networks, the context plug-in, processes, data, conditioning requests, masks and
    # inpainting algorithms, metrics, the diffusers layout of our networks' weights.
    ("parts", ["models", "context", "diffusion", "data", "sample_requests", "inpainting.masks", "inpainting.repaint",
               "inpainting.mask_conditioning", "evaluation"]),
    ("families", ["families"]),
    # Inference from a family's weights alone.
    ("inference", ["sampling", "sample_files", "evaluate", "inpainting.run", "inpainting"]),
    # PyTorch formats, above the families they read.
    ("pytorch", ["export"]),
    ("train", ["train", "compile_report"]),
    ("entry", ["main", "convert", "config_reference", "experiments"]),
]


def _modules() -> dict[str, str]:
  found = {}
  for folder, _, files in os.walk(os.path.join(REPO, PACKAGE)):
    for f in files:
      if f.endswith(".py"):
        name = os.path.relpath(os.path.join(folder, f), REPO)[:-3].replace(os.sep, ".")
        found[name.removesuffix(".__init__")] = os.path.join(folder, f)
  return found


def _imports(modules: dict[str, str], name: str) -> set[str]:
  """The package's modules that `name` imports anywhere in its file (`from a import b` imports a.b if it is one)."""
  out = set()
  for node in ast.walk(ast.parse(open(modules[name], encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = name.split(".") if modules[name].endswith("__init__.py") else name.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    for target in targets:
      while target and target not in modules:
        target = target.rpartition(".")[0]
      if target and target != name:
        out.add(target)
  return out


def layer_of(module: str) -> int:
  """The index of `module`'s layer in LAYERS."""
  relative = module.removeprefix(PACKAGE).removeprefix(".")
  best = None
  for index, (_, names) in enumerate(LAYERS):
    for n in names:
      covers = relative == n or relative.startswith(n + ".") if n else relative == ""
      if covers and (best is None or len(n) > len(best[1])):
        best = (index, n)
  if best is None:
    raise AssertionError(f"{module} has no layer: add it to tests/test_layers.py LAYERS")
  return best[0]


def test_every_import_points_down_or_across():
  modules = _modules()
  upward = []
  for name in sorted(modules):
    for target in sorted(_imports(modules, name)):
      if layer_of(target) > layer_of(name):
        upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
  assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle():
  modules = _modules()
  graph = {name: _imports(modules, name) for name in modules}
  index, low, stack, on, circles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert not circles, "modules in a circle: " + "; ".join(", ".join(c) for c in circles)


@pytest.mark.parametrize("module, layer", [("conprediff_jax.families.gaussian", "families"),
                                           ("conprediff_jax.inpainting.repaint", "parts"),
                                           ("conprediff_jax.inpainting.run", "inference"),
                                           ("conprediff_jax", "base")])
def test_layer_of_takes_the_longest_name(module, layer):
  assert LAYERS[layer_of(module)][0] == layer

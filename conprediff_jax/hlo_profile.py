"""Where a compiled TPU program's time goes, by the TPU compiler's own estimate: each scheduled instruction of the
optimised module carries `estimated_cycles` in its backend config; this sums them by the JAX operation that made
the instruction (the last part of its `op_name`, "(backward)" when it came from differentiation) and by the line
of the project's code it came from (the innermost frame of its stack trace in a `conprediff_jax/` file), a loop's
body counted as often as the loop runs (`known_trip_count`).

Read it as shares: the cycles are the compiler's per-instruction estimates before overlap, so their sum is not the
step time (issue 27; docs/scaling.md). GPU and CPU programs carry no such estimate: `profile` returns None.

`collectives` sums, by kind, the bytes of the whole array each collective of the per-chip program works on (the
gathered array, the reduced one, what a permute receives, the array a reduce-scatter reduces), loops counted as they
run: the traffic between chips that a roofline of FLOPs and HBM bytes does not see.

`memory_space_copies` sums the arrays that memory-space assignment moves asynchronously (copy-start, slice-start)
into and out of a memory other than HBM, by the memory space their layout names (`S(n)`): on a v4, S(3), its 128
MiB of CMEM; on v5e, v5p and v6e chips, S(1). XLA's `bytes accessed` does not tell the memories apart: on a v4,
a compiler's choice to stage more in CMEM reads as more traffic (docs/scaling.md, "What a v4's byte count holds").
"""

import collections
import json
import math
import re

PACKAGE = "conprediff_jax/"
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
# An estimate at the int64 limit is the compiler's "unknown" (a VQ codebook's scatter-add on a v5p, 2**63 - 1 cycles),
# not a figure: summed, it made the whole step one instruction.
_UNKNOWN_CYCLES = 2**62
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_SHAPE = re.compile(r"\b(pred|bf16|[subf]\d+)\w*\[([\d,]*)\]")  # f8e4m3fn: "f8"
_COLLECTIVE = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.*?) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute|ragged-all-to-all)(-done)?\(")
_REDUCE_SCATTER = re.compile(r"calls=%(all-reduce-scatter[\w.\-]*)")
_ASYNC_COPY = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = \((.*)\) (copy-start|slice-start)\(")
_ARRAY = re.compile(_SHAPE.pattern + r"(?:\{[^}]*\})?")  # an array with its layout, where a memory space is named
_SPACE = re.compile(r"S\((\d+)\)\}$")
_CALLED = re.compile(r"(body|condition|to_apply)=%?([\w.\-]+)|(branch_computations)=\{([^}]*)\}")


def _tables(text: str) -> dict[str, dict[int, str]]:
  """The module's FileNames, FunctionNames, FileLocations and StackFrames tables, by id."""
  tables, current = {}, None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = tables.setdefault(line, {})
    elif current is not None and re.match(r"^\d+ ", line):
      key, value = line.split(" ", 1)
      current[int(key)] = value
    elif current is not None and line.strip() == "":
      current = None
  return tables


def _where(frame: int, tables) -> str:
  """`file:line (function)` of the innermost frame of `frame`'s stack in the package, or "" if none is."""
  frames, locations = tables.get("StackFrames", {}), tables.get("FileLocations", {})
  seen = set()
  while frame and frame in frames and frame not in seen:
    seen.add(frame)
    fields = dict(re.findall(r"(\w+)=(\d+)", frames[frame]))
    location = dict(re.findall(r"(\w+)=(\d+)", locations.get(int(fields["file_location_id"]), "")))
    path = json.loads(tables["FileNames"].get(int(location.get("file_name_id", 0)), '""'))
    if PACKAGE in path:
      function = json.loads(tables["FunctionNames"].get(int(location["function_name_id"]), '""'))
      return f"{path[path.rindex(PACKAGE):]}:{location['line']} ({function})"
    frame = int(fields["parent_frame_id"]) - 1  # printed one above the parent's id; 0: the outermost frame
  return ""


def _source(line: str, tables) -> str:
  """Where an instruction `line` came from: `file:line (function)` in the package, or "(outside conprediff_jax)"."""
  frame = _FRAME.search(line)
  return (frame and _where(int(frame.group(1)), tables)) or "(outside conprediff_jax)"


def sources(hlo_text: str) -> dict[str, str]:
  """Each instruction's name -> where it came from (as `profile` files it): on a CPU, whose modules carry no cycle
  estimates, a `jax.profiler` trace names the instructions it ran, and this maps them to the code."""
  tables, names = _tables(hlo_text), {}
  for lines in _computations(hlo_text)[0].values():
    for line in lines:
      found = _INSTRUCTION.match(line)
      if found:
        names[found.group(1)] = _source(line, tables)
  return names


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
  """Each computation's instruction lines, and the entry computation's name."""
  computations, entry, current = {}, "", None
  for line in text.splitlines():
    found = _COMPUTATION.match(line)
    if found:
      current = computations.setdefault(found.group(1), [])
      entry = found.group(1) if line.startswith("ENTRY") else entry
    elif line == "}":
      current = None
    elif current is not None:
      current.append(line)
  return computations, entry


def _runs(computations: dict[str, list[str]], entry: str) -> dict[str, int]:
  """How many times each scheduled computation runs per program run: the entry once, a while loop's body by its
  trip count and its condition once more, a call's or a conditional's branches as often as the caller (fusions are not
  followed: their instructions are estimated as one)."""
  runs, pending = {entry: 1}, [entry]
  while pending:
    name = pending.pop()
    for line in computations.get(name, ()):
      if " fusion(" in line:
        continue
      trips = _TRIPS.search(line)
      trips = int(trips.group(1)) if trips else 1
      for role, called, branches, listed in _CALLED.findall(line):
        times = runs[name] * {"body": trips, "condition": trips + 1}.get(role or branches, 1)
        for callee in (c.strip().lstrip("%") for c in (called or listed).split(",")):
          if callee in computations and callee not in runs:
            runs[callee] = times
            pending.append(callee)
  return runs


def profile(hlo_text: str, top: int = 8) -> dict | None:
  """{"total_cycles", "by_op": [[op, share], ...], "by_line": [[file:line (function), share], ...]} of the `top`
  largest, "kernels_not_estimated": the runs of Pallas kernels (tpu_custom_call), which the compiler gives no
  cycle estimate, and "unknown_estimates": the runs of instructions whose estimate is the compiler's "unknown"; neither
  is in the total or the shares. None where the module carries no estimates."""
  computations, entry = _computations(hlo_text)
  tables, by_op, by_line, total = _tables(hlo_text), collections.Counter(), collections.Counter(), 0
  kernels = unknown = 0
  for name, times in _runs(computations, entry).items():
    for line in computations[name]:
      cycles = _CYCLES.search(line)
      if not cycles:
        kernels += times * ('custom_call_target="tpu_custom_call"' in line)
        continue
      if int(cycles.group(1)) >= _UNKNOWN_CYCLES:
        unknown += times
        continue
      spent = int(cycles.group(1)) * times
      total += spent
      op_name = _OP_NAME.search(line)
      op_name = op_name.group(1) if op_name else ""
      op = op_name.rsplit("/", 1)[-1] or "(unnamed)"
      by_op[op + (" (backward)" if "transpose(" in op_name else "")] += spent
      by_line[_source(line, tables)] += spent
  if not total:
    return None
  share = lambda counter: [[k, round(v / total, 4)] for k, v in counter.most_common(top)]
  return {"total_cycles": total, "by_op": share(by_op), "by_line": share(by_line), "kernels_not_estimated": kernels,
          "unknown_estimates": unknown}


def _bytes(shapes: str) -> int:
  """Bytes of the arrays in an HLO result type (one array, or a tuple of them; layouts ignored)."""
  total = 0
  for dtype, dims in _SHAPE.findall(shapes):
    bits = {"pred": 8, "bf16": 16}.get(dtype) or int(dtype[1:])
    total += math.prod(int(d) for d in dims.split(",") if d) * bits // 8
  return total


def collectives(hlo_text: str) -> dict[str, int]:
  """{kind: bytes per program run} of the collectives of a per-chip module, times the runs of their computations:
  each one's result (an asynchronous one's at its `-done`); a TPU's reduce-scatter, a fusion around an all-reduce of
  the whole array (`calls=%all-reduce-scatter...`), as that array. {} where there are none."""
  computations, entry = _computations(hlo_text)
  moved = collections.Counter()
  for name, times in _runs(computations, entry).items():
    for line in computations[name]:
      found, fused = _COLLECTIVE.match(line), _REDUCE_SCATTER.search(line)
      if found:
        moved[found.group(2)] += _bytes(found.group(1)) * times
      elif fused and " fusion(" in line:
        for reduced in filter(None, map(_COLLECTIVE.match, computations.get(fused.group(1), ()))):
          moved["reduce-scatter"] += _bytes(reduced.group(1)) * times
  return dict(moved)


def memory_space_copies(hlo_text: str) -> dict[str, int]:
  """{"into S(n)" | "out of S(n)": bytes per program run} of the asynchronous copies and slices between HBM and
  memory space n (a copy-start's result is (destination, source, context), a slice-start's ((source), destination,
  context)), times the runs of their computations; the bytes are the destination's, as its shape has them. {} where
  there are none."""
  computations, entry = _computations(hlo_text)
  moved = collections.Counter()
  for name, times in _runs(computations, entry).items():
    for line in computations[name]:
      found = _ASYNC_COPY.match(line)
      if not found:
        continue
      arrays = [a.group(0) for a in _ARRAY.finditer(found.group(1))]
      destination, source = arrays[:2] if found.group(2) == "copy-start" else arrays[1::-1]
      into, out_of = _SPACE.search(destination), _SPACE.search(source)
      if into:
        moved[f"into S({into.group(1)})"] += _bytes(destination) * times
      elif out_of:
        moved[f"out of S({out_of.group(1)})"] += _bytes(destination) * times
  return dict(moved)

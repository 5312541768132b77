"""--mode=compile (compile_report.py, hardware.py): tiny configs compiled for TPU slices by libtpu on this CPU.

What could fail: the slice names and their one-line errors, the chip table against the compiler's own verdicts, the
report's keys and what they count (the inference graph without the context head, fsdp really splitting the state
per chip), a program that cannot fit reported as such, multi-slice meshes, and latent and token configs that
compile with no trained first stage. The paper configs at full size are a benchmark (docs/scaling.md)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conprediff_jax import compile_report, config_validation, families, hardware, parallel
from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.xdist_group("test_compile_report")  # one worker: libtpu is loaded once per process


@pytest.mark.parametrize("name, chip, chips, shape", [("v4-8", "v4", 4, (2, 2, 1)), ("v4-32", "v4", 16, (2, 2, 4)),
                                                      ("v5p-128", "v5p", 64, (4, 4, 4)), ("v5e-16", "v5e", 16, (4, 4)),
                                                      ("v5litepod-8", "v5e", 8, (2, 4)), ("v6e-256", "v6e", 256, (16, 16))])
def test_slice_names_as_the_cloud_gives_them(name, chip, chips, shape):
  slice_ = hardware.parse_topology(name)
  assert (slice_.chip.name, slice_.chips, slice_.shape) == (chip, chips, shape)
  assert slice_.topology == f"{chip}:{'x'.join(map(str, shape))}"


@pytest.mark.parametrize("name", ["v5p-12", "v4-4", "v7x-8", "a100-8", "v5e", "v6e-3", "5p-8"])
def test_a_slice_that_does_not_exist_is_one_line_naming_the_valid_forms(name):
  with pytest.raises(ValueError) as e:
    hardware.parse_topology(name)
  message = str(e.value)
  assert "\n" not in message and name in message and "v5p-N" in message and "v5e-N" in message


def _refusal(chip: str) -> dict:
  """The compiler's verdict on a program that cannot fit one chip of `chip`: 64 GiB per chip in one argument."""
  devices = hardware.abstract_devices(hardware.parse_topology(f"{chip}-8" if chip in ("v4", "v5p") else f"{chip}-4"))
  mesh = parallel.make_mesh((-1, 1), ("data", "fsdp"), devices=devices)
  huge = jax.ShapeDtypeStruct((len(devices) * 2**34,), jnp.float32, sharding=parallel.batch_sharding(mesh))
  return compile_report.compile_program(jax.jit(lambda x: x * 2).lower(huge)).refusal


@pytest.mark.parametrize("chip", sorted(hardware.CHIPS))
def test_the_chip_table_holds_what_the_compiler_allows_per_chip(chip):
  refusal = _refusal(chip)
  # The compiler prints GiB to two decimals; the table holds the same figure in bytes.
  assert refusal["available_bytes"] == pytest.approx(hardware.CHIPS[chip].compiler_hbm_bytes, rel=1e-3)
  assert refusal["required_bytes"] >= 64 * hardware.GIB


def test_the_compiler_counts_arguments_with_temporaries():
  """Why `fits` counts every part of memory_analysis: a program with 12 GiB of temporaries fits a v5e chip beside a
  2 GiB argument and is refused beside an 8 GiB one, as "HLO temporaries" of their sum."""
  mesh = parallel.make_mesh((-1, 1), ("data", "fsdp"), devices=hardware.abstract_devices(hardware.parse_topology("v5e-4")))
  x = jax.ShapeDtypeStruct((40000, 256), jnp.float32, sharding=parallel.replicated(mesh))
  f = jax.jit(lambda big, x: big.sum() + jnp.sort(x @ x.T, axis=0)[-1].sum(), keep_unused=True)
  programs = {}
  for gib in (2, 8):
    big = jax.ShapeDtypeStruct((gib * 2**28,), jnp.float32, sharding=parallel.replicated(mesh))
    programs[gib] = compile_report.compile_program(f.lower(big, x))
  temp = programs[2].memory["temp"]
  assert 11 * hardware.GIB < temp < hardware.CHIPS["v5e"].compiler_hbm_bytes and programs[2].refusal is None
  assert programs[8].refusal["required_bytes"] == pytest.approx(temp + 8 * hardware.GIB, rel=0.01)


def _compile(tmp_path, *flags, check=True):
  """`--mode=compile` in a fresh process, as a user runs it: (report, stdout, stderr)."""
  out = subprocess.run([sys.executable, "-m", "conprediff_jax.main", "--mode=compile", f"--workdir={tmp_path}",
                        *flags], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  reports = sorted(p for p in os.listdir(tmp_path) if p.startswith("compile_")) if os.path.isdir(tmp_path) else []
  report = json.loads((tmp_path / reports[-1]).read_text()) if reports and out.returncode == 0 else None
  return report, out.stdout, out.stderr


def test_compile_for_a_slice_reports_what_the_compiler_says(tmp_path):
  report, stdout, stderr = _compile(tmp_path, "--config=configs/smoke.py", "--topology=v5e-4")
  for key in ("topology", "chips", "hosts", "mesh", "params_trainable", "params_inference", "hbm_peak_bytes",
              "hbm_capacity_bytes", "fits", "flops_per_step", "bytes_accessed", "predicted_step_seconds",
              "predicted_mfu", "images_per_second", "hours_to_train_steps", "sampler", "memory_space_copy_bytes",
              "libtpu_init_args"):
    assert key in report, key
  assert (report["topology"], report["chips"], report["hosts"], report["mesh"]) == ("v5e-4", 4, 1,
                                                                                   {"data": 4, "fsdp": 1})
  assert report["fits"] and report["sampler"]["fits"]
  m = report["memory"]
  assert report["hbm_peak_bytes"] == m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]
  assert 0 < report["predicted_mfu"] < 1 and report["predicted_step_seconds"] >= report["roofline_seconds"] * 0.999
  assert report["upper_bounds"] == (report["time_source"] != "cost model")
  assert report["flops_per_step"] > 0 and report["bytes_accessed"] > 0
  profile = report["where_the_time_goes"]  # the compiler's cycle estimates, by operation and by our lines
  assert profile["total_cycles"] > 0 and 0 < sum(share for _, share in profile["by_op"]) <= 1
  assert any("conv_general_dilated" in op for op, _ in profile["by_op"])
  assert any(line.startswith("conprediff_jax/models/unet.py:") for line, _ in profile["by_line"])
  assert "time by operation" in stdout
  assert profile["kernels_not_estimated"] == 2 and "runs of Pallas kernels" in stdout  # the head's two kernels
  assert report["collective_bytes"]["all-reduce"] > 0 and "collectives / chip / step" in stdout  # the gradients
  # The inference graph is the model alone: what a config without the context head has.
  no_head = tiny_config()
  no_head.context.weight = 0.0
  from conprediff_jax import families, train  # pylint: disable=g-import-not-at-top
  _, params, _ = families.abstract_model(families.get(no_head))
  assert report["params_inference"] == train.param_count(params)
  assert report["params_trainable"] == report["params_inference"] + report["params_context_head"]
  assert report["params_context_head"] > 0
  assert "fits" in stdout and "wrote" in stdout
  # What libtpu prints when it looks for a TPU it will not find: nothing of it reaches the user.
  assert "TPU_ACCELERATOR_TYPE" not in stderr and "worker hostname" not in stderr, stderr


def test_a_config_that_cannot_fit_is_reported_with_the_compilers_numbers():
  config = tiny_config()
  config.train.batch_size, config.data.image_size, config.eval.batch_size = 8192, 64, 4
  report = compile_report.report(config, "v5e-4", hardware.abstract_devices(hardware.parse_topology("v5e-4")))
  assert report["fits"] is False and "DOES NOT FIT" in compile_report.table(report)
  assert report["hbm_peak_bytes"] > report["hbm_capacity_bytes"] == hardware.CHIPS["v5e"].compiler_hbm_bytes
  assert "predicted_step_seconds" not in report  # no time for a program that does not exist
  assert report["sampler"]["fits"]


@pytest.mark.parametrize("flags, fragment", [
    (["--topology=v5p-12"], "no v5p slice of 12"),
    (["--topology=tpu-8"], "is not a TPU slice"),
    (["--num_slices=2"], "--num_slices needs --topology"),
    (["--topology=v5e-4", "--config.train.batch_size=6"], "config.train.batch_size"),
])
def test_bad_topologies_and_configs_are_one_line(tmp_path, flags, fragment):
  _, _, stderr = _compile(tmp_path, "--config=configs/smoke.py", *flags, check=False)
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], stderr[-2000:]
  assert "Traceback" not in stderr


def _target_on_v5p_8(fsdp: int, **sample) -> compile_report.Target:
  """A small UNet (with `sample` settings) on a v5p-8 (4 chips), its state split `fsdp` ways."""
  config = tiny_config()
  config.model.channels = 48  # 3x3 kernels large enough to be split (parallel.MIN_SHARDED_SIZE)
  config.mesh.shape = (4 // fsdp, fsdp)
  config.sample.update(sample)
  return compile_report.prepare(config, "v5p-8", hardware.abstract_devices(hardware.parse_topology("v5p-8")))


def _train_step_on_v5p_8(fsdp: int) -> tuple[compile_report.Program, compile_report.Target]:
  """The small UNet's train step compiled for a v5p-8 split `fsdp` ways, and its target."""
  target = _target_on_v5p_8(fsdp)
  return compile_report.compile_train_step(target), target


def test_fsdp_splits_the_optimiser_state_and_gathers_the_kernels():
  (whole, target), (split, split_target) = _train_step_on_v5p_8(1), _train_step_on_v5p_8(4)
  expected_whole, expected_split = (compile_report.shard_bytes(t.state) for t in (target, split_target))
  # The compiled step takes the state as the shardings lay it out (a TPU pads each array to its tiles: more bytes,
  # never fewer; the batch and key come with it), and fsdp splits parameters, EMA and both Adam moments of every
  # large kernel.
  assert expected_split < 0.5 * expected_whole
  assert expected_whole <= whole.memory["argument"] and expected_split <= split.memory["argument"]
  assert split.memory["argument"] < 0.5 * whole.memory["argument"]
  # The collectives the report counts: split over `data` alone every chip holds every kernel and only the gradients
  # are summed across chips; split over `fsdp`, each kernel is gathered once a step (in bf16, as the UNet computes:
  # parallel.compute_shardings), and its gradient summed (float32) across chips to its shards.
  kernels = sum(x.size for x in jax.tree.leaves(target.abstract_state["params"])
                if x.size >= parallel.MIN_SHARDED_SIZE)
  assert "all-gather" not in whole.collectives and whole.collectives["all-reduce"] > 4 * kernels
  assert 2 * kernels <= split.collectives["all-gather"] < 1.2 * 2 * kernels, split.collectives
  assert split.collectives["reduce-scatter"] + split.collectives["all-reduce"] >= 4 * kernels, split.collectives


def test_the_sampler_gathers_weights_split_over_fsdp_once():
  """The sampler takes the EMA weights as the state keeps them, split over fsdp, and gathers each kernel once per
  call (in bf16, as the UNet computes): left to the partitioner it kept some kernels split and moved activations to
  them (collective-permutes), as it did in the train step."""
  target = _target_on_v5p_8(4, steps=16)
  sampler = compile_report.compile_sampler(target, 8)
  kernels = sum(x.size for x in jax.tree.leaves(target.abstract_state["ema"]) if x.size >= parallel.MIN_SHARDED_SIZE)
  assert 2 * kernels <= sampler.collectives["all-gather"] < 1.2 * 2 * kernels, sampler.collectives
  assert "collective-permute" not in sampler.collectives and "all-to-all" not in sampler.collectives


def test_microbatches_add_the_parts_flops_but_not_their_collectives_twice():
  """XLA's cost analysis counts the accumulation loop's body once, so k parts add the part's FLOPs and bytes k - 1
  more times; hlo_profile counts the loop as it runs, so the step's collectives are already every part's."""
  memory = {"argument": 1, "output": 1, "alias": 1, "temp": 1, "generated_code": 1}
  step = compile_report.Program(memory, 10.0, 100.0, None, collectives={"all-reduce": 7})
  part = compile_report.Program(memory, 4.0, 40.0, None, collectives={"all-reduce": 7, "all-gather": 3})
  config = tiny_config()
  config.train.microbatches = 3
  figures = compile_report._train_figures  # pylint: disable=protected-access
  out = figures(step, part, config.train, hardware.CHIPS["v5e"], {"chips": 4})
  assert (out["flops_per_step"], out["bytes_accessed"]) == (10.0 + 2 * 4.0, 100.0 + 2 * 40.0)
  assert out["collective_bytes"] == {"all-reduce": 7}


def test_a_v4_program_staged_in_cmem_names_the_flag_that_lets_its_cost_model_answer():
  memory = {"argument": 1, "output": 1, "alias": 1, "temp": 1, "generated_code": 1}
  step = compile_report.Program(memory, 1e12, 1e10, -456.9, collectives={}, copies={"into S(3)": 5 * 10**8})
  config = tiny_config()
  r = {"topology": "v4-8", "chips": 4, "chip": "v4", "hosts": 1, "mesh": {"data": 4}, "params_trainable": 1,
       "params_inference": 1, "batch_size": 8, "microbatches": 1, "hbm_capacity_bytes": 30 * 2**30,
       "sampler": {"batch": 8, "hbm_peak_bytes": 4, "fits": True}}
  figures = compile_report._train_figures  # pylint: disable=protected-access
  r.update(figures(step, None, config.train, hardware.CHIPS["v4"], r))
  text = compile_report.table(r)
  assert r["upper_bounds"] and "into S(3) 0.5 GB" in text and compile_report.CMEM_OFF in text
  r["memory_space_copy_bytes"] = {}  # no CMEM staging: no flag to name
  assert compile_report.CMEM_OFF not in compile_report.table(r)


def test_the_data_axis_of_a_multi_slice_job_spans_the_slices():
  devices = hardware.abstract_devices(hardware.parse_topology("v5p-8"), num_slices=2)
  assert len(devices) == 8 and hardware.hosts(devices) == 2 and parallel.num_slices(devices) == 2
  mesh = parallel.make_mesh((-1, 2), ("data", "fsdp"), devices=devices)
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert mesh.shape["data"] == 4
  assert np.all(slice_of[:2] == slice_of[0, 0]) and np.all(slice_of[2:] != slice_of[0, 0])  # fsdp within a slice
  config = tiny_config()
  config.mesh.shape = (1, 8)  # a data axis of one device cannot span two slices
  with pytest.raises(config_validation.ConfigError, match="slices"):
    families.validate(config, num_devices=8, process_count=2, num_slices=2, files=False)


@pytest.mark.parametrize("family", ["gaussian", "gaussian_dit", "masked"])
def test_latent_and_token_configs_compile_without_a_trained_first_stage(tmp_path, family):
  """The first stage's shapes come from the config that would train it (config.first_stage.config)."""
  config = tiny_config(family, tokenizer_workdir=str(tmp_path / "no_tokenizer_here"))
  config.data.image_size = 16  # the digits' first stages' size
  if family.startswith("gaussian"):  # latent diffusion on the KL autoencoder configs/digits_kl.py would train
    config.first_stage.update(workdir=str(tmp_path / "no_autoencoder_here"), config="configs/digits_kl.py")
  else:
    config.first_stage.config = "configs/digits_vq.py"
  with pytest.raises(config_validation.ConfigError, match="first_stage.workdir"):  # training still needs one
    families.validate(config, num_devices=4)
  families.validate(config, num_devices=4, files=False)
  target = compile_report.prepare(config, "v5e-4", hardware.abstract_devices(hardware.parse_topology("v5e-4")))
  assert target.exp.first_stage.source == "shapes only"
  step = compile_report.compile_train_step(target)
  assert step.refusal is None and step.flops > 0
  assert not os.path.exists(tmp_path / "no_tokenizer_here") and not os.path.exists(tmp_path / "no_autoencoder_here")


def test_h100_names_and_the_gpu_compiler_missing_is_one_line(tmp_path):
  """h100-N: one host's 1-8 GPUs or whole hosts of 8. XLA's GPU compiler is an optional install
  (requirements-gpu-compile.txt): without it, one line saying what to install."""
  assert hardware.parse_topology("h100-8").chips == 8 and hardware.parse_topology("h100-32").chips == 32
  with pytest.raises(ValueError, match="neither one host's"):
    hardware.parse_topology("h100-12")
  plugin = importlib.util.find_spec("jax_plugins") and importlib.util.find_spec("jax_plugins.xla_cuda12")
  if not plugin:  # the test environment's case (requirements-dev.txt); with it, docs/scaling.md has an h100-8 row
    _, _, stderr = _compile(tmp_path, "--config=configs/smoke.py", "--topology=h100-8", check=False)
    assert stderr.strip().splitlines()[-1].startswith("error: --topology=h100-8: the GPU compiler is not available")
    assert "requirements-gpu-compile.txt" in stderr

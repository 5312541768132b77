"""One trainer for every model family: build, shard, restore, step, log, checkpoint, sample.

The family (config.family, see families/base.py) says how its model is built, what its loss is and how it samples;
this file knows nothing else of it. The compiled step is a pure function of arrays,
`(state, batch, base_key, first_stage_weights) -> (state, metrics)`: NNX modules are split into a static graph
definition and plain parameter dicts at the jit boundary, and every random number is derived from (seed, step), so
a resumed run computes exactly what an uninterrupted one would have.

Train state (a plain pytree, saved whole by Orbax):
  step         int32 scalar, the number of updates applied
  params       {"model": ..., "context": ..., "auxiliary": ...}   "context" only while config.context.weight > 0;
               "auxiliary" only for a family with a training-only module (a first stage's discriminator)
  ema          the model's inference weights: its parameters exponentially averaged, plus its buffers (statistics
               its loss updates, e.g. a VQ codebook) as they are. Sampling, evaluation and export read only this.
  opt_state    optax state over `params`
  nonfinite    int32, consecutive steps whose loss or gradient was not finite (those updates are skipped)

A frozen first stage (a tokenizer) is not part of the state: it is loaded once per run and passed to the step as
its own argument, neither optimised nor re-saved.
"""

import contextlib
import dataclasses
import functools
import os
import signal
import time
from typing import Any, Callable

from absl import logging
from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from conprediff_jax import atomic_files
from conprediff_jax import checkpointing
from conprediff_jax import data as data_lib
from conprediff_jax import export
from conprediff_jax import families
from conprediff_jax import images as images_lib
from conprediff_jax import memory_report
from conprediff_jax import parallel
from conprediff_jax import sample_files
from conprediff_jax import sampling
from conprediff_jax import workdir_lock
from conprediff_jax.metric_writers import MetricWriter, read_jsonl


# ------------------------------------------------------------------------------------------------------------------
# Experiment: the family, its model's graph, the optional context head and the optimiser, all static.
# ------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict
  family: families.Family
  model_def: nnx.GraphDef
  param_shapes: dict   # the model's nnx.Param tree (ShapeDtypeStructs): the part of `ema` that is averaged
  buffer_shapes: dict  # its buffers (families.BUFFERS), carried in `ema` as they are; {} for most models
  first_stage: families.FirstStage | None
  head_def: nnx.GraphDef | None
  context_term: Callable[..., Any] | None  # (head, loss output, key, step) -> (weighted, unweighted) scalars
  auxiliary_def: nnx.GraphDef | None       # the family's training-only module (Family.auxiliary), or None
  tx: optax.GradientTransformation

  @property
  def first_stage_def(self) -> nnx.GraphDef | None:
    return None if self.first_stage is None else self.first_stage.graphdef


def _context_plugin():
  # Imported when used: the context package is a training-time plug-in that nothing at inference imports.
  from conprediff_jax.context import objective  # pylint: disable=g-import-not-at-top
  return objective


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(t) -> optax.Schedule:
  """Linear warm-up to `t.learning_rate`, then constant, or a cosine decay to 0 at `t.steps`."""
  warmup = max(t.warmup_steps, 1)
  if t.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"config.train.lr_schedule must be one of {list(LR_SCHEDULES)}, got {t.lr_schedule!r}")
  if t.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, max(t.steps, warmup + 1))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, t.learning_rate, warmup), optax.constant_schedule(t.learning_rate)], [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
  t = config.train
  schedule = learning_rate_schedule(t)
  return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=t.weight_decay))


def with_auxiliary(tx: optax.GradientTransformation, auxiliary_tx: optax.GradientTransformation):
  """`tx` for every parameter but `params["auxiliary"]`, which `auxiliary_tx` updates on its own."""
  labels = lambda params: {k: jax.tree.map(lambda _, k=k: "auxiliary" if k == "auxiliary" else "main", v)
                           for k, v in params.items()}
  return optax.multi_transform({"main": tx, "auxiliary": auxiliary_tx}, labels)


def make_experiment(config, family: families.Family | None = None) -> Experiment:
  """The static parts of a run of `config`; `family` defaults to families.get(config)."""
  family = families.get(config) if family is None else family
  model_def, param_shapes, buffer_shapes = families.abstract_model(family)
  head_def, context_term = None, None
  if config.context.weight > 0:
    spec = family.feature_spec()
    if spec is None:
      raise ValueError(f"config.context.weight={config.context.weight}: the {config.family!r} family has no "
                       "context loss; set config.context.weight=0")
    head = nnx.eval_shape(lambda: _context_plugin().build_head(config, spec, jax.random.key(0)))
    head_def, context_term = nnx.graphdef(head), _context_plugin().make_term(config)
  auxiliary = nnx.eval_shape(lambda: family.auxiliary(nnx.Rngs(0)))
  tx = make_optimizer(config)
  if auxiliary is not None:
    tx = with_auxiliary(tx, family.auxiliary_optimizer())
  return Experiment(config, family, model_def, param_shapes, buffer_shapes, family.first_stage(), head_def,
                    context_term, None if auxiliary is None else nnx.graphdef(auxiliary), tx)


def param_count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------------------------------------
# State and the update step.
# ------------------------------------------------------------------------------------------------------------------
def init_state(exp: Experiment, key: jax.Array) -> dict[str, Any]:
  k_model, k_head = jax.random.split(key)
  model = exp.family.build(nnx.Rngs(k_model))
  params = {"model": nnx.state(model, nnx.Param).to_pure_dict()}
  if exp.head_def is not None:
    head = _context_plugin().build_head(exp.config, exp.family.feature_spec(), k_head)
    params["context"] = nnx.state(head, nnx.Param).to_pure_dict()
  if exp.auxiliary_def is not None:  # its own stream: the model's and the head's draws are as without it
    params["auxiliary"] = nnx.state(exp.family.auxiliary(nnx.Rngs(jax.random.fold_in(key, 2))),
                                    nnx.Param).to_pure_dict()
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "ema": families.union(params["model"], nnx.state(model, families.BUFFERS).to_pure_dict()),
          "opt_state": exp.tx.init(params), "nonfinite": jnp.zeros((), jnp.int32)}


def loss_and_grad(exp: Experiment, first_stage, step, params, batch, buffers, k_loss, k_context):
  """((loss, (metrics, the buffers as the loss left them)), gradient) of the loss, context term included, on one
  batch."""

  def loss_fn(params):
    # The model's buffers ride in `ema` (they are not averaged); its loss may update them in place.
    model = nnx.merge(exp.model_def, families.union(params["model"], buffers))
    training_only = {} if exp.auxiliary_def is None else {
        "auxiliary": nnx.merge(exp.auxiliary_def, params["auxiliary"]), "step": step}
    out = exp.family.loss(model, first_stage, batch, k_loss, **training_only)
    metrics, total = dict(out.metrics), out.loss
    if exp.head_def is not None:
      head = nnx.merge(exp.head_def, params["context"])
      weighted, metrics["loss_context"] = exp.context_term(head, out, k_context, step)
      total = total + weighted
    updated = jax.lax.stop_gradient(nnx.state(model, families.BUFFERS).to_pure_dict())
    return total, ({"loss": total, **metrics}, updated)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def train_step(exp: Experiment, state, batch, base_key, first_stage_weights=None, weight_shardings=None):
  """One update. `weight_shardings`, where the forward and backward hold the weights and where the state keeps
  them (parallel.compute_shardings, and the state's), when the two differ."""
  config, step = exp.config, state["step"]
  k_loss, k_context = jax.random.split(jax.random.fold_in(base_key, step))
  first_stage = None if exp.first_stage is None else nnx.merge(exp.first_stage_def, first_stage_weights)
  grad_fn = functools.partial(loss_and_grad, exp, first_stage, step)
  buffers = families.restrict(state["ema"], exp.buffer_shapes)
  microbatches = config.train.get("microbatches", 1)
  weights = state["params"]
  if weight_shardings is not None:
    weights = jax.lax.with_sharding_constraint(weights, weight_shardings[0])
  if microbatches == 1:
    (loss, (metrics, buffers)), grads = grad_fn(weights, batch, buffers, k_loss, k_context)
  else:
    loss, metrics, buffers, grads = _accumulate(grad_fn, weights, batch, buffers, k_loss, k_context, microbatches)
  if weight_shardings is not None:
    grads = jax.lax.with_sharding_constraint(grads, weight_shardings[1])
  grad_norm = optax.global_norm(grads)
  updates, opt_state = exp.tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  decay = jnp.minimum(config.train.ema_decay, (1.0 + step) / (10.0 + step))  # short warm-up of the average
  previous = families.restrict(state["ema"], exp.param_shapes)
  averaged = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, previous, params["model"])
  ema = families.union(averaged, buffers)

  # A non-finite loss or gradient leaves parameters, moments and EMA as they were; the step still advances.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = {
      "step": step + 1,
      "params": keep(params, state["params"]),
      "ema": keep(ema, state["ema"]),
      "opt_state": keep(opt_state, state["opt_state"]),
      "nonfinite": jnp.where(finite, 0, state["nonfinite"] + 1).astype(jnp.int32),
  }
  return new_state, {**metrics, "grad_norm": grad_norm, "nonfinite": new_state["nonfinite"]}


def sharded_train_step(exp: Experiment, shardings, first_stage_shardings=None):
  """train_step for a state sharded as `shardings` (and a first stage as `first_stage_shardings`): the model's
  weights, and the frozen first stage's, whole along fsdp while they are used."""
  compute = parallel.compute_shardings(shardings["params"])
  if compute is None:
    return functools.partial(train_step, exp)
  stage = None if first_stage_shardings is None else parallel.compute_shardings(first_stage_shardings)

  def step(state, batch, base_key, first_stage_weights=None):
    if stage is not None:
      first_stage_weights = jax.lax.with_sharding_constraint(first_stage_weights, stage)
    return train_step(exp, state, batch, base_key, first_stage_weights, (compute, shardings["params"]))

  return step


def jit_train_step(exp: Experiment, mesh, shardings, first_stage_shardings):
  """The step as the trainer runs it (and --mode=compile compiles it): the state sharded as `shardings` and
  donated, the batch split over the batch axes, the key replicated, the first stage as it was put."""
  replicated = parallel.replicated(mesh)
  return jax.jit(sharded_train_step(exp, shardings, first_stage_shardings),
                 in_shardings=(shardings, parallel.batch_sharding(mesh), replicated, first_stage_shardings),
                 out_shardings=(shardings, replicated), donate_argnums=0)


def _accumulate(grad_fn, params, batch, buffers, k_loss, k_context, microbatches: int):
  """The loss, metrics and gradient of the whole batch as the mean over `microbatches` equal parts, computed one
  part at a time (a lax.scan), so that activations are held for one part only: gradient accumulation. The update
  equals one step on the whole batch wherever the loss is a mean over examples (each part draws its own noise and
  positions); buffers a loss updates (a VQ codebook's statistics) see the parts in turn.

  Part i takes rows i, i + k, i + 2k, ... of the global batch, so every device holds its share of every part and
  no rows move between devices."""
  split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1)
  parts = jax.tree.map(split, batch)

  def body(carry, part):
    grads, metrics, buffers = carry
    i, part = part
    (_, (m, buffers)), g = grad_fn(params, part, buffers, jax.random.fold_in(k_loss, i),
                                   jax.random.fold_in(k_context, i))
    add = lambda total, x: jax.tree.map(lambda a, b: a + b / microbatches, total, x)
    return (add(grads, g), add(metrics, m), buffers), None

  zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
  first = jax.tree.map(lambda x: x[0], parts)
  (_, (metric_shapes, _)), _ = jax.eval_shape(grad_fn, params, first, buffers, k_loss, k_context)
  init = (zeros(params), zeros(metric_shapes), buffers)
  (grads, metrics, buffers), _ = jax.lax.scan(body, init, (jnp.arange(microbatches), parts))
  return metrics["loss"], metrics, buffers, grads


# ------------------------------------------------------------------------------------------------------------------
# Set-up shared by training and sampling: mesh, shardings, checkpoint restore.
# ------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  exp: Experiment
  mesh: jax.sharding.Mesh
  abstract_state: Any
  shardings: Any
  manager: Any


def setup(config, workdir: str) -> Run:
  mesh = parallel.make_mesh(config.mesh.shape, config.mesh.axes)
  exp = make_experiment(config)
  abstract_state = jax.eval_shape(functools.partial(init_state, exp), jax.random.key(config.seed))
  shardings = parallel.state_shardings(mesh, abstract_state)
  manager = checkpointing.open_manager(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.checkpoint.max_to_keep)
  return Run(exp, mesh, abstract_state, shardings, manager)


def restore_or_init(run: Run, seed: int):
  found = checkpointing.restore_latest(run.manager, run.abstract_state, run.shardings)
  if found is not None:
    state = found[1]
    logging.info("resumed from the checkpoint at step %d", int(jax.device_get(state["step"])))
    return state
  init = jax.jit(functools.partial(init_state, run.exp), out_shardings=run.shardings)
  state = init(jax.random.key(seed))
  init_from = run.exp.config.model.get("init_from", "")
  if init_from:  # a fresh run starts from imported weights; a resumed one has its own
    imported = export.import_weights(run.exp.family, init_from)
    put = lambda: jax.device_put(imported, run.shardings["params"]["model"])  # two copies: the step donates both
    buffers = families.restrict(state["ema"], run.exp.buffer_shapes)
    state = {**state, "params": {**state["params"], "model": put()}, "ema": families.union(put(), buffers)}
    logging.info("started from the weights imported from %s", init_from)
  return state


# ------------------------------------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------------------------------------
class _StopRequest:
  """SIGTERM (and SIGINT) between steps, as a reason to save and stop, at the same step on every host.

  One process: a Python handler sets a flag that the loop reads after each step. Several processes (a pod, a
  cluster): a host that alone is told to stop must not leave the others waiting in a collective, so the notice goes
  through jax.distributed's preemption service, which catches SIGTERM itself (no Python handler may replace its
  own) and agrees with every host on the step at which all of them stop (multihost_utils, which Orbax's
  CheckpointManager.reached_preemption wraps). SIGINT there keeps its default, an immediate KeyboardInterrupt.
  """

  def __init__(self):
    self._signal = None
    self._previous = {}
    self._multihost = jax.process_count() > 1

  def __enter__(self):
    for sig in () if self._multihost else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self._signal = signal.Signals(signum).name

  def reason(self, step: int) -> str | None:
    """Why to stop after `step`, if so; call it after every step (the hosts' agreement needs every step id)."""
    if self._multihost:
      if multihost_utils.reached_preemption_sync_point(step):
        return "a preemption notice (SIGTERM) reached a host; every host stops at this step"
      return None
    return f"received {self._signal}" if self._signal else None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train(config, workdir: str) -> dict[str, Any]:
  """Trains to config.train.steps (resuming from the workdir), checkpoints, then writes samples.

  Raises workdir_lock.WorkdirBusy, before anything is written, if another process is training into `workdir`.
  """
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    return _train(config, workdir)


def _train(config, workdir: str) -> dict[str, Any]:
  run = setup(config, workdir)
  exp, t = run.exp, config.train
  batch_sharding = parallel.batch_sharding(run.mesh)
  source = data_lib.make_source(config.data)
  exp.family.sample_cond(1)  # what the final samples ask for (prompt files): read now, not after training
  batches = data_lib.Batches(source, global_batch_size=t.batch_size, seed=config.seed, sharding=batch_sharding)
  writer = MetricWriter(workdir)
  if jax.process_index() == 0:
    atomic_files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  with jax.set_mesh(run.mesh):
    state = restore_or_init(run, config.seed)
    start = int(jax.device_get(state["step"]))
    if jax.process_index() == 0:
      logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(
          jax.tree.map(np.asarray, _string_keys(state["params"]))))
      logging.info("inference parameters: %d (what sampling and export use)",
                   param_count(families.restrict(state["ema"], exp.param_shapes)))
    first_stage_weights = sampling.put_first_stage(exp.first_stage, run.mesh)
    first_stage_shardings = jax.tree.map(lambda x: x.sharding, first_stage_weights)
    step_fn = jit_train_step(exp, run.mesh, run.shardings, first_stage_shardings)
    base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    if start < t.steps and jax.process_index() == 0:  # compiled here, reused by the first step
      compiled = step_fn.lower(state, batches.get(start), base_key, first_stage_weights).compile()
      logging.info("memory per device: %s", memory_report.report(state, compiled))
    inference = sampling.TrainedModel(exp.family, exp.model_def, None, run.shardings["ema"], run.mesh, start,
                                      exp.first_stage_def, first_stage_weights)

    evaluator = best = None
    if config.eval.every_steps:
      from conprediff_jax import evaluate  # pylint: disable=g-import-not-at-top
      evaluator = evaluate.Evaluator(inference, workdir)
      best = checkpointing.open_best_manager(os.path.join(workdir, "best"), metric=config.eval.metric,
                                             lower_is_better=evaluate.LOWER_IS_BETTER[config.eval.metric])

    stop_reason, pending = None, []
    bar = tqdm(total=t.steps, initial=start, unit="step", dynamic_ncols=True, disable=jax.process_index() != 0)
    tick, tick_step = time.perf_counter(), start
    with _StopRequest() as stop, checkpointing.finishing(run.manager, best):
      for step in range(start, t.steps):
        state, metrics = step_fn(state, batches.get(step), base_key, first_stage_weights)
        pending.append(metrics)
        bar.update(1)
        done = step + 1
        if step == start:  # the first step includes compilation: keep it out of images/s
          jax.block_until_ready(metrics)
          tick, tick_step = time.perf_counter(), done
        if done % t.log_every == 0 or done == t.steps:
          host = jax.device_get(pending)
          means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
          means["nonfinite"] = int(host[-1]["nonfinite"])  # a run length, not an average
          means["skipped_steps"] = sum(int(m["nonfinite"] > 0) for m in host)
          pending = []
          now = time.perf_counter()
          if done > tick_step:
            means["images_per_sec"] = (done - tick_step) * t.batch_size / (now - tick)
          tick, tick_step = now, done
          writer.scalars(done, means)
          bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means.get('images_per_sec', 0):.0f}")
          if 0 < t.max_nonfinite_steps <= means["nonfinite"]:
            stop_reason = f"{means['nonfinite']} consecutive non-finite losses or gradients (updates were skipped)"
        if evaluator is not None and done % config.eval.every_steps == 0:
          eval_start = time.perf_counter()
          scores = evaluator(state["ema"], done)
          evaluate.write_results(workdir, done, scores)
          writer.scalars(done, {f"eval/{k}": v for k, v in scores.items()})
          if config.eval.metric in scores:  # Orbax keeps this step in best/ only if it beats the one there
            checkpointing.save(best, done, state, force=True, metrics=scores)
          tick += time.perf_counter() - eval_start  # eval time is not training time

        stop_reason = stop_reason or stop.reason(done)
        if done % config.checkpoint.every_steps == 0 or done == t.steps or stop_reason:
          checkpointing.save(run.manager, done, state, force=True)
        if stop_reason:
          break
    bar.close()
    batches.close()
    checkpointing.wait(run.manager)
    if best is not None:
      checkpointing.wait(best)
    skipped = getattr(source, "skipped", [])
    if skipped:
      logging.warning("skipped %d unreadable or malformed images, e.g. %s (%s)", len(skipped), *skipped[0])

    if stop_reason:
      logging.warning("stopped at step %d: %s; checkpoint saved in %s", done, stop_reason, workdir)
      writer.close()
      return {"step": done, "stopped": stop_reason}
    history = [h for h in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in h]
    if jax.process_index() == 0 and history:
      images_lib.save_loss_plot(os.path.join(workdir, "loss.png"), [h["step"] for h in history],
                                [h["loss"] for h in history])
    sample_files.write(dataclasses.replace(inference, weights=state["ema"], step=t.steps), workdir, writer)
  writer.close()
  return {"step": t.steps, "stopped": None}


def sample(config, workdir: str) -> np.ndarray | None:
  """Writes samples from the EMA weights of the workdir's latest checkpoint (no optimiser, no context head) into
  the files of sample_files.py; returns the first batch drawn."""
  trained = sampling.load_latest_ema(config, workdir)
  with jax.set_mesh(trained.mesh):
    return sample_files.write(trained, workdir)


def _string_keys(tree):
  """clu's overview wants string keys; NNX lists give int keys."""
  if isinstance(tree, dict):
    return {str(k): _string_keys(v) for k, v in tree.items()}
  return tree

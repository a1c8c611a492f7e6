"""The training loop, readable top to bottom: config -> data -> sharded state -> jitted steps -> writers/checkpoints."""
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import tqdm

from vision.errors import TrainingError, UserError
from vision.evaluators import classification
from vision.models import create_model, model_info
from vision.train import checkpoint as ckpt_lib
from vision.train import config as config_lib
from vision.train import mesh as mesh_lib
from vision.train import optim, steps
from vision.train.writers import MetricWriter

log = logging.getLogger("vision")


class Experiment:
  """Everything derived from (config, devices): model, optimizer, shardings, jitted steps."""

  def __init__(self, config, devices=None, facts=None):
    """`facts`: (num_classes, class_names, num_train) when known (from a checkpoint's meta) instead of the data."""
    self.config = config
    self.mesh = mesh_lib.make_mesh(devices)
    n_dev = self.mesh.devices.size
    config_lib.validate(config, n_dev, jax.process_count())
    info = model_info(config.model.name)  # an unknown name fails here, before any data is read
    self.pi, self.pc = jax.process_index(), jax.process_count()
    from vision.data import pipeline  # lazily: the training core imports no TensorFlow
    self.pipeline = pipeline
    self.num_classes, self.class_names, self.num_train = facts or pipeline.dataset_facts(config.data, self.pi, self.pc)
    if config.data.channels != info.in_channels and info.in_channels in (1, 3):
      log.info("model %s expects %d channels; data gives %d", info.name, info.in_channels, config.data.channels)
    self.model = create_model(config.model.name, num_classes=self.num_classes,
                              dtype=steps.compute_dtype(config.model.dtype), **dict(config.model.kwargs))
    t = config.train
    self.steps_per_epoch = max(1, self.num_train // t.batch_size)
    self.total_steps = t.num_steps if t.num_steps > 0 else int(math.ceil(t.num_epochs * self.steps_per_epoch))
    self.schedule = optim.lr_schedule(config.optim, self.steps_per_epoch, self.total_steps)
    self.tx = optim.make_optimizer(config.optim, self.schedule)
    size = config.data.image_size
    self.image_shape = (1, size, size, config.data.channels)
    init = lambda rng: steps.init_state(self.model, self.tx, rng, self.image_shape)
    self.abstract_state = jax.eval_shape(init, jax.random.key(0))
    self.state_sharding = mesh_lib.state_shardings(self.abstract_state, self.mesh, t.fsdp, t.fsdp_min_size)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    train_step = steps.make_train_step(self.model, self.tx, self.num_classes, t.label_smoothing,
                                       t.grad_accum_steps, config.model.aux_loss_weight, self.batch_sharding)
    self.train_step = jax.jit(train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, None), donate_argnums=0)
    self.variables_sharding = steps.model_variables(self.state_sharding)
    self.eval_step = jax.jit(steps.make_eval_step(self.model, self.num_classes),
                             in_shardings=(self.variables_sharding, self.batch_sharding))
    self.meta = {"model": config.model.name, "num_classes": self.num_classes, "class_names": self.class_names,
                 "image_size": size, "channels": config.data.channels}

  def abstract_with_sharding(self, variables_only=False):
    """The state (or, with variables_only, its {'params', 'batch_stats'}) as sharded ShapeDtypeStructs."""
    tree = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_sharding)
    return steps.model_variables(tree) if variables_only else tree

  def init_state(self):
    state = self._init(jax.random.key(self.config.seed))
    if self.config.train.init_from:
      state = self._load_pretrained(state, self.config.train.init_from)
    return state

  def _load_pretrained(self, state, source_workdir):
    """Params and batch statistics from another run's latest checkpoint; mismatched leaves (a new head) stay fresh."""
    src = ckpt_lib.Checkpointer(source_workdir, read_only=True, best_metric="")
    step = src.latest_step()
    if step is None:
      raise UserError(f"config.train.init_from = {source_workdir!r} holds no checkpoint; train there first or fix the path")
    loaded = src.restore_arrays(step, self.mesh)
    from vision.weights.mapping import adapt_pretrained
    params, fresh = ckpt_lib.merge_matching(state.params, loaded["params"], adapt=adapt_pretrained)
    batch_stats, fresh_stats = ckpt_lib.merge_matching(state.batch_stats, loaded.get("batch_stats", {}))
    if len(fresh) == len(ckpt_lib.flat_paths(state.params)):
      raise UserError(f"no parameter of {source_workdir} (step {step}) fits {self.config.model.name}; "
                      "init_from needs a checkpoint of the same architecture")
    log.info("init_from %s step %d: kept fresh %s", source_workdir, step, fresh + fresh_stats or "nothing")
    state = state.replace(params=params, batch_stats=batch_stats, opt_state=self.tx.init(params))
    return jax.device_put(state, self.state_sharding)

  def eval_batches(self, split):
    local = self.config.train.eval_batch_size // self.pc
    batches, n = self.pipeline.eval_batches(self.config.data, split, local, self.pi, self.pc)
    return mesh_lib.prefetch_to_device(batches, self.batch_sharding, self.config.data.prefetch), n

  def evaluate(self, variables, split=None) -> dict:
    """Classification metrics of `variables` ({'params', 'batch_stats'}) over a split."""
    batches, n = self.eval_batches(split or self.config.data.eval_split)
    return classification.evaluate(self.eval_step, variables, batches, n, self.class_names)


def _every(value, steps_per_epoch):
  return steps_per_epoch if value <= 0 else value


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains (resuming from the workdir's latest checkpoint) and returns the last eval results."""
  exp = Experiment(config, devices)
  t = config.train
  ckpt = ckpt_lib.Checkpointer(workdir, t.keep_checkpoints, t.best_metric, t.async_checkpointing)
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, exp.abstract_with_sharding(), exp.meta)
    log.info("resumed from step %d in %s", latest, ckpt.directory)
  else:
    state = exp.init_state()
  start = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = MetricWriter(workdir)
  local_batch = t.batch_size // exp.pc
  batches = exp.pipeline.train_batches(config.data, local_batch, config.seed, start, exp.pi, exp.pc)
  batches = mesh_lib.prefetch_to_device(batches, exp.batch_sharding, config.data.prefetch)
  eval_every, ckpt_every = _every(t.eval_every, exp.steps_per_epoch), _every(t.checkpoint_every, exp.steps_per_epoch)
  last_good = latest
  results = {}
  bar = tqdm.tqdm(total=exp.total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                  disable=jax.process_index() != 0)
  sums, n_sum, tick = None, 0, time.perf_counter()
  for step in range(start, exp.total_steps):
    state, metrics = exp.train_step(state, next(batches))
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    n_sum += 1
    bar.update(1)
    done = step + 1
    if done % t.log_every == 0 or done == exp.total_steps:
      host = {k: float(v) / n_sum for k, v in jax.device_get(sums).items()}
      if not all(map(math.isfinite, host.values())):
        ckpt.wait()
        raise TrainingError(f"non-finite training loss by step {done} ({host}); last good checkpoint: "
                            f"{'none' if last_good is None else f'step {last_good} in {ckpt.directory}'}; "
                            "lower config.optim.lr or enable config.optim.grad_clip_norm")
      elapsed = time.perf_counter() - tick
      host.update(lr=float(exp.schedule(step)), images_per_sec=n_sum * t.batch_size / elapsed,
                  epoch=done / exp.steps_per_epoch)
      writer.write(done, host, "train/")
      bar.set_postfix(loss=f"{host['loss']:.4f}", img_s=f"{host['images_per_sec']:.0f}")
      sums, n_sum, tick = None, 0, time.perf_counter()
    evaluated = None
    if done % eval_every == 0 or done == exp.total_steps:
      results = exp.evaluate(steps.model_variables(state))
      evaluated = {k: results[k] for k in ("top1", "top5", "loss")}
      writer.write(done, evaluated, "eval/")
      bar.write(f"step {done}: eval top1 {results['top1']:.4f} top5 {results['top5']:.4f} loss {results['loss']:.4f}")
      tick = time.perf_counter()  # keep eval time out of images/s
    if done % ckpt_every == 0 or done == exp.total_steps:
      ckpt.save(done, state, exp.meta, evaluated)
      last_good = done
  bar.close()
  ckpt.wait()
  ckpt.close()
  writer.close()
  if results and jax.process_index() == 0:
    write_results(workdir, config.data.eval_split, exp.total_steps, results)
  return results


def write_results(workdir, split, step, results) -> str:
  path = os.path.join(workdir, f"eval_{split.replace('/', '_').replace(':', '_')}_step{step}.json")
  with open(path, "w") as f:
    json.dump({"split": split, "step": step, **results}, f, indent=1)
  return path


def evaluate_checkpoint(config, workdir: str, step: int | None = None, split: str | None = None,
                        devices=None) -> tuple[dict, str]:
  """Restores the latest (or `step`) checkpoint of `workdir` and evaluates `split`; writes JSON."""
  exp, variables, step = restore_for_eval(config, workdir, step, devices)
  split = split or config.data.eval_split
  results = exp.evaluate(variables, split)
  path = write_results(workdir, split, step, results) if jax.process_index() == 0 else ""
  return results, path


def restore_for_eval(config, workdir: str, step: int | None = None, devices=None, facts_from_meta=False):
  """(Experiment, its {'params', 'batch_stats'} from the latest or `step` checkpoint, the step).

  facts_from_meta: take the classes from the checkpoint's meta, so that predicting needs no dataset
  (a converted checkpoint's meta has no class names: they are then []).
  """
  exp = None if facts_from_meta else Experiment(config, devices)  # config errors first, as before
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"no checkpoints in {workdir} (expected {directory}); train there first or fix --workdir")
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True, best_metric="")
  steps_there = ckpt.all_steps()
  if not steps_there:
    raise UserError(f"no complete checkpoint in {directory}; train there first or fix --workdir")
  if step is None:
    step = max(steps_there)
  elif step not in steps_there:
    raise UserError(f"no checkpoint for step {step} in {directory}; available steps: {sorted(steps_there)}")
  if exp is None:
    meta = ckpt.meta(step)
    facts = (meta["num_classes"], meta.get("class_names") or [], 0) if "num_classes" in meta else None
    exp = Experiment(config, devices, facts)
  variables = ckpt.restore_variables(step, exp.abstract_with_sharding(variables_only=True), exp.meta)
  return exp, variables, step


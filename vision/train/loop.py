"""The training loop, readable top to bottom: config -> data -> sharded state -> jitted steps -> writers/checkpoints."""
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import tqdm

from vision.errors import Preempted, TrainingError, UserError
from vision.evaluators import classification
from vision.models import create_model, model_info
from vision.train import checkpoint as ckpt_lib
from vision.train import config as config_lib
from vision.train import mesh as mesh_lib
from vision.train import optim, steps
from vision.train.preemption import Preemption
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
    size = config.data.image_size
    self.image_shape = (1, size, size, config.data.channels)
    abstract_variables = lambda model: jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(self.image_shape), train=False))
    variables = abstract_variables(self.model)
    # The classifier: the leaves whose shape changes with the number of classes (any architecture).
    other = create_model(config.model.name, num_classes=self.num_classes + 1, **dict(config.model.kwargs))
    self.head = optim.head_mask(variables["params"], abstract_variables(other)["params"])
    self.tx = optim.make_optimizer(config.optim, self.schedule, variables["params"], self.head, t.freeze)
    self.ema = t.ema_decay > 0
    init = lambda rng: steps.init_state(self.model, self.tx, rng, self.image_shape, self.ema)
    self.abstract_state = jax.eval_shape(init, jax.random.key(0))
    self.state_sharding = mesh_lib.state_shardings(self.abstract_state, self.mesh, t.fsdp, t.fsdp_min_size)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    mix = dict(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, switch_prob=t.mix_switch_prob,
               prob=t.mix_prob) if t.mixup_alpha > 0 or t.cutmix_alpha > 0 else None
    ema = dict(ema_decay=t.ema_decay, ema_every=t.ema_every,
               ema_warmup_steps=int(round(t.ema_warmup_epochs * self.steps_per_epoch))) if self.ema else None
    frozen_stats = optim.frozen_mask(variables.get("batch_stats", {}), t.freeze) if t.freeze else None
    train_step = steps.make_train_step(self.model, self.tx, self.num_classes, t.label_smoothing,
                                       t.grad_accum_steps, config.model.aux_loss_weight, self.batch_sharding,
                                       t.skip_nonfinite, mix, ema, frozen_stats,
                                       normalize=(config.data.mean, config.data.std))
    self.train_step = jax.jit(train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, None), donate_argnums=0)
    self.variables_sharding = steps.model_variables(self.state_sharding)
    eval_step = steps.make_eval_step(self.model, self.num_classes, normalize=(config.data.mean, config.data.std))
    self.eval_step = jax.jit(eval_step, in_shardings=(self.variables_sharding, self.batch_sharding))
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
    source = loaded["params"]
    if self.config.train.init_new_head:  # drop the classifier's leaves: they stay freshly initialised
      head = {k for k, h in ckpt_lib.flat_paths(self.head).items() if h}
      source = {k: v for k, v in ckpt_lib.flat_paths(source).items() if k not in head}  # flat paths merge the same
    params, fresh = ckpt_lib.merge_matching(state.params, source, adapt=adapt_pretrained)
    batch_stats, fresh_stats = ckpt_lib.merge_matching(state.batch_stats, loaded.get("batch_stats", {}))
    if len(fresh) == len(ckpt_lib.flat_paths(state.params)):
      raise UserError(f"no parameter of {source_workdir} (step {step}) fits {self.config.model.name}; "
                      "init_from needs a checkpoint of the same architecture")
    log.info("init_from %s step %d: kept fresh %s", source_workdir, step, fresh + fresh_stats or "nothing")
    ema = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}) if self.ema else {}  # own buffers
    state = state.replace(params=params, batch_stats=batch_stats, opt_state=self.tx.init(params), ema=ema)
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


def _headline(results) -> dict:
  """The eval numbers logged to metrics.jsonl / TensorBoard (the JSON report holds everything)."""
  out = {k: results[k] for k in ("top1", "top5", "loss")}
  out["macro_f1"] = results["macro"]["f1"]
  if "ece" in results:
    out["ece"] = results["ece"]
  return out


def _check_writable(workdir):
  """Fails in one line before anything is compiled when the workdir cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to --workdir {workdir} ({e.strerror}); choose a writable directory") from None


def _barrier(name):
  """Several processes meet here before the next collective.

  The coordination service's barrier (Orbax's, given the processes), not a device collective: on CPU, gloo
  gives up on a peer that is more than 30 s late, and start-up work (preparing data, importing TensorFlow,
  building the input pipeline) can differ by more than that between processes on a loaded machine.
  """
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost
    multihost.sync_global_processes(name, timeout=3600, processes=set(range(jax.process_count())))


def _prepare_data_once(config):
  """Several processes: process 0 prepares a missing tfds dataset while the others wait (no race on data_dir)."""
  if jax.process_count() > 1 and jax.process_index() == 0:
    from vision.data import pipeline
    pipeline.dataset_facts(config.data)
  _barrier("vision:dataset_prepared")


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains (resuming from the workdir's latest checkpoint) and returns the last eval results.

  Stops with TrainingError on a non-finite loss (unless config.train.skip_nonfinite) and with
  Preempted after saving a checkpoint on SIGTERM.
  """
  _check_writable(workdir)
  _prepare_data_once(config)
  exp = Experiment(config, devices)
  exp.pipeline.source(config.data, config.data.eval_split, exp.pi, exp.pc)  # a bad split fails now, not at eval
  _barrier("vision:experiment_built")  # Orbax's first collective follows
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
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = MetricWriter(workdir)
  local_batch = t.batch_size // exp.pc
  batches = exp.pipeline.train_batches(config.data, local_batch, config.seed, start, exp.pi, exp.pc)
  batches = mesh_lib.prefetch_to_device(batches, exp.batch_sharding, config.data.prefetch)
  _barrier("vision:input_ready")  # the first step's collectives follow
  eval_every, ckpt_every = _every(t.eval_every, exp.steps_per_epoch), _every(t.checkpoint_every, exp.steps_per_epoch)
  last_good = latest
  results = {}
  bar = tqdm.tqdm(total=exp.total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                  disable=jax.process_index() != 0)
  preemption = Preemption()
  sums, n_sum, since, tick = None, 0, start, time.perf_counter()
  try:
    for step in range(start, exp.total_steps):
      state, metrics = exp.train_step(state, next(batches))
      sums = steps.accumulate(sums, metrics)
      n_sum += 1
      bar.update(1)
      done = step + 1
      stop = preemption.reached(done)
      log_now = done % t.log_every == 0 or done == exp.total_steps
      eval_now = done % eval_every == 0 or done == exp.total_steps
      save_now = done % ckpt_every == 0 or done == exp.total_steps or stop
      if not (log_now or eval_now or save_now):
        continue
      # Nothing non-finite is logged, evaluated or saved: one host round trip per log, eval or save.
      host = {k: v.item() for k, v in jax.device_get(sums).items()}
      skipped, first_bad = host.pop("nonfinite"), host.pop("first_nonfinite")
      if skipped and not t.skip_nonfinite:
        ckpt.wait()
        where = f"step {last_good} in {ckpt.directory} (kept; rerunning resumes there)" if last_good is not None \
            else "none (the run stopped before its first checkpoint)"
        raise TrainingError(f"non-finite loss at step {first_bad} ({skipped} of steps {since + 1}-{done}); last good "
                            f"checkpoint: {where}; lower config.optim.lr, set config.optim.grad_clip_norm, or set "
                            "config.train.skip_nonfinite=True to skip such steps")
      if log_now:
        elapsed = time.perf_counter() - tick
        finite = n_sum - skipped  # skipped steps report zeros: average over the others
        host = {k: v / finite for k, v in host.items()} if finite else {}
        host.update(lr=float(exp.schedule(step)), images_per_sec=n_sum * t.batch_size / elapsed,
                    epoch=done / exp.steps_per_epoch)
        if skipped:
          host["skipped_steps"] = skipped
          log.warning("skipped %d step(s) with a non-finite loss in steps %d-%d, the first at step %d",
                      skipped, since + 1, done, first_bad)
        writer.write(done, host, "train/")
        if "loss" in host:
          bar.set_postfix(loss=f"{host['loss']:.4f}", img_s=f"{host['images_per_sec']:.0f}")
        sums, n_sum, since, tick = None, 0, done, time.perf_counter()
      evaluated = None
      if eval_now:
        results = exp.evaluate(steps.model_variables(state))
        evaluated = _headline(results)
        line = f"step {done}: eval top1 {results['top1']:.4f} top5 {results['top5']:.4f} loss {results['loss']:.4f}"
        if exp.ema:  # the EMA weights, evaluated alongside the raw ones
          results["ema"] = exp.evaluate(steps.model_variables(state, ema=True))
          evaluated.update({f"ema_{k}": v for k, v in _headline(results["ema"]).items()})
          line += f"; EMA top1 {results['ema']['top1']:.4f}"
        writer.write(done, evaluated, "eval/")
        bar.write(line)
        tick = time.perf_counter()  # keep eval time out of images/s
      if save_now:
        ckpt.save(done, state, exp.meta, evaluated)
        last_good = done
      if stop:
        ckpt.close()
        raise Preempted(f"SIGTERM: saved the checkpoint of step {done} in {ckpt.directory} and stopped; rerun the "
                        "same command to resume")
  finally:  # a clean line for the message of whatever ended the loop
    bar.close()
    preemption.close()
    writer.close()
  ckpt.wait()
  ckpt.close()
  if results and jax.process_index() == 0:
    write_results(workdir, config.data.eval_split, exp.total_steps, results)
  return results


def write_results(workdir, split, step, results, tag="", prefix="eval") -> str:
  """<workdir>/<prefix>_<split>_step<step><tag>.json with the split and step added."""
  path = os.path.join(workdir, f"{prefix}_{split.replace('/', '_').replace(':', '_')}_step{step}{tag}.json")
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


def restore_for_eval(config, workdir: str, step: int | None = None, devices=None, facts_from_meta=False,
                     ema=False):
  """(Experiment, its {'params', 'batch_stats'} from the latest or `step` checkpoint, the step).

  facts_from_meta: take the classes from the checkpoint's meta, so that predicting needs no dataset
  (a converted checkpoint's meta has no class names: they are then []).
  """
  exp = None if facts_from_meta else Experiment(config, devices)  # config errors first, as before
  ckpt, step = ckpt_lib.open_for_eval(workdir, step)
  if exp is None:
    meta = ckpt.meta(step)
    facts = (meta["num_classes"], meta.get("class_names") or [], 0) if "num_classes" in meta else None
    exp = Experiment(config, devices, facts)
  variables = ckpt.restore_variables(step, exp.abstract_with_sharding(variables_only=True), exp.meta, ema)
  return exp, variables, step


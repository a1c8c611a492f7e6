"""DINOv2 pretraining loop and the frozen-teacher evaluation (kNN, linear probes); config.task = 'dinov2'.

The same shape as vision/train/loop.py and the same parts: mesh and
shardings, Orbax checkpoints (the whole SSLState: student, teacher, centers,
optimizer, RNG, step; the data position is a function of the step), JSONL +
TensorBoard metrics. Restarting the same command resumes. A non-finite loss
stops the run naming the first bad step and the last good checkpoint; no
checkpoint is written after it.
"""
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import tqdm

from vision.errors import TrainingError, UserError
from vision.evaluators import features as features_lib
from vision.evaluators import knn, linear_probe
from vision.models import create_model, model_info
from vision.ssl import heads, optim, schedules, steps
from vision.train import checkpoint as ckpt_lib
from vision.train import config as config_lib
from vision.train import mesh as mesh_lib
from vision.train.steps import compute_dtype
from vision.train.writers import MetricWriter

log = logging.getLogger("vision")


def build_networks(config) -> steps.Networks:
  s, dtype = config.ssl, compute_dtype(config.model.dtype)
  backbone = create_model(config.model.name, num_classes=0, dtype=dtype,
                          **{"use_mask_token": True, **dict(config.model.kwargs)})
  if not (hasattr(backbone, "forward_features") and getattr(backbone, "class_token", False)
          and hasattr(backbone, "patch_size")):
    raise UserError(f"task='dinov2' needs a ViT with a class token (vit_*_dinov2, vit_*); "
                    f"{config.model.name} is not one")
  for key in ("global_crop_size", "local_crop_size"):
    if s[key] % backbone.patch_size:
      raise UserError(f"config.ssl.{key} = {s[key]} is not a multiple of the patch size {backbone.patch_size}")
  head = lambda k: heads.DINOHead(k, s.head_hidden_dim, s.head_bottleneck_dim, s.head_layers, dtype)
  return steps.Networks(backbone, head(s.prototypes), head(s.ibot_prototypes) if s.ibot_separate_head else None)


class SSLExperiment:
  """Everything derived from (config, devices): networks, schedules, optimizer, shardings, the jitted step."""

  def __init__(self, config, devices=None):
    self.config = config
    self.mesh = mesh_lib.make_mesh(devices)
    config_lib.validate(config, self.mesh.devices.size, jax.process_count())
    model_info(config.model.name)  # an unknown name fails here, before any data is read
    self.nets = build_networks(config)
    self.pi, self.pc = jax.process_index(), jax.process_count()
    from vision.data import masking, multicrop, pipeline  # lazily: the training core imports no TensorFlow
    self.pipeline, self.multicrop = pipeline, multicrop
    self.num_classes, self.class_names, self.num_train = pipeline.dataset_facts(config.data, self.pi, self.pc)
    t, s = config.train, config.ssl
    self.steps_per_epoch = max(1, self.num_train // t.batch_size)
    self.total_steps = t.num_steps if t.num_steps > 0 else int(math.ceil(t.num_epochs * self.steps_per_epoch))
    self.schedules = schedules.make_schedules(config, self.steps_per_epoch, self.total_steps)
    size, channels = s.global_crop_size, config.data.channels
    self.tx = optim.make_optimizer(config, self.schedules)
    init = lambda rng: steps.init_state(self.nets, self.tx, rng, size, channels)
    self.abstract_state = jax.eval_shape(init, jax.random.key(0))
    self.state_sharding = mesh_lib.state_shardings(self.abstract_state, self.mesh, t.fsdp, t.fsdp_min_size)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self._init = jax.jit(init, out_shardings=self.state_sharding)
    # One mask group per device (the release masks per GPU batch); U bounds a group's masked patches.
    self.num_groups = self.mesh.devices.size
    self.local_groups = sum(d.process_index == self.pi for d in self.mesh.devices.flat)
    grid = s.global_crop_size // self.nets.backbone.patch_size
    self.mask_upper_bound = masking.upper_bound(2 * t.batch_size // self.num_groups, grid * grid,
                                                s.mask_probability, tuple(s.mask_ratio))
    step = steps.make_train_step(self.nets, self.tx, self.schedules, s, self.num_groups, self.mask_upper_bound,
                                 self.mesh, normalize=(config.data.mean, config.data.std))
    self.train_step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, None), donate_argnums=0)
    self.meta = {"model": config.model.name, "num_classes": 0, "task": "dinov2", "class_names": self.class_names,
                 "image_size": config.data.image_size, "channels": channels}

  def abstract_with_sharding(self, teacher_only=False):
    tree = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        self.abstract_state, self.state_sharding)
    return {"teacher": tree.teacher} if teacher_only else tree

  def train_batches(self, start_step):
    t, d = self.config.train, self.config.data
    import tensorflow as tf
    # Float crops (data.uint8_batches=False): bfloat16 halves the host->device traffic; uint8 quarters it.
    dtype = tf.bfloat16 if self.config.model.dtype == "bfloat16" else tf.float32
    batches = self.multicrop.train_batches(d, self.config.ssl, t.batch_size // self.pc, self.config.seed, start_step,
                                           self.pi, self.pc, self.local_groups, self.nets.backbone.patch_size, dtype)
    return mesh_lib.prefetch_to_device(batches, self.batch_sharding, d.prefetch)

  def features(self, backbone_params, split):
    """Frozen features (features.feature_fn) and labels of a whole split, evaluation transform."""
    d, t = self.config.data, self.config.train
    batches, n = self.pipeline.eval_batches(d, split, t.eval_batch_size // self.pc, self.pi, self.pc)
    batches = mesh_lib.prefetch_to_device(batches, self.batch_sharding, d.prefetch)
    fn = features_lib.feature_fn(self.nets.backbone, normalize=(d.mean, d.std))
    return features_lib.extract(fn, {"params": backbone_params}, batches, n)

  def evaluate(self, backbone_params, split=None, probe=True) -> dict:
    """kNN (and linear-probe) accuracy of the frozen backbone: train split as memory / probe data, `split` scored."""
    s = self.config.ssl
    split = split or self.config.data.eval_split
    start = time.perf_counter()
    train_f, train_y = self.features(backbone_params, self.config.data.train_split)
    eval_f, eval_y = self.features(backbone_params, split)
    knn_f = features_lib.knn_features(eval_f)
    scores = knn.knn_accuracy(features_lib.knn_features(train_f), train_y, knn_f, eval_y, self.num_classes,
                              tuple(s.knn_k), s.knn_temperature)
    results = {"split": split, "count": int(len(eval_y)), "train_count": int(len(train_y)),
               "feature_std": float(jnp.mean(jnp.std(knn.normalize(knn_f), axis=0))),
               "knn": {str(k): v for k, v in scores.items()}}
    if probe:
      results["linear"] = linear_probe.linear_probe(train_f, train_y, eval_f, eval_y, self.num_classes,
                                                    tuple(s.probe_lrs), s.probe_epochs, s.probe_batch_size,
                                                    s.probe_val_fraction, self.config.seed)
    results["seconds"] = time.perf_counter() - start
    return results


def knn_top1(results) -> dict:
  return {f"knn_top1_k{k}": v["top1"] for k, v in results["knn"].items()}


def train_and_evaluate(config, workdir: str, devices=None, experiment=None) -> dict:
  """Pretrains (resuming from the workdir's latest checkpoint); returns the teacher's final kNN results.

  experiment: an SSLExperiment of this config to reuse (its compiled step), e.g. across restarts in one process.
  """
  exp = experiment or SSLExperiment(config, devices)
  t = config.train
  ckpt = ckpt_lib.Checkpointer(workdir, t.keep_checkpoints, "", t.async_checkpointing)
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, exp.abstract_with_sharding(), exp.meta)
    log.info("resumed from step %d in %s", latest, ckpt.directory)
  else:
    state = exp._init(jax.random.key(config.seed))
  start = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = MetricWriter(workdir)
  batches = exp.train_batches(start)
  # kNN over the whole train split is not cheap: train.eval_every > 0 evaluates every that many steps and at
  # step 0 of a fresh run (the random-init baseline); -1 only at the end; 0 never.
  eval_every = t.eval_every if t.eval_every > 0 else exp.total_steps if t.eval_every < 0 else 0
  ckpt_every = exp.steps_per_epoch if t.checkpoint_every <= 0 else t.checkpoint_every
  first_bad = jnp.asarray(2**31 - 1, jnp.int32)  # on device: the first step whose loss was not finite
  track = jax.jit(lambda bad, loss, step: jnp.where(jnp.isfinite(loss), bad, jnp.minimum(bad, step)))
  last_good, results = latest, {}
  bar = tqdm.tqdm(total=exp.total_steps, initial=start, desc="dinov2", unit="step", dynamic_ncols=True,
                  disable=jax.process_index() != 0)
  if start == 0 and t.eval_every > 0:
    init = exp.evaluate(state.teacher["backbone"], probe=False)
    writer.write(0, {**knn_top1(init), "feature_std": init["feature_std"]}, "eval/")
  sums, n_sum, tick = None, 0, time.perf_counter()

  def check_finite():
    bad = int(jax.device_get(first_bad))
    if bad != 2**31 - 1:
      ckpt.wait()
      where = "none" if last_good is None else f"step {last_good} in {ckpt.directory}"
      raise TrainingError(f"non-finite training loss at step {bad}; last good checkpoint: {where}; lower "
                          "config.optim.lr, check config.ssl.clip_grad, or restart from it with another config.seed")

  for step in range(start, exp.total_steps):
    state, metrics = exp.train_step(state, next(batches))
    done = step + 1
    first_bad = track(first_bad, metrics["loss"], done)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    n_sum += 1
    bar.update(1)
    if done % t.log_every == 0 or done == exp.total_steps:
      check_finite()
      host = {k: float(v) / n_sum for k, v in jax.device_get(sums).items()}
      host.update(images_per_sec=n_sum * t.batch_size / (time.perf_counter() - tick), epoch=done / exp.steps_per_epoch)
      writer.write(done, host, "train/")
      bar.set_postfix(loss=f"{host['loss']:.4f}", H=f"{host['teacher_entropy']:.2f}")
      sums, n_sum, tick = None, 0, time.perf_counter()
    if eval_every and (done % eval_every == 0 or done == exp.total_steps):
      results = exp.evaluate(state.teacher["backbone"], probe=False)
      writer.write(done, {**knn_top1(results), "feature_std": results["feature_std"]}, "eval/")
      bar.write(f"step {done}: teacher kNN top1 " +
                " ".join(f"k={k} {v['top1']:.4f}" for k, v in results["knn"].items()))
      tick = time.perf_counter()
    if done % ckpt_every == 0 or done == exp.total_steps:
      check_finite()  # never save a state that went through a non-finite step
      ckpt.save(done, state, exp.meta)
      last_good = done
  bar.close()
  ckpt.wait()
  ckpt.close()
  writer.close()
  return results


def evaluate_checkpoint(config, workdir: str, step: int | None = None, split: str | None = None, devices=None,
                        probe=True) -> tuple[dict, str]:
  """kNN and linear-probe accuracy of the frozen teacher of a checkpoint; writes eval_ssl_<split>_step<N>.json."""
  exp = SSLExperiment(config, devices)
  ckpt, step = ckpt_lib.open_for_eval(workdir, step)
  teacher = ckpt.restore_variables(step, exp.abstract_with_sharding(teacher_only=True), exp.meta)["teacher"]
  results = exp.evaluate(teacher["backbone"], split, probe)
  from vision.train.loop import write_results
  path = write_results(workdir, results["split"], step, results, prefix="eval_ssl") if jax.process_index() == 0 else ""
  return results, path


def summary(results) -> str:
  """One line for the CLIs."""
  out = f"{results['count']} images: teacher kNN top1 " + ", ".join(
      f"k={k} {v['top1']:.4f}" for k, v in results["knn"].items())
  if "linear" in results:
    best = results["linear"]["best"]
    out += f"; linear probe top1 {results['linear']['top1']:.4f} ({best['features']}, lr {best['lr']:g})"
  return out + f"; feature std {results['feature_std']:.4f}"

"""The train state and the pure step functions: train_step(state, batch) -> (state, metrics)."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from vision.data import mixing


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any
  rng: jax.Array  # raw uint32 key data; per-step keys are fold_in(rng, step)
  ema: Any = None  # {'params', 'batch_stats'}: the model EMA (config.train.ema_decay > 0), else {}


def init_state(model, tx, rng, image_shape, ema=False) -> TrainState:
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, jnp.zeros(image_shape, jnp.float32),
                         train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=jax.random.key_data(state_rng),
                    ema={"params": jax.tree.map(jnp.copy, params), "batch_stats": jax.tree.map(jnp.copy, batch_stats)}
                    if ema else {})


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  """Per-example softmax cross-entropy with label smoothing (Szegedy et al. 2016), float32."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                     mixing.smooth_one_hot(labels, num_classes, label_smoothing))


def _aux_logits(intermediates):
  """Every value sown under the name 'aux_logits' (GoogLeNet's auxiliary heads)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates)) if intermediates else {}
  return [v for path, vals in flat.items() if path[-1] == "aux_logits" for v in vals]


def normalize_images(images, mean, std):
  """uint8 [0, 255] images (config.data.uint8_batches) -> float32 (x / 255 - mean) / std; float images as they are.

  An elementwise op on the device (XLA may fuse it with the first layer); the host only crops, flips and batches
  bytes.
  """
  if images.dtype != jnp.uint8:
    return images
  if mean is None:
    raise ValueError("uint8 images need the mean and std to normalise them (make_train_step(normalize=...))")
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  return images.astype(jnp.float32) * (1.0 / (255.0 * std)) - mean / std


def erase(images, boxes, rng):
  """Random erasing on the device: the rectangles the pipeline drew (vision/data/augment.py:erasing_boxes).

  images: normalised [B, H, W, C]; boxes: int32 [B, ops, 5] = (top, left, height, width, noise), height 0 for
  no erasing. Inside a rectangle: 0 (the mean), or N(0, 1) noise where noise = 1 (timm's 'pixel' mode).
  """
  rows = jnp.arange(images.shape[1])[None, :, None]
  cols = jnp.arange(images.shape[2])[None, None, :]
  for op in range(boxes.shape[1]):
    top, left, h, w, noise = (boxes[:, op, k][:, None, None] for k in range(5))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    key = jax.random.fold_in(rng, op)
    fill = jax.lax.cond(jnp.any(noise * h > 0),  # no noise drawn for a batch without a 'pixel' rectangle
                        lambda: jnp.where(noise[..., None] > 0, jax.random.normal(key, images.shape, images.dtype), 0),
                        lambda: jnp.zeros_like(images))
    images = jnp.where(inside[..., None], fill, images)
  return images


NO_STEP = 2**31 - 1  # 'first_nonfinite' of a finite step: metrics of many steps combine by minimum


def accumulate(sums, metrics):
  """Adds one step's metrics to the running sums ('first_nonfinite' by minimum)."""
  if sums is None:
    return metrics
  return {k: (jnp.minimum if k == "first_nonfinite" else jnp.add)(sums[k], v) for k, v in metrics.items()}


def ema_update(state, ema_decay, ema_every=1, ema_warmup_steps=0):
  """The EMA after this step: params (and BatchNorm statistics) averaged every ema_every steps, a copy of them
  before ema_warmup_steps (torchvision's reset during the lr warmup)."""
  done = state.step + 1
  decay = jnp.where(done <= ema_warmup_steps, 0.0, ema_decay)
  update = (done % ema_every == 0) | (done <= ema_warmup_steps)
  current = {"params": state.params, "batch_stats": state.batch_stats}
  return jax.tree.map(lambda e, p: jnp.where(update, decay * e + (1.0 - decay) * p, e).astype(e.dtype),
                      state.ema, current)


def make_train_step(model, tx, num_classes, label_smoothing=0.0, grad_accum_steps=1, aux_loss_weight=0.3,
                    batch_sharding=None, skip_nonfinite=False, mix=None, ema=None, frozen_stats=None,
                    normalize=None):
  """Builds the pure step. BatchNorm statistics are over the global batch (XLA all-reduces them).

  mix: kwargs of mixing.mix (mixup_alpha, cutmix_alpha, switch_prob, prob) for on-device Mixup/CutMix of the
  whole (global) batch before any micro-batching; targets are then soft (label smoothing included).
  ema: kwargs of ema_update (ema_decay, ema_every, ema_warmup_steps) when state.ema is kept.
  frozen_stats: a tree of bools like batch_stats; True entries keep their value (frozen layers).
  normalize: (mean, std) in [0, 1] units for uint8 batches (config.data.uint8_batches), normalised on the device.

  Metrics 'nonfinite' (1 when the loss or a gradient is not finite) and 'first_nonfinite' (that step's number,
  else NO_STEP) let the loop find a bad step without a host round trip per step. With skip_nonfinite such a
  step keeps the old params, optimizer state and statistics (only the step, hence the data, moves on).
  """

  def loss_fn(params, batch_stats, images, targets, labels, rng):
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    logits, mutated = model.apply(variables, images, train=True, rngs={"dropout": rng},
                                  mutable=["batch_stats", "intermediates"])
    loss = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
    for aux in _aux_logits(mutated.get("intermediates")):
      loss += aux_loss_weight * jnp.mean(optax.softmax_cross_entropy(aux.astype(jnp.float32), targets))
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return loss, (correct, mutated.get("batch_stats", batch_stats))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, labels = batch["image"], batch["label"]
    images = normalize_images(images, *(normalize or (None, None)))
    if "erase" in batch:  # uint8 batches with random erasing: the host drew the rectangles
      images = erase(images, batch["erase"], jax.random.fold_in(rng, 2**21))
    if mix:
      images, targets = mixing.mix(jax.random.fold_in(rng, 2**20), images, labels, num_classes,
                                   label_smoothing=label_smoothing, **mix)
    else:
      targets = mixing.smooth_one_hot(labels, num_classes, label_smoothing)
    if grad_accum_steps == 1:
      (loss, (correct, batch_stats)), grads = grad_fn(state.params, state.batch_stats, images, targets, labels, rng)
    else:
      # Row r = m * accum + a: micro-batch a keeps the batch's split over devices.
      def micro(x):
        x = x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:]).swapaxes(0, 1)
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(
            x, jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec(None, "data")))

      def body(carry, xs):
        grads_sum, loss_sum, correct_sum, stats = carry
        i, im, tg, lb = xs
        (l, (c, stats)), g = grad_fn(state.params, stats, im, tg, lb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_sum, g), loss_sum + l, correct_sum + c, stats), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), state.batch_stats)
      (grads, loss, correct, batch_stats), _ = jax.lax.scan(
          body, init, (jnp.arange(grad_accum_steps), micro(images), micro(targets), micro(labels)))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      loss = loss / grad_accum_steps
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if frozen_stats is not None:
      batch_stats = jax.tree.map(lambda f, new, old: old if f else new, frozen_stats, batch_stats, state.batch_stats)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # any inf/nan gradient makes the norm non-finite
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    if ema:
      new_state = new_state.replace(ema=ema_update(new_state.replace(step=state.step), **ema))
    metrics = {"loss": loss, "top1": correct / labels.shape[0], "grad_norm": grad_norm}
    if skip_nonfinite:
      keep = lambda new, old: jnp.where(finite, new, old)
      new_state = new_state.replace(params=jax.tree.map(keep, params, state.params),
                                    batch_stats=jax.tree.map(keep, batch_stats, state.batch_stats),
                                    opt_state=jax.tree.map(keep, opt_state, state.opt_state),
                                    ema=jax.tree.map(keep, new_state.ema, state.ema))
      metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}  # averaged over the finite steps
    metrics["nonfinite"] = 1 - finite.astype(jnp.int32)
    metrics["first_nonfinite"] = jnp.where(finite, NO_STEP, state.step + 1)
    return new_state, metrics

  return train_step


def model_variables(state: TrainState, ema=False) -> dict:
  """The part of the state a forward pass needs (what eval restores, and what a converted checkpoint holds);
  with ema, the EMA's."""
  if ema:
    return {"params": state.ema["params"], "batch_stats": state.ema["batch_stats"]}
  return {"params": state.params, "batch_stats": state.batch_stats}


ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017)


def make_eval_step(model, num_classes, normalize=None):
  """Sums over a padded batch (mask = 0 rows ignored): loss, top-1/top-5 hits, count, confusion matrix,
  and per confidence bin the count, summed confidence and hits (for the calibration error).
  normalize: (mean, std) for uint8 batches, as make_train_step's."""

  def eval_step(variables, batch):
    """`variables`: {'params', 'batch_stats'} (see model_variables): all that evaluation needs."""
    variables = {k: v for k, v in variables.items() if v}
    images = normalize_images(batch["image"], *(normalize or (None, None)))
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
    labels, mask = batch["label"], batch["mask"]
    loss = cross_entropy(logits, labels, num_classes)
    top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
    pred = top5[:, 0]
    hit5 = jnp.any(top5 == labels[:, None], axis=-1)
    confusion = jnp.einsum("bi,bj->ij", jax.nn.one_hot(labels, num_classes) * mask[:, None],
                           jax.nn.one_hot(pred, num_classes), preferred_element_type=jnp.float32)
    # Bin m holds confidences in (m/M, (m+1)/M]; the max softmax probability is never 0.
    confidence = jnp.max(jax.nn.softmax(logits), axis=-1)
    bins = jax.nn.one_hot(jnp.clip(jnp.ceil(confidence * ECE_BINS).astype(jnp.int32) - 1, 0, ECE_BINS - 1),
                          ECE_BINS) * mask[:, None]
    hit1 = (pred == labels) * mask
    return {"loss_sum": jnp.sum(loss * mask), "top1_hits": jnp.sum(hit1), "top5_hits": jnp.sum(hit5 * mask),
            "count": jnp.sum(mask), "confusion": confusion, "bin_count": jnp.sum(bins, 0),
            # Elementwise, not a matmul: accelerators may run float32 matmuls at reduced precision.
            "bin_confidence": jnp.sum(confidence[:, None] * bins, 0), "bin_hits": jnp.sum(hit1[:, None] * bins, 0)}

  return eval_step


def compute_dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


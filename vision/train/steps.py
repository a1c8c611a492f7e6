"""The train state and the pure step functions: train_step(state, batch) -> (state, metrics)."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any
  rng: jax.Array  # raw uint32 key data; per-step keys are fold_in(rng, step)


def init_state(model, tx, rng, image_shape) -> TrainState:
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, jnp.zeros(image_shape, jnp.float32),
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=jax.random.key_data(state_rng))


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  """Per-example softmax cross-entropy with label smoothing (Szegedy et al. 2016), float32."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing \
      else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _aux_logits(intermediates):
  """Every value sown under the name 'aux_logits' (GoogLeNet's auxiliary heads)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates)) if intermediates else {}
  return [v for path, vals in flat.items() if path[-1] == "aux_logits" for v in vals]


def make_train_step(model, tx, num_classes, label_smoothing=0.0, grad_accum_steps=1, aux_loss_weight=0.3,
                    batch_sharding=None):
  """Builds the pure step. BatchNorm statistics are over the global batch (XLA all-reduces them)."""

  def loss_fn(params, batch_stats, images, labels, rng):
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    logits, mutated = model.apply(variables, images, train=True, rngs={"dropout": rng},
                                  mutable=["batch_stats", "intermediates"])
    loss = jnp.mean(cross_entropy(logits, labels, num_classes, label_smoothing))
    for aux in _aux_logits(mutated.get("intermediates")):
      loss += aux_loss_weight * jnp.mean(cross_entropy(aux, labels, num_classes, label_smoothing))
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return loss, (correct, mutated.get("batch_stats", batch_stats))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, labels = batch["image"], batch["label"]
    if grad_accum_steps == 1:
      (loss, (correct, batch_stats)), grads = grad_fn(state.params, state.batch_stats, images, labels, rng)
    else:
      # Row r = m * accum + a: micro-batch a keeps the batch's split over devices.
      def micro(x):
        x = x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:]).swapaxes(0, 1)
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(
            x, jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec(None, "data")))

      def body(carry, xs):
        grads_sum, loss_sum, correct_sum, stats = carry
        i, im, lb = xs
        (l, (c, stats)), g = grad_fn(state.params, stats, im, lb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_sum, g), loss_sum + l, correct_sum + c, stats), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), state.batch_stats)
      (grads, loss, correct, batch_stats), _ = jax.lax.scan(
          body, init, (jnp.arange(grad_accum_steps), micro(images), micro(labels)))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      loss = loss / grad_accum_steps
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss, "top1": correct / labels.shape[0], "grad_norm": optax.global_norm(grads)}
    return new_state, metrics

  return train_step


def model_variables(state: TrainState) -> dict:
  """The part of the state a forward pass needs (what eval restores, and what a converted checkpoint holds)."""
  return {"params": state.params, "batch_stats": state.batch_stats}


ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017)


def make_eval_step(model, num_classes):
  """Sums over a padded batch (mask = 0 rows ignored): loss, top-1/top-5 hits, count, confusion matrix,
  and per confidence bin the count, summed confidence and hits (for the calibration error)."""

  def eval_step(variables, batch):
    """`variables`: {'params', 'batch_stats'} (see model_variables): all that evaluation needs."""
    variables = {k: v for k, v in variables.items() if v}
    logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
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


"""DINOv2's train state and step: student (gradients), EMA teacher and centers (no gradients).

Batch (global, sharded over the data axis by example):
  global_crops [B, 2, G, G, C], local_crops [B, L, l, l, C], masks bool [B, 2, N]
The teacher sees the unmasked global crops, the student the masked global
crops (mask token in place of masked patch embeddings) and the local crops.

Groups: the release collates and masks per GPU batch and computes KoLeo and
the iBOT center per GPU. We split the batch into `num_groups` contiguous
groups (one per device in the loop), mask per group (vision/data/masking.py)
and gather each group's masked patch tokens into a buffer of static size U
(the release's `upperbound`), so only masked patches go through the heads.
The DINO center and Sinkhorn-Knopp are over the global batch.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from vision.ssl import losses
from vision.train.steps import normalize_images


@flax.struct.dataclass
class SSLState:
  step: jax.Array
  params: Any  # the student: {'backbone', 'dino_head'[, 'ibot_head']}; the only tree with gradients
  teacher: Any  # same tree, EMA of the student
  centers: Any  # {'dino': [1, K], 'ibot': [1, K_ibot]}: running means of the teacher logits
  opt_state: Any
  rng: jax.Array  # raw key data; per-step keys are fold_in(rng, step)


@flax.struct.dataclass
class Networks:
  backbone: Any = flax.struct.field(pytree_node=False)
  dino_head: Any = flax.struct.field(pytree_node=False)
  ibot_head: Any = flax.struct.field(pytree_node=False)  # None: iBOT shares the DINO head


def init_params(nets: Networks, rng, crop_size: int, channels: int) -> dict:
  b_rng, d_rng, i_rng = jax.random.split(rng, 3)
  x = jnp.zeros((1, crop_size, crop_size, channels), jnp.float32)
  backbone = nets.backbone.init({"params": b_rng}, x, train=False, method="forward_features")["params"]
  dim = nets.backbone.embed_dim
  params = {"backbone": backbone, "dino_head": nets.dino_head.init(d_rng, jnp.zeros((1, dim)))["params"]}
  if nets.ibot_head is not None:
    params["ibot_head"] = nets.ibot_head.init(i_rng, jnp.zeros((1, dim)))["params"]
  return params


def init_state(nets: Networks, tx, rng, crop_size: int, channels: int) -> SSLState:
  params_rng, state_rng = jax.random.split(rng)
  params = init_params(nets, params_rng, crop_size, channels)
  ibot_dim = (nets.ibot_head or nets.dino_head).out_dim
  return SSLState(step=jnp.zeros((), jnp.int32), params=params, teacher=jax.tree.map(jnp.copy, params),
                  centers={"dino": jnp.zeros((1, nets.dino_head.out_dim)), "ibot": jnp.zeros((1, ibot_dim))},
                  opt_state=tx.init(params), rng=jax.random.key_data(state_rng))


def masked_positions(masks, num_groups: int, upper: int):
  """Where each group's masked patches are, padded to `upper`.

  masks: bool [B, G, N]. Returns (index [groups, upper] into the group's flattened (b, g, n) tokens,
  valid [groups, upper], weight [groups, upper] = 1 / (masked patches of that image), 0 for padding).
  """
  m = masks.reshape(num_groups, -1)
  order = jnp.argsort(~m, axis=-1, stable=True)[:, :upper]  # masked first, in patch order
  valid = jnp.arange(upper)[None, :] < jnp.sum(m, axis=-1, keepdims=True)
  per_image = 1.0 / jnp.maximum(jnp.sum(masks, axis=-1, keepdims=True), 1).astype(jnp.float32)
  weight = jnp.broadcast_to(per_image, masks.shape).reshape(num_groups, -1)
  return order, valid, jnp.take_along_axis(weight, order, axis=1) * valid


def gather_tokens(tokens, index):
  """tokens [B*G, N, D] (row b*G + g) -> [groups * upper, D] at `index` (see masked_positions)."""
  groups = index.shape[0]
  flat = tokens.reshape(groups, -1, tokens.shape[-1])
  return jnp.take_along_axis(flat, index[..., None], axis=1).reshape(-1, tokens.shape[-1])


def _heads(nets, params, cls_tokens, patch_tokens):
  """(class-token logits, patch logits): one DINO head call for both when the head is shared."""
  if patch_tokens is None:
    return nets.dino_head.apply({"params": params["dino_head"]}, cls_tokens), None
  if nets.ibot_head is None:
    out = nets.dino_head.apply({"params": params["dino_head"]}, jnp.concatenate([cls_tokens, patch_tokens]))
    return out[:cls_tokens.shape[0]], out[cls_tokens.shape[0]:]
  return (nets.dino_head.apply({"params": params["dino_head"]}, cls_tokens),
          nets.ibot_head.apply({"params": params["ibot_head"]}, patch_tokens))


def make_train_step(nets: Networks, tx, schedules, s, num_groups: int = 1, mask_upper_bound: int = 0, mesh=None,
                    normalize=None):
  """Builds train_step(state, batch) -> (state, metrics). `s` is config.ssl.

  normalize: (mean, std) for uint8 crops (config.data.uint8_batches), normalised on the device.

  mask_upper_bound: U, the static number of masked-patch slots per group (0 disables iBOT).
  mesh: given, Sinkhorn-Knopp runs under shard_map with explicit psums over its 'data' axis.
  """
  use_ibot = s.ibot_loss_weight > 0 and mask_upper_bound > 0
  sk = (lambda t, temp, valid=None: losses.sinkhorn_knopp_sharded(t, temp, mesh, valid=valid)) if mesh is not None \
      else (lambda t, temp, valid=None: losses.sinkhorn_knopp(t, temp, valid=valid))

  def teacher_targets(teacher, centers, glob, index, valid, temp):
    out = nets.backbone.apply({"params": teacher["backbone"]}, glob, train=False, method="forward_features")
    cls = out["x_norm_clstoken"]
    patches = gather_tokens(out["x_norm_patchtokens"], index) if use_ibot else None
    cls_logits, patch_logits = _heads(nets, teacher, cls, patches)
    cls_logits = cls_logits.astype(jnp.float32)
    stats = {"cls": cls}
    if s.centering == "sinkhorn_knopp":
      cls_probs = sk(cls_logits, temp)
      patch_probs = sk(patch_logits.astype(jnp.float32), temp, valid.reshape(-1)) if use_ibot else None
      return cls_probs, patch_probs, centers, stats
    cls_probs = losses.softmax_center(cls_logits, centers["dino"], temp)
    new = {"dino": losses.update_center(centers["dino"], jnp.mean(cls_logits, 0, keepdims=True), s.center_momentum),
           "ibot": centers["ibot"]}
    patch_probs = None
    if use_ibot:
      patch_logits = patch_logits.astype(jnp.float32)
      patch_probs = losses.softmax_center(patch_logits, centers["ibot"], temp)
      # The release: each device's mean over its masked patches, averaged over devices.
      per_group = patch_logits.reshape(num_groups, -1, patch_logits.shape[-1])
      counts = jnp.maximum(jnp.sum(valid, axis=1), 1)[:, None]
      means = jnp.sum(per_group * valid[..., None], axis=1) / counts
      new["ibot"] = losses.update_center(centers["ibot"], jnp.mean(means, 0, keepdims=True), s.center_momentum)
    return cls_probs, patch_probs, new, stats

  def loss_fn(params, targets, glob, local, flat_masks, index, weight, rng):
    cls_probs, patch_probs = targets
    b = glob.shape[0] // 2
    n_local = local.shape[0] // b
    g_rng, l_rng = jax.random.split(rng)
    out_g = nets.backbone.apply({"params": params["backbone"]}, glob, train=True, masks=flat_masks,
                                method="forward_features", rngs={"dropout": g_rng})
    cls_l = nets.backbone.apply({"params": params["backbone"]}, local, train=True, method="forward_features",
                                rngs={"dropout": l_rng})["x_norm_clstoken"]
    cls_g = out_g["x_norm_clstoken"]
    patches = gather_tokens(out_g["x_norm_patchtokens"], index) if use_ibot else None
    cls_logits, patch_logits = _heads(nets, params, jnp.concatenate([cls_g, cls_l]), patches)
    k = cls_logits.shape[-1]
    student = jnp.concatenate([cls_logits[:2 * b].reshape(b, 2, k), cls_logits[2 * b:].reshape(b, n_local, k)], 1)
    dino = losses.dino_loss(student, cls_probs.reshape(b, 2, k), s.student_temp)
    ibot = losses.ibot_loss(patch_logits, patch_probs, weight.reshape(-1), 2 * b, s.student_temp) if use_ibot \
        else jnp.zeros((), jnp.float32)
    # KoLeo per group (the release: per GPU), per global crop, summed over the two crops.
    per_group = cls_g.reshape(num_groups, b // num_groups, 2, -1)
    koleo = sum(jnp.mean(jax.vmap(losses.koleo_loss)(per_group[:, :, c])) for c in range(2))
    loss = s.dino_loss_weight * dino + s.ibot_loss_weight * ibot + s.koleo_loss_weight * koleo
    return loss, {"dino_loss": dino, "ibot_loss": ibot, "koleo_loss": koleo}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def student_inputs(state: SSLState, batch):
    """(loss_fn's arguments after params, (new centers, teacher stats, teacher temperature)): the crops, masks and
    the teacher's targets (no gradients) for this step."""
    glob, local, masks = batch["global_crops"], batch["local_crops"], batch["masks"]
    glob, local = (normalize_images(x, *(normalize or (None, None))) for x in (glob, local))
    b, n_local = glob.shape[0], local.shape[1]
    glob = glob.reshape(b * 2, *glob.shape[2:])  # row b * 2 + crop: each device keeps its examples
    local = local.reshape(b * n_local, *local.shape[2:])
    temp = schedules.teacher_temp(state.step)
    if use_ibot:
      index, valid, weight = masked_positions(masks, num_groups, mask_upper_bound)
      flat_masks = masks.reshape(b * 2, -1)
    else:
      index = valid = weight = flat_masks = None
    cls_probs, patch_probs, centers, stats = jax.lax.stop_gradient(
        teacher_targets(state.teacher, state.centers, glob, index, valid, temp))
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    return ((cls_probs, patch_probs), glob, local, flat_masks, index, weight, rng), (centers, stats, temp)

  def train_step(state: SSLState, batch):
    inputs, (centers, stats, temp) = student_inputs(state, batch)
    cls_probs = inputs[0][0]
    (loss, parts), grads = grad_fn(state.params, *inputs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = schedules.momentum(state.step)
    teacher = jax.tree.map(lambda t, p: t * m + p * (1.0 - m), state.teacher, params)
    new_state = state.replace(step=state.step + 1, params=params, teacher=teacher, centers=centers,
                              opt_state=opt_state)
    metrics = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads), "teacher_temp": temp, "momentum": m,
               "lr": schedules.lr(state.step), "weight_decay": schedules.weight_decay(state.step),
               **collapse_metrics(cls_probs, stats["cls"])}
    return new_state, metrics

  # What the gradient is taken of, for measuring it (vision.tools.bench: the bytes its backward keeps):
  # loss_fn(state.params, *student_inputs(state, batch)[0]) -> (loss, parts).
  train_step.student_loss = (loss_fn, student_inputs)
  return train_step


def collapse_metrics(teacher_probs, teacher_cls):
  """Collapse shows here first: a uniform teacher has entropy log K, a constant one has marginal entropy 0
  and feature std 0 (a healthy D-dim unit vector spread has std near 1/sqrt(D))."""
  features = teacher_cls.astype(jnp.float32)
  features = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
  return {"teacher_entropy": jnp.mean(losses.entropy(teacher_probs)),
          "teacher_marginal_entropy": losses.entropy(jnp.mean(teacher_probs, axis=0)),
          "teacher_feature_std": jnp.mean(jnp.std(features, axis=0))}

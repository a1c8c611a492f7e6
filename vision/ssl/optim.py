"""DINOv2's optimizer as an optax chain (dinov2/train/train.py, utils/param_groups.py).

  clip each student submodule's gradient (backbone, dino_head, ibot_head) to norm 3 separately
  -> Adam moments (b1 0.9, b2 0.999) -> + wd(t) x param (not biases, norms, layer scales)
  -> x -lr(t) x per-parameter multiplier

which is PyTorch's AdamW (decay multiplied by the same lr) with the release's
parameter groups: layer-wise lr decay 0.9 ** (depth + 1 - layer) where the
patch embedding, position embedding and tokens are layer 0 and block i is
layer i + 1 (the final norm and the heads get 1); the patch embedding x 0.2
more; the last (prototype) layers' lr is 0 for the first epoch. Unlike
classification (vision/train/optim.py), the release decays position
embeddings and tokens; we follow it.
"""
import re

import jax
import jax.numpy as jnp
import optax

from vision.train.checkpoint import path_str

LAYER0 = ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token")


def _backbone_depth(params) -> int:
  return sum(1 for k in params.get("backbone", {}) if re.fullmatch(r"blocks_\d+", k))


def lr_multipliers(params, layerwise_decay: float, patch_embed_mult: float):
  """A pytree of Python floats like params: the release's lr_multiplier per parameter."""
  depth = _backbone_depth(params)

  def mult(path, _):
    keys = path_str(path).split("/")
    if keys[0] != "backbone":
      return 1.0
    name = keys[1]
    layer = 0 if name in LAYER0 else int(name.split("_")[1]) + 1 if re.fullmatch(r"blocks_\d+", name) else depth + 1
    m = layerwise_decay ** (depth + 1 - layer)
    return m * patch_embed_mult if name == "patch_embed" else m
  return jax.tree_util.tree_map_with_path(mult, params)


def decay_mask(params):
  """The release's wd_multiplier: no decay for biases, anything named *norm*, and layer scales (gamma)."""
  def decayed(path, _):
    keys = path_str(path).split("/")
    return not (keys[-1] == "bias" or keys[-1] == "gamma" or any("norm" in k for k in keys))
  return jax.tree_util.tree_map_with_path(decayed, params)


def last_layer_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: "last_layer" in path_str(path).split("/"), params)


def clip_per_submodule(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping of each top-level subtree on its own (the release clips each student module)."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    del params
    return {k: clip.update(v, optax.EmptyState())[0] for k, v in updates.items()}, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_scheduled_lr(schedule, multipliers, freeze_steps: int) -> optax.GradientTransformation:
  """updates x -schedule(t) x multiplier, and x 0 for the last layers while t < freeze_steps.

  multipliers(tree) -> the per-leaf lr multipliers (Python floats) of a tree like the params.
  """

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    lr = schedule(state.count)
    thawed = (state.count >= freeze_steps).astype(jnp.float32)
    updates = jax.tree.map(lambda u, m, f: -lr * m * (thawed if f else 1.0) * u, updates, multipliers(updates),
                           last_layer_mask(updates))
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return optax.GradientTransformation(init, update)


def make_optimizer(config, schedules) -> optax.GradientTransformation:
  """For the student's tree {'backbone', 'dino_head'[, 'ibot_head']}; the groups are read from the leaf paths."""
  o, s = config.optim, config.ssl
  chain = []
  if s.clip_grad > 0:
    chain.append(clip_per_submodule(s.clip_grad))
  multipliers = lambda tree: lr_multipliers(tree, s.layerwise_decay, s.patch_embed_lr_mult)
  chain += [optax.scale_by_adam(o.b1, o.b2, o.eps),
            optax.add_decayed_weights(schedules.weight_decay, decay_mask),
            scale_by_scheduled_lr(schedules.lr, multipliers, schedules.freeze_last_layer_steps)]
  return optax.chain(*chain)

"""Learning-rate schedules and optimizers from config.optim (all optax).

Parameter groups are read from the leaf paths ('layer4_1/conv2/kernel'):
weight decay only on weights (decay_mask), frozen parameters
(config.train.freeze) get no update and no optimizer state, and each leaf's
update is scaled by its lr multiplier (layer-wise decay, backbone vs head).
"""
import re

import jax
import optax

from vision.train.checkpoint import path_str


def lr_schedule(o, steps_per_epoch: int, total_steps: int):
  """Linear warmup from 0 over warmup_epochs, then cosine / step / exponential / constant."""
  warmup = int(round(o.warmup_epochs * steps_per_epoch))
  if o.schedule == "cosine":
    main = optax.cosine_decay_schedule(o.lr, max(total_steps - warmup, 1), alpha=o.end_lr_factor)
  elif o.schedule == "exponential":
    main = optax.exponential_decay(o.lr, max(1, int(round(o.decay_epochs * steps_per_epoch))), o.decay_rate,
                                   staircase=True)
  elif o.schedule == "step":
    bounds = {int(round(e * steps_per_epoch)) - warmup: o.step_factor for e in o.step_epochs}
    main = optax.piecewise_constant_schedule(o.lr, {b: f for b, f in bounds.items() if b > 0})
  else:
    main = optax.constant_schedule(o.lr)
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(o.lr * o.warmup_init_factor, o.lr, warmup), main], [warmup])


# Multi-dimensional parameters that are not weights either (timm's no_weight_decay(), DeiT, Swin):
# position embeddings, class/register/mask tokens, Swin's relative position bias table.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token", "relative_position_bias_table")


def decay_mask(params):
  """Weight decay only on kernels (ndim > 1): not on biases, norm scales/offsets, layer scales, tokens and
  position embeddings or biases (NO_DECAY_NAMES)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim > 1 and getattr(path[-1], "key", None) not in NO_DECAY_NAMES, params)


# Layer order for layer-wise lr decay: the stem (embeddings, first conv) is layer 0, then blocks in the order of
# their indices (ViT blocks_i, ResNet layerX_Y, torchvision-layout features_i[_j], stages_i_blocks_j), then the
# rest (final norm, classifier) on top.
_STEM = re.compile(r"(patch_embed|pos_embed|cls_token|reg_token|mask_token|conv1|bn1|stem\w*|features_0(_\d+)?)")
_BLOCK = re.compile(r"(?:blocks|layer|features|stages)_?(\d+)(?:_(?:blocks_)?(\d+))?")


def layer_ids(params) -> tuple[dict, int]:
  """({top-level module name: layer id}, number of layers + 1 = the id of the top)."""
  order = {}
  for name in params:
    m = _BLOCK.fullmatch(name)
    if m and not _STEM.fullmatch(name):
      order[name] = tuple(int(g) for g in m.groups() if g is not None)
  ranks = {key: i + 1 for i, key in enumerate(sorted(set(order.values())))}
  top = len(ranks) + 1
  return {name: 0 if _STEM.fullmatch(name) else ranks[order[name]] if name in order else top
          for name in params}, top


def lr_multipliers(params, o, head=None):
  """A tree like params of Python floats: layer_decay ** (top - layer) x (backbone_lr_mult off the head).

  head: a tree of bools like params, True on the classifier (see head_mask); None: no backbone multiplier.
  """
  ids, top = layer_ids(params)
  head = head if head is not None else jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _, h: o.layer_decay ** (top - ids[path[0].key]) * (1.0 if h else o.backbone_lr_mult),
      params, head)


def head_mask(params, params_other_classes):
  """True on the leaves whose shape depends on the number of classes (the classifier), from two abstract trees."""
  return jax.tree.map(lambda a, b: a.shape != b.shape, params, params_other_classes)


def frozen_mask(params, pattern: str):
  """True on the leaves whose path matches `pattern` (config.train.freeze)."""
  regex = re.compile(pattern) if pattern else None
  return jax.tree_util.tree_map_with_path(lambda path, _: bool(regex and regex.search(path_str(path))), params)


def scale_per_leaf(multipliers) -> optax.GradientTransformation:
  """updates x a fixed Python float per leaf (skips the multiplication where it is 1)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, multipliers), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(o, schedule, params=None, head=None, freeze: str = "") -> optax.GradientTransformation:
  """config.optim's optimizer. params (abstract is enough), head and freeze: for the parameter groups."""
  tx = _base_optimizer(o, schedule)
  if params is None:
    return tx
  frozen = frozen_mask(params, freeze)
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  # Outside multi_transform, whose inner transforms see the frozen leaves masked out of the tree.
  multipliers = lr_multipliers(params, o, head if o.backbone_lr_mult != 1.0 else None)
  if any(m != 1.0 for m in jax.tree.leaves(multipliers)):
    tx = optax.chain(tx, scale_per_leaf(multipliers))
  return tx


def _base_optimizer(o, schedule) -> optax.GradientTransformation:
  mask = None if o.decay_norm_and_bias else decay_mask
  chain = []
  if o.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if o.name in ("sgd", "nesterov"):
    # PyTorch SGD semantics: decay is added to the gradient before momentum.
    if o.weight_decay > 0:
      chain.append(optax.add_decayed_weights(o.weight_decay, mask))
    chain.append(optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.name == "nesterov"))
  elif o.name == "rmsprop":
    # TensorFlow's RMSProp (the EfficientNet/MobileNet recipes): mean square starts at 1, eps inside the sqrt,
    # L2 decay added to the gradient.
    if o.weight_decay > 0:
      chain.append(optax.add_decayed_weights(o.weight_decay, mask))
    chain.append(optax.rmsprop(schedule, decay=o.rms_decay, eps=o.eps, initial_scale=1.0, eps_in_sqrt=True,
                               momentum=o.momentum or None))
  elif o.name == "adamw":
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask))
  elif o.name == "lars":
    # Trust ratio and decay on weights only (as decay_mask; the LARS paper leaves out BN and biases).
    keep = decay_mask if mask is not None else True
    chain.append(optax.lars(schedule, o.weight_decay, keep, o.trust_coefficient, momentum=o.momentum,
                            trust_ratio_mask=decay_mask))
  elif o.name == "lamb":
    chain.append(optax.lamb(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask))
  else:
    raise ValueError(f"unknown optimizer {o.name!r}")
  return optax.chain(*chain)

"""Learning-rate schedules and optimizers from config.optim (all optax)."""
import jax
import optax


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
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), main], [warmup])


# Multi-dimensional parameters that are not weights either (timm's no_weight_decay(), DeiT, Swin):
# position embeddings, class/register/mask tokens, Swin's relative position bias table.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token", "relative_position_bias_table")


def decay_mask(params):
  """Weight decay only on kernels (ndim > 1): not on biases, norm scales/offsets, layer scales, tokens and
  position embeddings or biases (NO_DECAY_NAMES)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim > 1 and getattr(path[-1], "key", None) not in NO_DECAY_NAMES, params)


def make_optimizer(o, schedule) -> optax.GradientTransformation:
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
  else:
    raise ValueError(f"unknown optimizer {o.name!r}")
  return optax.chain(*chain)

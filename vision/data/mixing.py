"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on the device, inside the jitted train step.

One mixing coefficient per batch, as timm's Mixup(mode='batch') and torchvision's
RandomMixup/RandomCutmix: lam ~ Beta(alpha, alpha); each image is mixed with
the image at the mirrored position of the global batch (x[::-1]); with both
enabled, CutMix is chosen with probability `switch_prob`; the whole batch is
mixed with probability `prob`. CutMix pastes one box of area fraction
1 - lam (centre uniform, clipped to the image) and corrects lam to the box's
true area. Targets are lam * smooth(y) + (1 - lam) * smooth(y[::-1]) with
label smoothing as timm's (off = eps / K, on = 1 - eps + off), so they sum to
one. Pure jax: no TensorFlow, shardable with the batch.
"""
import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes, smoothing=0.0):
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(rng, height, width, lam):
  """Boolean [H, W] box of area ~ (1 - lam) H W with a uniform centre, and lam for its clipped area."""
  cut = jnp.sqrt(1.0 - lam)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  hh, hw = (jnp.int32(jnp.floor(height * cut)) // 2, jnp.int32(jnp.floor(width * cut)) // 2)
  top, bottom = jnp.clip(cy - hh, 0, height), jnp.clip(cy + hh, 0, height)
  left, right = jnp.clip(cx - hw, 0, width), jnp.clip(cx + hw, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  return box, 1.0 - (bottom - top) * (right - left) / (height * width)


def mix(rng, images, labels, num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, prob=1.0,
        label_smoothing=0.0):
  """(mixed images, soft targets [B, num_classes] float32). With both alphas 0: (images, smoothed one-hot)."""
  targets = smooth_one_hot(labels, num_classes, label_smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  k_apply, k_switch, k_lam, k_box = jax.random.split(rng, 4)
  use_cutmix = (cutmix_alpha > 0) & ((mixup_alpha <= 0) | (jax.random.uniform(k_switch) < switch_prob))
  alpha = jnp.where(use_cutmix, max(cutmix_alpha, 1e-6), max(mixup_alpha, 1e-6))
  lam = jax.random.beta(k_lam, alpha, alpha)
  lam = jnp.where(jax.random.uniform(k_apply) < prob, lam, 1.0)
  flipped = images[::-1]
  box, box_lam = cutmix_box(k_box, images.shape[1], images.shape[2], lam)
  cut = jnp.where(box[None, :, :, None], flipped, images)
  blended = (lam * images.astype(jnp.float32) + (1.0 - lam) * flipped.astype(jnp.float32)).astype(images.dtype)
  lam = jnp.where(use_cutmix & (lam < 1.0), box_lam, lam)
  mixed = jnp.where(use_cutmix, cut, blended)
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]

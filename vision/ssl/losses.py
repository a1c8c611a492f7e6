"""DINOv2's losses and teacher targets (Oquab et al. 2023): DINO, iBOT, KoLeo, centering, Sinkhorn-Knopp.

Pure functions of arrays. Teacher logits become targets by softmax centering
(a running mean of the teacher logits is subtracted, Caron et al. 2021) or by
Sinkhorn-Knopp (SwAV; DINOv2's `sinkhorn_knopp` option). Every loss is in
float32 whatever the compute dtype.

Sums that span the global batch (the center, Sinkhorn-Knopp's normalisers)
are plain reductions over global arrays: under jit, XLA inserts the
all-reduces. `sinkhorn_knopp(..., axis_name=...)` spells the collectives out
for use inside `jax.shard_map`, as the release's torch.distributed code does;
`sinkhorn_knopp_sharded` is that wrapper.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def softmax_center(teacher_logits, center, temp):
  """Teacher targets by centering then sharpening: softmax((t - center) / temp)."""
  return jax.nn.softmax((teacher_logits.astype(jnp.float32) - center) / temp, axis=-1)


def update_center(center, batch_mean, momentum):
  """EMA of the teacher logits' batch mean; the new center is used from the next step on (as the release)."""
  return center * momentum + batch_mean * (1.0 - momentum)


def _logsumexp(x, axis, axis_name=None):
  """log(sum(exp(x))) over `axis` (None: all) and, with axis_name, over the devices too; -inf when empty."""
  m = jnp.max(x, axis=axis, keepdims=True)
  if axis_name is not None:
    m = jax.lax.pmax(m, axis_name)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return m + jnp.log(_psum(jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True), axis_name))


def sinkhorn_knopp(teacher_logits, temp, n_iterations=3, valid=None, axis_name=None):
  """Balanced soft assignment of rows (samples) to columns (prototypes); each valid row sums to one.

  teacher_logits: [B, K] (this device's rows when axis_name is given).
  valid: optional bool [B]; invalid rows (padding) get zero weight and zero targets, and the
  number of samples B is the number of valid rows over all devices (iBOT's masked patches).
  The release's iterations (normalise Q to sum 1; then 3 x: each prototype's total to 1/K over all
  devices, each sample's to 1/B; finally x B), done in the log domain in float32: exp(t / 0.04)
  overflows float32 for logits above ~3.5, and subtracting a maximum instead underflows whole rows.
  """
  log_q = teacher_logits.astype(jnp.float32) / temp
  valid = jnp.ones(log_q.shape[0], bool) if valid is None else valid
  log_q = jnp.where(valid[:, None], log_q, -jnp.inf)
  n_samples = _psum(jnp.sum(valid.astype(jnp.float32)), axis_name)
  log_k, log_b = math.log(log_q.shape[1]), jnp.log(n_samples)
  log_q = log_q - _logsumexp(log_q, None, axis_name)
  for _ in range(n_iterations):
    log_q = log_q - _logsumexp(log_q, 0, axis_name) - log_k  # each prototype: total 1/K over all devices' samples
    log_q = log_q - jnp.where(valid[:, None], _logsumexp(log_q, 1), 0.0) - log_b  # each sample: 1/B (local)
  return jnp.where(valid[:, None], jnp.exp(log_q + log_b), 0.0)


def sinkhorn_knopp_sharded(teacher_logits, temp, mesh, n_iterations=3, valid=None, axis="data"):
  """sinkhorn_knopp over rows sharded on `axis` of `mesh`, with explicit psums of the normalisers."""
  fn = functools.partial(sinkhorn_knopp, n_iterations=n_iterations, axis_name=axis)
  if valid is None:
    valid = jnp.ones(teacher_logits.shape[0], bool)
  return jax.shard_map(lambda t, tp, v: fn(t, tp, valid=v), mesh=mesh, in_specs=(P(axis), P(), P(axis)),
                       out_specs=P(axis))(teacher_logits, jnp.asarray(temp, jnp.float32), valid)


def cross_entropy(targets, student_logits, student_temp):
  """-sum_k targets_k log softmax(student / temp)_k over the last axis, float32."""
  log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
  return -jnp.sum(targets * log_p, axis=-1)


def dino_loss(student_logits, teacher_probs, student_temp=0.1):
  """DINO's cross-entropy over every (student crop, teacher crop) pair of different views.

  student_logits: [B, C, K], crops 0..G-1 the global crops (the ones the teacher saw), then the locals.
  teacher_probs: [B, G, K]. A global crop is not compared with itself. Returns the mean over images
  of the sum over pairs, divided by the number of pairs (the release's n_global_crops_loss_terms +
  n_local_crops_loss_terms): 2 x 1 + 8 x 2 = 18 for 2 global and 8 local crops.
  """
  log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
  ce = -jnp.einsum("bgk,bck->bcg", teacher_probs.astype(jnp.float32), log_p)  # [B, C, G]
  n_crops, n_global = student_logits.shape[1], teacher_probs.shape[1]
  pairs = 1.0 - jnp.eye(n_crops, n_global, dtype=jnp.float32)  # drop (crop g, teacher g)
  return jnp.sum(jnp.mean(ce, axis=0) * pairs) / jnp.sum(pairs)


def ibot_loss(student_logits, teacher_probs, weight, num_images, student_temp=0.1):
  """iBOT's masked-patch cross-entropy, each image's patches weighted 1 / (its number of masked patches).

  student_logits, teacher_probs: [M, K] for M gathered patches (padding included);
  weight: [M], 1 / n_masked(image) for a masked patch and 0 for padding;
  num_images: the number of global crops in the batch (masked or not), the release's denominator.
  """
  return jnp.sum(cross_entropy(teacher_probs, student_logits, student_temp) * weight) / num_images


def koleo_loss(x, eps=1e-8):
  """Kozachenko-Leonenko entropy estimator (Sablayrolles et al. 2019) on L2-normalised rows of x: [N, D].

  -mean_i log(||x_i - x_nn(i)|| + eps), the nearest neighbour by inner product, itself excluded.
  The distance is torch's pairwise_distance(eps=1e-8): ||x_i - x_j + eps||.
  """
  x = x.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
  dots = x @ x.T
  n = x.shape[0]
  dots = jnp.where(jnp.eye(n, dtype=bool), -1.0, dots)  # the release fills the diagonal with -1
  nn = jnp.argmax(dots, axis=1)
  dist = jnp.linalg.norm(x - x[nn] + eps, axis=-1)
  return -jnp.mean(jnp.log(dist + eps))


def entropy(probs, axis=-1):
  """Shannon entropy in nats (0 log 0 = 0)."""
  probs = probs.astype(jnp.float32)
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=axis)

"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO, DINOv2 eval/knn.py).

Features are L2-normalised; similarity is the cosine. Each test image takes
its max(k) most similar training images; their votes are softmax(sim / T)
over those neighbours (T = 0.07) and class scores for a given k sum the votes
of the first k. Works on any (features, labels): see features.py for how to
get them from any backbone.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def normalize(x):
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("ks", "num_classes"))
def _chunk_hits(query, query_labels, train, train_labels, ks, num_classes, temperature):
  sims = normalize(query) @ train.T
  top_sims, idx = jax.lax.top_k(sims, max(ks))
  votes = jax.nn.softmax(top_sims / temperature, axis=-1)[..., None] * jax.nn.one_hot(train_labels[idx], num_classes)
  out = {}
  for k in ks:
    scores = jnp.sum(votes[:, :k], axis=1)
    top5 = jax.lax.top_k(scores, min(5, num_classes))[1]
    out[k] = (jnp.sum(top5[:, 0] == query_labels), jnp.sum(jnp.any(top5 == query_labels[:, None], axis=-1)))
  return out


def knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                 ks=(10, 20, 100, 200), temperature=0.07, chunk=1024) -> dict:
  """{k: {'top1', 'top5'}} for each k (clipped to the number of training images)."""
  train = normalize(train_features)
  train_labels = jnp.asarray(train_labels, jnp.int32)
  ks = tuple(sorted({min(int(k), train.shape[0]) for k in ks}))
  hits = {k: np.zeros(2) for k in ks}
  n = len(test_labels)
  for start in range(0, n, chunk):
    out = _chunk_hits(jnp.asarray(test_features[start:start + chunk]), jnp.asarray(test_labels[start:start + chunk],
                      jnp.int32), train, train_labels, ks, num_classes, temperature)
    for k, (h1, h5) in jax.device_get(out).items():
      hits[k] += (h1, h5)
  return {k: {"top1": float(h[0]) / n, "top5": float(h[1]) / n} for k, h in hits.items()}

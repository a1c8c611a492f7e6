"""Linear probes on frozen features: a grid of (feature set x learning rate) trained at once (DINOv2 eval/linear.py).

Feature sets from features.py: for a ViT, the class token of the last block
('cls1') or the last 4 ('cls4', concatenated), each alone or with the mean
patch token ('cls1+avg', 'cls4+avg'); for other backbones the pooled
features. Every (set, lr) gets its own linear layer (weights N(0, 0.01), zero
bias), all trained together by SGD with momentum 0.9, no weight decay, lr x
batch/256 with a cosine decay to 0, on shuffled mini-batches. The best is
chosen by top-1 on a held-out part of the training split (val_fraction), or,
with val_fraction=0, on the evaluation split itself as the release does, and
its evaluation-split accuracy reported.

Departure from the release: features are computed once (evaluation
transform) instead of on randomly cropped and flipped training images every
epoch, which makes the probe minutes instead of hours but a little weaker.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax


def feature_sets(features: dict) -> dict:
  """{name: [N, D]} inputs of the probes from the dict of features.feature_fn."""
  if "cls" not in features:
    return {"pooled": features["pooled"]}
  cls, avg = features["cls"], features["patch_mean"]
  sets = {"cls1": cls[:, -1], "cls1+avg": np.concatenate([cls[:, -1], avg], axis=1)}
  if cls.shape[1] >= 4:
    cls4 = cls[:, -4:].reshape(len(cls), -1)
    sets.update({"cls4": cls4, "cls4+avg": np.concatenate([cls4, avg], axis=1)})
  return sets


def _split(n, val_fraction, seed):
  order = np.random.default_rng(seed).permutation(n)
  n_val = int(round(n * val_fraction))
  return order[n_val:], order[:n_val]


def train_probes(sets: dict, labels, num_classes: int, lrs, epochs: float, batch_size: int, seed: int = 0) -> dict:
  """Trains one linear layer per (set, lr); returns params {set: {'kernel': [L, D, C], 'bias': [L, C]}}."""
  n = len(labels)
  batch_size = min(batch_size, n)
  steps_per_epoch = max(1, n // batch_size)
  total = max(1, int(round(epochs * steps_per_epoch)))
  scaled = jnp.asarray(lrs, jnp.float32) * batch_size / 256.0
  key = jax.random.key(seed)
  params = {}
  for i, (name, x) in enumerate(sets.items()):
    w = 0.01 * jax.random.normal(jax.random.fold_in(key, i), (len(lrs), x.shape[1], num_classes))
    params[name] = {"kernel": w, "bias": jnp.zeros((len(lrs), num_classes))}
  # One optimizer for all probes: SGD(momentum) with lr 1, then each probe's gradient scaled by its own lr.
  tx = optax.chain(optax.trace(decay=0.9), optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, total)))
  opt_state = tx.init(params)

  def loss_fn(params, xs, y):
    total_loss = 0.0
    for name, x in xs.items():
      logits = jnp.einsum("bd,ldc->lbc", x, params[name]["kernel"]) + params[name]["bias"][:, None]
      # Summed over probes: each probe's gradient is that of its own mean loss.
      total_loss += jnp.sum(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[None]), axis=1))
    return total_loss

  @jax.jit
  def step(params, opt_state, xs, y):
    grads = jax.grad(loss_fn)(params, xs, y)
    updates, opt_state = tx.update(grads, opt_state)
    updates = jax.tree.map(lambda u: -u * scaled.reshape((-1,) + (1,) * (u.ndim - 1)), updates)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  order = np.zeros(0, np.int64)
  for _ in range(total):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:batch_size], order[batch_size:]
    params, opt_state = step(params, opt_state, {k: jnp.asarray(v[idx]) for k, v in sets.items()},
                             jnp.asarray(labels[idx], jnp.int32))
  return params


def accuracies(params, sets: dict, labels, chunk=4096) -> dict:
  """{set: [L] top-1 accuracy of each lr's probe}."""
  out = {}
  for name, x in sets.items():
    hits = 0
    for start in range(0, len(labels), chunk):
      logits = jnp.einsum("bd,ldc->lbc", jnp.asarray(x[start:start + chunk]), params[name]["kernel"])
      logits = logits + params[name]["bias"][:, None]
      hits = hits + jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(labels[start:start + chunk])[None], axis=1)
    out[name] = np.asarray(hits) / len(labels)
  return out


def linear_probe(train_features: dict, train_labels, eval_features: dict, eval_labels, num_classes: int,
                 lrs=(1e-4, 1e-3, 1e-2, 0.1), epochs=10.0, batch_size=1024, val_fraction=0.1, seed=0) -> dict:
  """Trains the grid, picks the best probe on validation data, returns its eval top-1 and the whole grid."""
  train_sets, eval_sets = feature_sets(train_features), feature_sets(eval_features)
  train_labels, eval_labels = np.asarray(train_labels), np.asarray(eval_labels)
  fit_idx, val_idx = _split(len(train_labels), val_fraction, seed) if val_fraction > 0 else \
      (np.arange(len(train_labels)), None)
  params = train_probes({k: v[fit_idx] for k, v in train_sets.items()}, train_labels[fit_idx], num_classes, lrs,
                        epochs, batch_size, seed)
  test = accuracies(params, eval_sets, eval_labels)
  val = test if val_idx is None else accuracies(params, {k: v[val_idx] for k, v in train_sets.items()},
                                                train_labels[val_idx])
  best = max(((name, i) for name in val for i in range(len(lrs))), key=lambda t: (val[t[0]][t[1]], -t[1]))
  grid = {f"{name}_lr{lr:g}": {"val_top1": float(val[name][i]), "top1": float(test[name][i])}
          for name in test for i, lr in enumerate(lrs)}
  return {"top1": float(test[best[0]][best[1]]), "best": {"features": best[0], "lr": float(lrs[best[1]]),
          "val_top1": float(val[best[0]][best[1]])}, "selected_on": "eval" if val_idx is None else "held-out train",
          "grid": grid}

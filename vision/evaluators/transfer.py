"""Frozen-backbone evaluation of any classification checkpoint: kNN, linear probes and few-shot.

`python eval.py --config C --workdir W --probe [--shots 1,5,10,25]` builds the
checkpoint's model without its classifier (num_classes=0: pooled pre-logits,
or a ViT's class tokens; features.py), extracts features of the train split
and of the evaluated split with the evaluation transform, and reports

- kNN top-1/top-5 (knn.py: cosine, weighted votes, k and T from config.ssl),
- the linear-probe grid (linear_probe.py, lrs and epochs from config.ssl),
- few-shot linear evaluation (big_vision's recipe): for each number of shots
  k, `seeds` random draws of k training images per class; features
  standardised on the shots; ridge regression onto +-1 one-hot targets in
  closed form, its L2 strength picked from a grid on up to 1,000 other
  training images; top-1 on the evaluated split, mean and standard
  deviation over the draws.

The DINOv2 evaluation (vision/ssl/loop.py) shares knn.py and linear_probe.py.
"""

import jax
import numpy as np

from vision.evaluators import features as features_lib
from vision.evaluators import knn, linear_probe

L2_REGS = tuple(2.0 ** np.arange(-10, 21, 2))


def _ridge(x, y_pm, reg):
  """W minimising |xW - y|^2 + reg |W|^2, primal or dual form, whichever is smaller."""
  n, d = x.shape
  if d <= n:
    return np.linalg.solve(x.T @ x + reg * np.eye(d), x.T @ y_pm)
  return x.T @ np.linalg.solve(x @ x.T + reg * np.eye(n), y_pm)


def few_shot(train_x, train_y, eval_x, eval_y, num_classes: int, shots=(1, 5, 10, 25), seeds: int = 3,
             l2_regs=L2_REGS, val_size: int = 1000) -> dict:
  """{str(k): {'top1': mean, 'std', 'per_seed', 'l2_reg' (chosen per seed)}} for each k in shots."""
  train_x, eval_x = np.asarray(train_x, np.float64), np.asarray(eval_x, np.float64)
  train_y, eval_y = np.asarray(train_y), np.asarray(eval_y)
  by_class = [np.flatnonzero(train_y == c) for c in range(num_classes)]
  out = {}
  for k in shots:
    accs, regs = [], []
    for seed in range(seeds):
      rng = np.random.default_rng(seed * 1000 + k)
      picked = np.concatenate([rng.permutation(idx)[:k] for idx in by_class if len(idx)])
      rest = np.setdiff1d(np.arange(len(train_y)), picked)
      val = rng.permutation(rest)[:val_size]
      mean, std = train_x[picked].mean(0), train_x[picked].std(0) + 1e-6
      prep = lambda x: np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)
      xs, targets = prep(train_x[picked]), 2.0 * np.eye(num_classes)[train_y[picked]] - 1.0
      best = None
      for reg in l2_regs:
        w = _ridge(xs, targets, reg)
        score = np.mean(np.argmax(prep(train_x[val]) @ w, 1) == train_y[val]) if len(val) else 0.0
        if best is None or score > best[0]:
          best = (score, reg, w)
      accs.append(float(np.mean(np.argmax(prep(eval_x) @ best[2], 1) == eval_y)))
      regs.append(float(best[1]))
    out[str(k)] = {"top1": float(np.mean(accs)), "std": float(np.std(accs)), "per_seed": accs, "l2_reg": regs}
  return out


def probe_checkpoint(config, workdir: str, step=None, split=None, shots=(1, 5, 10, 25), ema=False,
                     devices=None) -> tuple[dict, str]:
  """kNN, linear probes and few-shot of the frozen backbone of a classification checkpoint; writes JSON."""
  from vision.models import create_model
  from vision.train.loop import restore_for_eval
  from vision.train.steps import compute_dtype
  exp, variables, step = restore_for_eval(config, workdir, step, devices, ema=ema)
  s, d = config.ssl, config.data
  split = split or d.eval_split
  backbone = create_model(config.model.name, num_classes=0, dtype=compute_dtype(config.model.dtype),
                          **dict(config.model.kwargs))
  fn = features_lib.feature_fn(backbone, normalize=(d.mean, d.std))
  variables = {k: v for k, v in variables.items() if v}

  def features(name):
    batches, n = exp.eval_batches(name)
    return features_lib.extract(fn, variables, batches, n)

  train_f, train_y = features(d.train_split)
  eval_f, eval_y = features(split)
  train_k, eval_k = features_lib.knn_features(train_f), features_lib.knn_features(eval_f)
  scores = knn.knn_accuracy(train_k, train_y, eval_k, eval_y, exp.num_classes, tuple(s.knn_k), s.knn_temperature)
  results = {"split": split, "step": step, "weights": "ema" if ema else "raw", "count": int(len(eval_y)),
             "train_count": int(len(train_y)), "knn": {str(k): v for k, v in scores.items()},
             "linear": linear_probe.linear_probe(train_f, train_y, eval_f, eval_y, exp.num_classes,
                                                 tuple(s.probe_lrs), s.probe_epochs, s.probe_batch_size,
                                                 s.probe_val_fraction, config.seed)}
  if shots:
    results["few_shot"] = few_shot(train_k, train_y, eval_k, eval_y, exp.num_classes, shots)
  from vision.train.loop import write_results
  path = write_results(workdir, split, step, results, "_ema" if ema else "", "probe") if jax.process_index() == 0 \
      else ""
  return results, path


def summary(results) -> str:
  out = f"{results['count']} images, frozen features: kNN top1 " + ", ".join(
      f"k={k} {v['top1']:.4f}" for k, v in results["knn"].items())
  best = results["linear"]["best"]
  out += f"; linear probe top1 {results['linear']['top1']:.4f} ({best['features']}, lr {best['lr']:g})"
  if "few_shot" in results:
    out += "; few-shot " + ", ".join(f"{k}-shot {v['top1']:.4f}+-{v['std']:.4f}"
                                     for k, v in results["few_shot"].items())
  return out

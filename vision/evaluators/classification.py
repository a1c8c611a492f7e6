"""Top-1/top-5, loss, per-class accuracy and the confusion matrix over a whole split.

The eval step (vision.train.steps.make_eval_step) returns sums over a padded
batch; they are added on the device and fetched once at the end, so a split is
one host round trip however many batches it has.
"""
import jax
import numpy as np


def evaluate(eval_step, variables, batches, num_batches: int, class_names=None) -> dict:
  """`batches` yields global sharded batches with 'mask'; returns JSON-ready results."""
  totals = None
  for _, batch in zip(range(num_batches), batches):
    out = eval_step(variables, batch)
    totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
  totals = jax.device_get(totals)
  return summarize(totals, class_names)


def summarize(totals: dict, class_names=None) -> dict:
  count = float(totals["count"])
  confusion = np.rint(np.asarray(totals["confusion"])).astype(np.int64)  # rows: true, cols: predicted
  support = confusion.sum(axis=1)
  per_class = np.divide(np.diag(confusion), support, out=np.full(len(support), np.nan), where=support > 0)
  names = list(class_names) if class_names else [str(i) for i in range(len(support))]
  return {
      "count": int(count),
      "top1": float(totals["top1_hits"]) / count,
      "top5": float(totals["top5_hits"]) / count,
      "loss": float(totals["loss_sum"]) / count,
      "per_class_accuracy": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, per_class)},
      "confusion_matrix": confusion.tolist(),
      "class_names": names,
  }

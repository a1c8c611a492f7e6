"""Classification metrics over a whole split, from sums the eval step adds up on the device.

The eval step (vision.train.steps.make_eval_step) returns sums over a padded
batch; they are added on the device and fetched once at the end, so a split is
one host round trip however many batches it has. Everything else is derived
here on the host:

- top-1 / top-5 accuracy and the mean cross-entropy;
- the confusion matrix (rows: true class, columns: predicted class);
- per class precision, recall and F1 with their support, and macro and
  weighted (by support) averages. They equal scikit-learn's
  `precision_recall_fscore_support(y_true, y_pred, zero_division=0)`: the
  averages run over the classes that occur in the labels or the predictions
  (scikit-learn's default label set), and a 0/0 ratio counts as 0. Classes
  that occur in neither are reported with None.
- the expected calibration error (Guo et al. 2017, "On calibration of modern
  neural networks"): with confidence = the largest softmax probability and
  M = 15 equal-width bins B_m = ((m-1)/M, m/M],
  ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|.
  The per-bin counts, accuracies and confidences are reported as well (the
  reliability diagram).
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


def _ratio(num, den):
  return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def classification_report(confusion: np.ndarray) -> dict:
  """Per-class precision/recall/F1/support and their macro and weighted averages from a confusion matrix."""
  confusion = np.asarray(confusion, np.float64)
  tp, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
  precision, recall = _ratio(tp, predicted), _ratio(tp, support)
  f1 = _ratio(2 * precision * recall, precision + recall)
  present = (support > 0) | (predicted > 0)
  out = {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
         "present": present}
  for name, weights in (("macro", present.astype(np.float64)), ("weighted", support)):
    total = weights.sum()
    out[name] = {k: float(np.dot(weights, v) / total) if total else 0.0
                 for k, v in (("precision", precision), ("recall", recall), ("f1", f1))}
  return out


def calibration(bin_count, bin_confidence, bin_hits) -> dict:
  """Expected calibration error and the reliability diagram from per-bin sums (see the module docstring)."""
  count = np.asarray(bin_count, np.float64)
  n = count.sum()
  accuracy, confidence = _ratio(np.asarray(bin_hits, np.float64), count), _ratio(np.asarray(bin_confidence), count)
  ece = float(np.sum(count * np.abs(accuracy - confidence)) / n) if n else 0.0
  empty = count == 0
  return {"ece": ece, "ece_bins": {
      "edges": np.linspace(0.0, 1.0, len(count) + 1).tolist(), "count": np.rint(count).astype(int).tolist(),
      "accuracy": [None if e else float(a) for e, a in zip(empty, accuracy)],
      "confidence": [None if e else float(c) for e, c in zip(empty, confidence)]}}


def summarize(totals: dict, class_names=None) -> dict:
  count = float(totals["count"])
  confusion = np.rint(np.asarray(totals["confusion"])).astype(np.int64)  # rows: true, cols: predicted
  report = classification_report(confusion)
  support = report["support"]
  per_class = np.divide(np.diag(confusion), support, out=np.full(len(support), np.nan), where=support > 0)
  names = list(class_names) if class_names else [str(i) for i in range(len(support))]
  results = {
      "count": int(count),
      "top1": float(totals["top1_hits"]) / count,
      "top5": float(totals["top5_hits"]) / count,
      "loss": float(totals["loss_sum"]) / count,
      "per_class_accuracy": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, per_class)},
      "per_class": {n: ({"precision": float(report["precision"][i]), "recall": float(report["recall"][i]),
                         "f1": float(report["f1"][i]), "support": int(support[i])}
                        if report["present"][i] else None) for i, n in enumerate(names)},
      "macro": report["macro"],
      "weighted": report["weighted"],
      "confusion_matrix": confusion.tolist(),
      "class_names": names,
  }
  if "bin_count" in totals:
    results.update(calibration(totals["bin_count"], totals["bin_confidence"], totals["bin_hits"]))
  return results

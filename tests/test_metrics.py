"""Evaluation metrics (device sums -> host report) against scikit-learn and a numpy ECE on the same predictions."""
import types

import jax
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from vision.evaluators import classification
from vision.train import steps

# A "model" whose logits are its input: the eval step then sees exactly the logits the test chose.
IDENTITY = types.SimpleNamespace(apply=lambda variables, x, train: x)


def numpy_ece(probs, labels, bins=15):
  """Guo et al. 2017: bins ((m-1)/M, m/M] of the top probability; sum |B|/n |acc(B) - conf(B)|."""
  conf, pred = probs.max(1), probs.argmax(1)
  ece = 0.0
  for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
    inside = (conf > lo) & (conf <= hi)
    if inside.any():
      ece += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
  return ece


def _softmax(logits):
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _run(logits, labels, batch=32, num_classes=None):
  """The real eval step and evaluate() over padded batches (mask 0 on the padding rows)."""
  num_classes = num_classes or logits.shape[1]
  step = jax.jit(steps.make_eval_step(IDENTITY, num_classes))
  n = len(labels)
  num_batches = -(-n // batch)
  pad = num_batches * batch - n
  # Padding rows predict class 0 with certainty and are labelled 1: counted anywhere, they would show.
  pad_logits = np.tile(np.eye(num_classes, dtype=np.float32)[0] * 50, (pad, 1))
  x = np.concatenate([logits, pad_logits]).astype(np.float32)
  y = np.concatenate([labels, np.ones(pad, np.int32)]).astype(np.int32)
  mask = np.concatenate([np.ones(n), np.zeros(pad)]).astype(np.float32)
  batches = ({"image": x[i:i + batch], "label": y[i:i + batch], "mask": mask[i:i + batch]}
             for i in range(0, len(y), batch))
  return classification.evaluate(step, {"params": {}, "batch_stats": {}}, batches, num_batches)


@pytest.fixture(scope="module")
def predictions():
  """Noisy, overconfident predictions over 7 classes: class 6 never occurs and never is predicted,
  class 5 is predicted but never occurs, class 4 occurs but is never predicted."""
  rng = np.random.default_rng(0)
  n, k = 203, 7
  labels = rng.choice([0, 1, 2, 3, 4], size=n, p=[0.4, 0.25, 0.15, 0.12, 0.08]).astype(np.int32)
  logits = rng.normal(size=(n, k)) * 1.5
  logits[np.arange(n), labels] += rng.uniform(0.0, 4.0, n)  # usually right, with varying confidence
  logits[:, 6] -= 100.0
  logits[:, 4] -= 100.0  # class 4 never wins
  logits[::17, 5] += 100.0  # some confident mistakes as class 5
  return logits.astype(np.float32), labels


def test_metrics_equal_scikit_learn(predictions):
  logits, labels = predictions
  results = _run(logits, labels)
  pred = logits.argmax(1)
  k = logits.shape[1]
  assert results["count"] == len(labels)
  np.testing.assert_allclose(results["top1"], np.mean(pred == labels), atol=1e-12)
  np.testing.assert_allclose(results["top5"], top_k_accuracy_score(labels, logits, k=5, labels=range(k)), atol=1e-12)
  np.testing.assert_array_equal(results["confusion_matrix"], confusion_matrix(labels, pred, labels=range(k)))
  p, r, f, s = precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=0)
  present = set(labels) | set(pred)
  assert present == {0, 1, 2, 3, 4, 5}  # the fixture's promise: 6 absent, 5 only predicted, 4 only true
  for i, name in enumerate(results["class_names"]):
    row = results["per_class"][name]
    if i not in present:
      assert row is None
      continue
    np.testing.assert_allclose([row["precision"], row["recall"], row["f1"]], [p[i], r[i], f[i]], atol=1e-12)
    assert row["support"] == s[i]
  assert results["per_class"]["4"]["precision"] == 0.0 and results["per_class"]["5"]["recall"] == 0.0
  for average in ("macro", "weighted"):
    p, r, f, _ = precision_recall_fscore_support(labels, pred, average=average, zero_division=0)
    got = results[average]
    np.testing.assert_allclose([got["precision"], got["recall"], got["f1"]], [p, r, f], atol=1e-12, err_msg=average)
  # Per-class accuracy is the recall; None where a class has no examples.
  assert results["per_class_accuracy"]["6"] is None
  np.testing.assert_allclose(results["per_class_accuracy"]["0"], results["per_class"]["0"]["recall"])
  np.testing.assert_allclose(results["loss"], np.mean(-np.log(_softmax(logits.astype(np.float64))[
      np.arange(len(labels)), labels])), rtol=1e-5)


def test_expected_calibration_error_equals_numpy(predictions):
  logits, labels = predictions
  results = _run(logits, labels)
  probs = _softmax(logits.astype(np.float64))
  expected = numpy_ece(probs, labels)
  assert expected > 0.02  # the fixture is miscalibrated enough for the check to mean something
  np.testing.assert_allclose(results["ece"], expected, atol=1e-6)
  bins = results["ece_bins"]
  assert len(bins["count"]) == steps.ECE_BINS and sum(bins["count"]) == len(labels)
  assert len(bins["edges"]) == steps.ECE_BINS + 1
  conf = probs.max(1)
  last = (conf > 14 / 15)
  assert bins["count"][-1] == last.sum()
  np.testing.assert_allclose(bins["accuracy"][-1], np.mean(probs.argmax(1)[last] == labels[last]), atol=1e-12)
  np.testing.assert_allclose(bins["confidence"][-1], conf[last].mean(), atol=1e-6)


def test_ece_hand_computed():
  # Two classes. Confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (13/15, 14/15] and (8/15, 9/15].
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
  labels = np.array([0, 1, 1], np.int32)
  results = _run(np.log(probs).astype(np.float32), labels, batch=2)
  # |B1|/n |0.5 - 0.9| + |B2|/n |1 - 0.6| = 2/3 * 0.4 + 1/3 * 0.4
  np.testing.assert_allclose(results["ece"], 0.4, atol=1e-6)
  assert results["ece_bins"]["count"][13] == 2 and results["ece_bins"]["count"][8] == 1


def test_perfect_predictions():
  labels = np.arange(12, dtype=np.int32) % 3
  logits = np.eye(3, dtype=np.float32)[labels] * 30.0
  results = _run(logits, labels, batch=5)
  assert results["top1"] == 1.0 and results["macro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
  assert results["ece"] < 1e-6 and results["ece_bins"]["count"][-1] == 12

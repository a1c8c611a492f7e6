"""Mixup/CutMix on the device: target sums, the mixing coefficient, the CutMix box, sharding, determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision.data.mixing import cutmix_box, mix, smooth_one_hot


def _batch(b=8, size=16, k=5):
  images = jax.random.normal(jax.random.key(0), (b, size, size, 3))
  return images, jnp.arange(b) % k


def test_smoothing_as_timm():
  t = smooth_one_hot(jnp.array([2]), 5, 0.1)
  np.testing.assert_allclose(t, [[0.02, 0.02, 0.92, 0.02, 0.02]], rtol=1e-6)


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_targets_sum_to_one_and_match_the_pixels(mixup, cutmix):
  images, labels = _batch()
  for seed in range(6):
    mixed, targets = mix(jax.random.key(seed), images, labels, 5, mixup, cutmix, label_smoothing=0.1)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    # lam from the targets (image 0's own class weight) explains the pixels of image 0.
    on, off = 0.9 + 0.02, 0.02
    lam = (float(targets[0, labels[0]]) - off) / (on - off) if labels[0] != labels[-1] else None
    if lam is None:
      continue
    own = np.asarray(mixed[0] == images[0]).all(-1).mean()
    if np.allclose(mixed[0], lam * images[0] + (1 - lam) * images[-1], atol=1e-5):
      continue  # mixup
    assert abs(own - lam) < 1e-6  # cutmix: the pasted box's area is 1 - lam


def test_cutmix_box_area_and_clipping():
  for seed in range(20):
    lam = jax.random.uniform(jax.random.key(seed))
    box, corrected = cutmix_box(jax.random.key(seed + 100), 20, 30, lam)
    assert abs(float(1 - box.mean()) - float(corrected)) < 1e-6
    assert float(corrected) >= float(lam) - 1e-6  # clipping only shrinks the box
    rows, cols = np.nonzero(np.asarray(box))
    if len(rows):
      assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)  # a rectangle


def test_mixing_coefficient_is_beta_distributed():
  images, labels = _batch(b=2, k=2)
  lams = [float(mix(jax.random.key(s), images, labels, 2, 0.4, 0.0)[1][0, 0]) for s in range(400)]
  # Beta(0.4, 0.4): mean 0.5, variance 1 / (4 * (2 * 0.4 + 1)) = 0.139
  assert abs(np.mean(lams) - 0.5) < 0.06 and abs(np.var(lams) - 0.139) < 0.03


def test_probability_zero_and_disabled_leave_the_batch_alone():
  images, labels = _batch()
  for args in [dict(mixup_alpha=0.0, cutmix_alpha=0.0), dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0)]:
    mixed, targets = mix(jax.random.key(1), images, labels, 5, **args)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_allclose(targets, jax.nn.one_hot(labels, 5), atol=1e-7)


def test_sharded_over_8_devices_equals_one_device():
  images, labels = _batch(b=16)
  fn = jax.jit(lambda r, x, y: mix(r, x, y, 5, 0.8, 1.0, label_smoothing=0.1))
  sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",)), P("data"))
  for seed in range(4):
    one = fn(jax.random.key(seed), images, labels)
    eight = fn(jax.random.key(seed), jax.device_put(images, sharding), jax.device_put(labels, sharding))
    np.testing.assert_allclose(one[0], eight[0], rtol=1e-6)
    np.testing.assert_allclose(one[1], eight[1], rtol=1e-6)

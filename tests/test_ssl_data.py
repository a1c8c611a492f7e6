"""iBOT block masks and the multi-crop tf.data stream (deterministic, resumable, the release's probabilities)."""
import numpy as np
import pytest

from vision.data import augment, masking, multicrop
from vision.train.config import default_config


def test_block_mask_is_rectangles_within_budget():
  rng = np.random.default_rng(0)
  for target in (0, 3, 20, 60, 128):
    m = masking.block_mask(rng, (16, 16), target, max_num_patches=128)
    assert m.shape == (16, 16) and m.sum() <= target
  # A single block of a large budget is one rectangle: its bounding box is full.
  m = masking.block_mask(np.random.default_rng(1), (16, 16), 30, max_num_patches=30)
  rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
  assert m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].sum() >= 0.8 * m.sum() > 0


def test_masks_are_stratified_and_bounded_like_the_release():
  grid, n = (16, 16), 256  # 224 px / patch 14
  rng = np.random.default_rng(0)
  ratios = []
  for _ in range(40):
    masks = masking.crop_masks(rng, 64, grid, 0.5, (0.1, 0.5))  # one device batch: 32 images x 2 global crops
    counts = masks.sum(1)
    assert masks.shape == (64, n)
    assert (counts > 0).sum() == 32  # exactly half of the crops masked
    assert counts.sum() <= masking.upper_bound(64, n, 0.5, (0.1, 0.5))
    # Stratified: the k-th smallest masked crop lies in the k-th of 32 equal bins of [0.1, 0.5] (at most).
    sorted_counts = np.sort(counts[counts > 0])
    bins = np.linspace(0.1, 0.5, 33, dtype=np.float32)
    assert np.all(sorted_counts <= (n * bins[1:]).astype(int))
    ratios.extend(counts[counts > 0] / n)
  # Block masks can stop short of their target, so the mean ratio is a little under 0.3 (measured 0.29).
  assert 0.26 < np.mean(ratios) <= 0.3 and max(ratios) <= 0.5 and min(ratios) >= 0.05
  # The release's upperbound for that batch: sum over 32 bins of int(256 x upper edge).
  assert masking.upper_bound(64, n, 0.5, (0.1, 0.5)) == sum(int(n * b) for b in bins[1:])


def test_batch_masks_are_deterministic_per_step_and_grouped():
  a = masking.batch_masks(0, 7, 0, 8, 2, 2, (8, 8))
  assert a.shape == (8, 2, 64) and a.dtype == bool
  np.testing.assert_array_equal(a, masking.batch_masks(0, 7, 0, 8, 2, 2, (8, 8)))
  assert not np.array_equal(a, masking.batch_masks(0, 8, 0, 8, 2, 2, (8, 8)))
  # Each group of 4 examples (8 crops) has exactly 4 masked crops.
  for group in a.reshape(2, 8, 64):
    assert (group.sum(1) > 0).sum() == 4


def _configs(data_dir, **ssl):
  c = default_config()
  d, s = c.data, c.ssl
  d.name, d.data_dir, d.channels, d.flip, d.shuffle_buffer = "digits", data_dir, 3, True, 64
  d.mean, d.std = (0.5,) * 3, (0.5,) * 3
  s.global_crop_size, s.local_crop_size, s.local_crops = 16, 8, 1
  s.update(ssl)
  return d, s


def test_multicrop_stream_shapes_determinism_and_resume(data_dir):
  d, s = _configs(data_dir)
  stream = multicrop.train_batches(d, s, 4, seed=3, patch_size=4, mask_groups=2)
  batches = [next(stream) for _ in range(3)]
  b = batches[0]
  assert b["global_crops"].shape == (4, 2, 16, 16, 3) and b["local_crops"].shape == (4, 1, 8, 8, 3)
  assert b["masks"].shape == (4, 2, 16) and b["masks"].dtype == bool
  assert b["global_crops"].dtype == b["local_crops"].dtype == np.uint8  # normalised by the step (uint8_batches)
  # The two global crops of an image differ (independent crops and colour).
  assert np.abs(b["global_crops"][:, 0] / 255 - b["global_crops"][:, 1] / 255).mean() > 0.025
  # A new stream with the same seed started at step 2 gives exactly the third batch: deterministic and resumable.
  resumed = next(multicrop.train_batches(d, s, 4, seed=3, start_step=2, patch_size=4, mask_groups=2))
  for k in b:
    np.testing.assert_array_equal(resumed[k], batches[2][k])
  # data.uint8_batches=False: the same crops normalised on the host (half a uint8 level apart at most).
  from vision.train.steps import normalize_images
  d.uint8_batches = False
  floats = next(multicrop.train_batches(d, s, 4, seed=3, patch_size=4, mask_groups=2))
  for k in ("global_crops", "local_crops"):
    assert floats[k].dtype == np.float32
    np.testing.assert_allclose(normalize_images(b[k], d.mean, d.std), floats[k], rtol=0, atol=0.5 / 255 / 0.5 + 1e-5)


def test_blur_and_solarize_follow_the_release_probabilities():
  import tensorflow as tf
  d, s = default_config().data, default_config().ssl
  assert tuple(s.blur_prob) == (0.0, 0.9, 0.5) and s.solarize_prob == 0.2  # what the release applies
  # A bright flat image: solarisation (p=0.2) inverts it, nothing else changes a flat grey image much
  # (colour jitter off here).
  s.color_jitter_prob, s.grayscale_prob = 0.0, 0.0
  d.flip = False
  image = tf.fill((16, 16, 3), tf.constant(200, tf.uint8))
  solarized = []
  for i in range(200):
    x = multicrop.crop_view(image, tf.constant([0, i], tf.int64), 8, (0.5, 1.0), s, d, 0.0, 0.2).numpy()
    x = x / 255.0  # uint8 crops (data.uint8_batches)
    solarized.append(x.mean() < 0.5)
  assert 0.12 < np.mean(solarized) < 0.28  # p = 0.2
  # Blur of an impulse spreads it; sigma in [0.1, 2] keeps the mass (a normalised kernel).
  impulse = np.zeros((21, 21, 1), np.float32)
  impulse[10, 10] = 1.0
  blurred = multicrop.gaussian_blur(tf.constant(impulse), 1.0).numpy()
  t = np.arange(-4, 5)
  k = np.exp(-t ** 2 / 2.0) / np.exp(-t ** 2 / 2.0).sum()  # torchvision's 9-tap kernel at sigma 1
  assert abs(blurred.sum() - 1.0) < 1e-5
  np.testing.assert_allclose(blurred[10, 6:15, 0], k[4] * k, rtol=1e-5)


def test_blur_and_grayscale_equal_torchvision():
  """The shifted-slice blur and the matmul grayscale against torchvision's GaussianBlur and channel weights."""
  import tensorflow as tf
  torch = pytest.importorskip("torch")
  from torchvision.transforms import functional as F
  x = np.random.default_rng(0).uniform(0, 1, (37, 53, 3)).astype(np.float32)
  for sigma in (0.1, 0.7, 2.0):
    ref = F.gaussian_blur(torch.from_numpy(x).permute(2, 0, 1), [9, 9], [sigma, sigma]).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(multicrop.gaussian_blur(tf.constant(x), sigma).numpy(), ref, rtol=0, atol=1e-6)
  gray = multicrop._grayscale(tf.constant(x)).numpy()
  assert gray.shape == (37, 53, 1)
  np.testing.assert_allclose(gray[..., 0], x @ np.asarray(multicrop.GRAY, np.float32), rtol=0, atol=1e-6)


def test_crops_resize_as_pil_and_solarize_exactly():
  """A view's resize is PIL's BICUBIC (two rounded passes, as the release's RandomResizedCrop on PIL images);
  solarisation is PIL's (1 - x at and above 128 / 255), its mask blend equal to tf.where to the bit."""
  import tensorflow as tf
  from PIL import Image
  d, s = default_config().data, default_config().ssl
  s.color_jitter_prob, s.grayscale_prob, d.flip = 0.0, 0.0, False
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (61, 61, 3), dtype=np.uint8)  # square: a scale of 1 crops all of it
  for size in (24, 98):  # shrinking and enlarging
    view = multicrop.crop_view(tf.constant(image), tf.constant([0, 1], tf.int64), size, (1.0, 1.0), s, d, 0.0, 0.0)
    ref = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)).astype(int)
    diff = np.abs(view.numpy().astype(int) - ref)
    # One unrounded two-axis resample: 86% / 77% equal, up to 16 levels apart on this noise.
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
  x = np.concatenate([rng.uniform(0, 1, 999), [0.0, 1.0, 128 / 255]]).astype(np.float32)
  got = augment.solarize(tf.constant(x), 128 / 255, top=1.0).numpy()
  assert np.array_equal(got.view(np.uint32), tf.where(x >= 128 / 255, 1.0 - x, x).numpy().view(np.uint32))
  assert got[-1] == np.float32(1.0) - np.float32(128 / 255) and got[-3] == 0.0 and got[-2] == 0.0


@pytest.mark.parametrize("op", ["brightness", "saturation"])
def test_color_jitter_matches_torchvision_definitions(op):
  import tensorflow as tf
  x = np.array([[[0.2, 0.4, 0.6]]], np.float32)
  gray = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
  if op == "brightness":  # torchvision: x * factor, clipped; only brightness enabled
    y = multicrop.color_jitter(tf.constant(x), tf.constant([1, 2], tf.int64), 0.4, 0.0, 0.0, 0.0).numpy()
    factor = y[0, 0, 0] / 0.2
    assert 0.6 <= factor <= 1.4 and factor != 1.0
    np.testing.assert_allclose(y, np.clip(x * factor, 0, 1), rtol=1e-5)
  else:  # torchvision: blend with the grayscale image
    y = multicrop.color_jitter(tf.constant(x), tf.constant([1, 2], tf.int64), 0.0, 0.0, 0.2, 0.0).numpy()
    factor = (y[0, 0, 0] - gray) / (0.2 - gray)
    assert 0.8 <= factor <= 1.2
    np.testing.assert_allclose(y, np.clip(factor * x + (1 - factor) * gray, 0, 1), rtol=1e-4)

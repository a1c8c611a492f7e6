"""DINOv2's multi-crop input (dinov2/data/augmentations.py) as tf.data with stateless seeds.

Per image: 2 global crops (random-resized crop, scale ssl.global_crop_scale, to
ssl.global_crop_size) and ssl.local_crops local crops (scale
ssl.local_crop_scale, to ssl.local_crop_size), each: bicubic random-resized
crop (ratio 3/4-4/3; PIL's two passes, each rounded to uint8, as the release's
transforms on PIL images), horizontal flip p=0.5 (data.flip), colour jitter
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 in a random order,
torchvision's definitions) with p=0.8, grayscale p=0.2, then Gaussian blur
(9 taps, sigma in [0.1, 2]) and solarisation (threshold 128) with the
probabilities the release *applies*: its GaussianBlur(p) wraps
RandomApply(p=1-p), so blur happens with p = 0 / 0.9 / 0.5 on global crop 1 /
global crop 2 / local crops, not the 1.0 / 0.1 / 0.5 written there (and in
the BYOL/DINO papers); solarisation p=0.2 on global crop 2 only. Then
rounding to uint8, normalised by the train step (data.uint8_batches; else
normalisation with data.mean/std here).

The stream is vision/data/pipeline.py's: the same per-process shares, epoch
shuffles and positions, so it is deterministic and a resumed run sees the
batches an uninterrupted one would. Each batch carries iBOT masks drawn
from (seed, step, process) (vision/data/masking.py).
"""
import functools
from typing import Iterator

import numpy as np
import tensorflow as tf

from vision.data import augment, masking, pipeline, preprocess
from vision.errors import UserError

GRAY = (0.299, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _grayscale(x):
  # A [pixels, 3] x [3, 1] matmul: ~10x faster than multiply-and-reduce over the channel axis on TF's CPU.
  flat = tf.matmul(tf.reshape(x, [-1, 3]), tf.constant(GRAY, x.dtype)[:, None])
  return tf.reshape(flat, tf.concat([tf.shape(x)[:-1], [1]], 0))


def _blend(a, b, factor):
  return tf.clip_by_value(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def color_jitter(x, seed, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
  """torchvision ColorJitter on [0, 1] RGB: the four adjustments in a random order, factors uniform."""
  seeds = tf.random.experimental.stateless_split(seed, 5)
  u = lambda i, lo, hi: tf.random.stateless_uniform([], seeds[i], lo, hi)
  b, c, s, h = u(0, 1 - brightness, 1 + brightness), u(1, 1 - contrast, 1 + contrast), \
      u(2, 1 - saturation, 1 + saturation), u(3, -hue, hue)
  ops = [lambda y: tf.clip_by_value(y * b, 0.0, 1.0),
         lambda y: _blend(y, tf.reduce_mean(_grayscale(y)), c),
         lambda y: _blend(y, _grayscale(y), s),
         lambda y: tf.image.adjust_hue(y, h)]
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))  # torch.randperm(4)
  for i in range(4):
    x = augment.case(order[i], [functools.partial(op, x) for op in ops])
  return x


def gaussian_blur(x, sigma, kernel_size=9):
  """torchvision GaussianBlur: separable kernel exp(-t^2 / 2 sigma^2) on t = -4..4, reflect padding.

  As weighted sums of shifted slices: TensorFlow's CPU depthwise convolution took ~17 ms per 224 px crop.
  """
  t = tf.range(kernel_size, dtype=tf.float32) - (kernel_size - 1) / 2
  k = tf.exp(-0.5 * tf.square(t / sigma))
  k = tf.unstack(k / tf.reduce_sum(k))
  pad = kernel_size // 2
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  y = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  y = tf.add_n([k[i] * y[:, i:i + w] for i in range(kernel_size)])  # along the rows: [H + 2 pad, W, C]
  return tf.add_n([k[i] * y[i:i + h] for i in range(kernel_size)])


def _maybe(p, seed, fn, x):
  if p <= 0:
    return x
  if p >= 1:
    return fn(x)
  return tf.cond(tf.random.stateless_uniform([], seed) < p, lambda: fn(x), lambda: x)


def crop_view(image, seed, size, scale, s, d, blur_p, solarize_p):
  """One augmented view of a decoded uint8 image -> [size, size, C]: uint8 (config.data.uint8_batches), else
  normalised float32."""
  seeds = tf.random.experimental.stateless_split(seed, 8)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seeds[0], min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=tuple(scale), max_attempts=10, use_image_if_no_bounding_boxes=True)
  # PIL's two passes, each rounded to uint8, as the release's RandomResizedCrop on PIL images (one unrounded
  # two-axis resample was up to 16 levels off PIL on noise; one thread, ~1.9 -> ~1.3 ms per global crop).
  x = preprocess.pil_resize(tf.slice(image, begin, crop_size), size, size, "bicubic") / 255.0
  x = tf.ensure_shape(x, (size, size, d.channels))
  if d.flip:
    x = tf.image.stateless_random_flip_left_right(x, seeds[1])
  if d.channels == 3:  # on one channel only brightness and contrast would apply; the release's images are RGB
    x = _maybe(s.color_jitter_prob, seeds[2], lambda y: color_jitter(y, seeds[3], *s.color_jitter), x)
    x = _maybe(s.grayscale_prob, seeds[4], lambda y: tf.tile(_grayscale(y), [1, 1, 3]), x)
  sigma = tf.random.stateless_uniform([], seeds[5], 0.1, 2.0)
  x = _maybe(blur_p, seeds[6], lambda y: gaussian_blur(y, sigma), x)
  x = _maybe(solarize_p, seeds[7], lambda y: augment.solarize(y, 128 / 255, top=1.0), x)
  if preprocess.uint8_batches(d):  # normalised in the train step; PIL, the release's, also keeps uint8 images
    return preprocess.to_uint8(x * 255.0)
  return preprocess.normalize(x * 255.0, d.mean, d.std)


def multicrop(image, seed, d, s):
  """{'global_crops': [2, G, G, C], 'local_crops': [L, l, l, C]} from one decoded uint8 image."""
  seeds = tf.random.experimental.stateless_split(seed, 2 + s.local_crops)
  blur = s.blur_prob  # (global 1, global 2, local)
  glob = [crop_view(image, seeds[i], s.global_crop_size, s.global_crop_scale, s, d, blur[i],
                    s.solarize_prob if i == 1 else 0.0) for i in range(2)]
  local = [crop_view(image, seeds[2 + i], s.local_crop_size, s.local_crop_scale, s, d, blur[2], 0.0)
           for i in range(s.local_crops)]
  out = {"global_crops": tf.stack(glob)}
  out["local_crops"] = tf.stack(local) if local else tf.zeros((0, s.local_crop_size, s.local_crop_size, d.channels))
  return out


def train_batches(d, s, local_batch, seed, start_step=0, process_index=0, process_count=1, mask_groups=1,
                  patch_size=14, dtype=tf.float32) -> Iterator[dict]:
  """Endless numpy batches {'global_crops', 'local_crops', 'masks' bool [B, 2, N]} from `start_step` on.

  The crops are uint8 for the train step to normalise (config.data.uint8_batches), else normalised `dtype`.

  mask_groups: the batch is masked in this many contiguous groups (this process's devices).
  """
  src = pipeline.source(d, d.train_split, process_index, process_count)
  n = src.num_examples
  if n < local_batch:
    raise UserError(f"the train split has {n} examples per process, fewer than the local batch "
                             f"{local_batch}; lower config.train.batch_size")
  # Positions and shuffles as pipeline.train_batches, so the stream resumes at start_step exactly.
  start_epoch, offset = divmod(start_step * local_batch, n)
  base_seed = np.int64(seed) * 1_000_003 + process_index
  records = src.records.map(lambda b, label: preprocess.decode(b, d.channels), num_parallel_calls=pipeline._parallel(d))
  if d.cache:
    records = records.cache()

  def epoch(e):
    shuffled = records.shuffle(min(d.shuffle_buffer, n), seed=base_seed + e * 7919, reshuffle_each_iteration=False)
    return shuffled.enumerate().map(lambda i, rec: (e * n + i, rec))

  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch).skip(offset)

  def process(position, image):
    views = multicrop(image, tf.stack([tf.constant(base_seed), position]), d, s)
    return views if preprocess.uint8_batches(d) else {k: tf.cast(v, dtype) for k, v in views.items()}

  ds = ds.map(process, num_parallel_calls=pipeline._parallel(d), deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  grid = (s.global_crop_size // patch_size,) * 2
  shape = (local_batch, 2, grid[0] * grid[1])

  def add_masks(step, batch):
    draw = lambda t: masking.batch_masks(seed, int(t), process_index, local_batch, mask_groups, 2, grid,
                                         s.mask_probability, tuple(s.mask_ratio))
    masks = tf.numpy_function(draw, [step], tf.bool, stateful=False)
    return {**batch, "masks": tf.ensure_shape(masks, shape)}

  ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_step, 2**62), ds)
  ds = ds.map(add_masks, num_parallel_calls=pipeline._parallel(d), deterministic=True).prefetch(tf.data.AUTOTUNE)
  return iter(ds.as_numpy_iterator())

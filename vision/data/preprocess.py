"""Image preprocessing ops on encoded bytes -> float32 HWC, randomness from stateless seeds.

Every random op takes an explicit [2] int seed, derived per example from
(config seed, position in the stream), so the augmentation an example receives
does not depend on tf.data parallelism or on where a run was resumed.
"""
import math

import tensorflow as tf

from vision.errors import UserError


def decode(image_bytes, channels):
  """Any of JPEG/PNG/GIF/BMP -> uint8 [H, W, channels] (gray->RGB repeats, RGBA drops alpha)."""
  return tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)


def _image_shape(image_bytes, channels):
  return tf.cond(tf.io.is_jpeg(image_bytes),
                 lambda: tf.io.extract_jpeg_shape(image_bytes)[:2],
                 lambda: tf.shape(decode(image_bytes, channels))[:2])


def _crop_window_decode(image_bytes, channels, window):
  """Decodes only the crop window when the bytes are a JPEG (much cheaper for ImageNet)."""
  y, x, h, w = tf.unstack(window)
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=channels),
      lambda: decode(image_bytes, channels)[y:y + h, x:x + w])


def resize(image, size, method="bilinear", as_uint8=False):
  """Antialiased resize of a uint8 or float image -> float32 in [0, 255] (PIL's filters, as torchvision's), in
  one pass and not rounded, or with as_uint8 rounded to uint8: the random crops of training (pil_resize is the
  exact, slower evaluation resize).

  A bilinear crop no larger than `size` on both sides takes TensorFlow's plain bilinear kernel: when
  enlarging, the antialiased triangle is that same interpolation (half-pixel centres, edge pixels repeated),
  and the plain kernel is ~3x faster; the two agree to float rounding (tests/test_data.py).
  """
  if method == "bilinear":
    hw = tf.shape(image)[:2]
    out = tf.cond(tf.reduce_all(hw <= size),
                  lambda: tf.image.resize(image, (size, size), method="bilinear", antialias=False),
                  lambda: tf.image.resize(image, (size, size), method="bilinear", antialias=True))
    # Weights >= 0 summing to 1: in [0, 255] to float rounding, no clip; + 0.5 and truncation rounds (halves up).
    return tf.cast(out + 0.5, tf.uint8) if as_uint8 else out
  image = tf.image.resize(image, (size, size), method=method, antialias=True)  # uint8 in: no float copy first
  return tf.saturate_cast(image + 0.5, tf.uint8) if as_uint8 else tf.clip_by_value(image, 0.0, 255.0)


# PIL's filters as TensorFlow's scale-and-translate kernels (both antialias by widening the kernel when shrinking).
_KERNELS = {"bilinear": "triangle", "bicubic": "keyscubic"}


def _resample_rows(image, out_n, scale, translation, method):
  """Resamples axis 0 of [N, M, C] -> float32 [out_n, M, C] holding uint8 values (rounded, halves up, as PIL's
  fixed-point rounding).

  As an image one pixel wide with M * C channels: ScaleAndTranslate always resamples both axes, and on a
  width of 1 the other axis is a one-tap identity, where a real width costs three taps per pixel (the
  result is the same to the bit; 4.8 -> 4.1 ms per ImageNet-sized evaluation image).
  """
  n, m, c = tf.unstack(tf.shape(image))
  out = tf.raw_ops.ScaleAndTranslate(images=tf.reshape(image, tf.stack([1, n, 1, m * c])), size=tf.stack([out_n, 1]),
                                     scale=tf.stack([tf.cast(scale, tf.float32), 1.0]),
                                     translation=tf.stack([tf.cast(translation, tf.float32), 0.0]),
                                     kernel_type=_KERNELS[method], antialias=True)
  return tf.reshape(tf.floor(tf.clip_by_value(out, 0.0, 255.0) + 0.5), tf.stack([out_n, m, c]))


def pil_resize(image, new_h, new_w, method="bilinear", window=None):
  """PIL's Image.resize((new_w, new_h), BILINEAR or BICUBIC) of a uint8 image [H, W, C], then the crop
  `window` = (top, left, height, width) of the result (static height and width; default: all of it) ->
  float32 holding uint8 values.

  As PIL (and so torchvision's transforms on PIL images, with which the published weights were evaluated):
  horizontal pass first, rounded to uint8, then the vertical pass, rounded. Only the window's columns and
  rows are computed. Within 1 level of PIL when shrinking, 2 when enlarging (PIL's 22-bit fixed-point weights
  tip near-halves the other way), equal on >= 95% of values (tests/test_data.py).

  The order is that of Pillow <= 12 (checked on 11.3 and 12.0). Pillow 13 runs the vertical pass first when
  the height loses more than twice as many pixels as the width (h - new_h > 2 (w - new_w): images over twice
  as tall as wide, or tall shrinks to a square); there the two orders' roundings differ by a level on 15-18% of
  the values of a random-noise image, and this function keeps the older order (tests/test_data.py).
  """
  h, w = tf.unstack(tf.shape(image)[:2])
  top, left, out_h, out_w = window if window is not None else (0, 0, new_h, new_w)
  ratio = lambda new, old: tf.cast(new, tf.float64) / tf.cast(old, tf.float64)
  x = _resample_rows(tf.transpose(image, [1, 0, 2]), out_w, ratio(new_w, w), -tf.cast(left, tf.float32), method)
  return _resample_rows(tf.transpose(x, [1, 0, 2]), out_h, ratio(new_h, h), -tf.cast(top, tf.float32), method)


def resize_size(size, crop_pct) -> int:
  """The shorter side before a size x size centre crop: floor(size / crop_pct) as timm's; torchvision's
  resize sizes given as ratios (crop_pct = 224 / 232) come out exact."""
  return math.floor(size / crop_pct + 1e-6)


def to_uint8(image):
  """[0, 255]-range float -> uint8, rounded (as PIL stores a resized image)."""
  return tf.saturate_cast(tf.round(image), tf.uint8)


def inception_crop(image_bytes, size, seed, channels, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), method="bilinear",
                   as_uint8=False):
  """Random-resized crop (Szegedy et al. 2015; torchvision RandomResizedCrop) then resize to size (resize's
  output: float32, or with as_uint8 rounded to uint8)."""
  shape = _image_shape(image_bytes, channels)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [channels]], 0), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  return resize(_crop_window_decode(image_bytes, channels, window), size, method, as_uint8)


def pad_random_crop(image, size, pad, seed):
  """CIFAR-style: zero-pad by `pad` pixels, random crop size x size."""
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(image, (size, size, tf.shape(image)[-1]), seed=seed)


def center_crop(image_bytes, size, crop_pct, channels, method="bilinear"):
  """torchvision's Resize(resize_size(size, crop_pct)) + CenterCrop(size) on the decoded image, PIL's way.

  The shorter side becomes s = resize_size(size, crop_pct) and the longer int(s * long / short); the crop
  starts at round((side - size) / 2), halves to even (Python's round, as torchvision's center_crop).
  Returns float32 holding uint8 values.
  """
  image = decode(image_bytes, channels)
  hw = tf.shape(image)[:2]
  h, w = tf.unstack(tf.cast(hw, tf.float64))
  s = tf.constant(resize_size(size, crop_pct), tf.float64)
  new_h = tf.where(w <= h, tf.floor(s * h / w), s)
  new_w = tf.where(w <= h, s, tf.floor(s * w / h))
  top = tf.cast(tf.round((new_h - size) / 2.0), tf.int32)  # tf.round rounds halves to even
  left = tf.cast(tf.round((new_w - size) / 2.0), tf.int32)
  return pil_resize(image, tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32), method, (top, left, size, size))


def normalize(image, mean, std):
  """uint8-range float -> (x / 255 - mean) / std, per channel.

  As x * (1 / (255 std)) - mean / std, the per-channel scale a [pixels, C] x [C, C] diagonal matmul: this
  TensorFlow build's broadcasting elementwise kernels are slow (1.6 -> 0.8 ms on 224 x 224 x 3).
  """
  scale = tf.constant([1.0 / (255.0 * s) for s in std], tf.float32)
  shift = tf.constant([m / s for m, s in zip(mean, std)], tf.float32)
  if len(std) == 1:
    return image * scale[0] - shift[0]
  flat = tf.reshape(image, [-1, len(std)]) @ tf.linalg.diag(scale)
  return tf.reshape(tf.nn.bias_add(flat, -shift), tf.shape(image))


def train_decode(image_bytes, d):
  """The deterministic part of the training transform, as uint8: worth caching for small datasets.

  Inception crops need the full image; the other modes resize to image_size first.
  """
  image = decode(image_bytes, d.channels)
  if d.train_crop == "inception":
    return image
  return to_uint8(pil_resize(image, d.image_size, d.image_size, interpolation(d)))


def _inception_crop_decoded(image, size, seed, scale, ratio, method, as_uint8):
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ratio, area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
  return resize(tf.slice(image, begin, crop_size), size, method, as_uint8)


def interpolation(d) -> str:
  """The filter of every resize, train crops and evaluation (data.interpolation): 'bilinear' or 'bicubic'."""
  return d.get("interpolation", "bilinear")


def uint8_batches(d) -> bool:
  """Whether train and eval images leave the host as uint8, normalised on the device (steps.normalize_images)."""
  return bool(d.get("uint8_batches", False))


def erases_on_device(d) -> bool:
  """uint8 batches with random erasing: the pipeline draws the rectangles, the train step erases them."""
  from vision.data import augment
  return uint8_batches(d) and augment.has_erasing(d.augment)


def erase_boxes(seed, d):
  """The rectangles (int32 [ops, 5], augment.erasing_boxes) that train_image(seed) would erase on the host."""
  from vision.data import augment
  return augment.erasing_boxes(tf.random.experimental.stateless_fold_in(seed, 2), d.augment, d.image_size)


def train_image(image, seed, d, decoded=False):
  """The training transform chosen by the data config `d` (see vision/train/config.py).

  `image` is encoded bytes, or (decoded=True) the uint8 output of train_decode. Returns uint8 [0, 255] values
  when uint8_batches(d) (random erasing, which works on normalised values, is then left to the train step:
  erase_boxes), else float32 normalised with d.mean and d.std.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  as_uint8 = uint8_batches(d)
  if d.train_crop == "inception":
    rounded = as_uint8 and not d.augment  # flip a quarter of the bytes
    if decoded:
      image = _inception_crop_decoded(image, d.image_size, crop_seed, d.crop_scale, d.crop_ratio, interpolation(d),
                                      rounded)
    else:
      image = inception_crop(image, d.image_size, crop_seed, d.channels, d.crop_scale, d.crop_ratio,
                             interpolation(d), rounded)
  else:
    image = image if decoded else train_decode(image, d)
    if not as_uint8:
      image = tf.cast(image, tf.float32)
    if d.train_crop == "pad_random":
      image = pad_random_crop(image, d.image_size, d.pad, crop_seed)
  if d.flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = tf.ensure_shape(image, (d.image_size, d.image_size, d.channels))
  if d.augment:
    from vision.data import augment
    # Seeds of their own, so the crop and flip draws stay what they are without augmentation.
    fold = lambda k: tf.random.experimental.stateless_fold_in(seed, k)
    image = augment.apply(tf.cast(image, tf.float32), fold(1), d.augment, d.image_size)
    if as_uint8:
      return to_uint8(image)
    image = normalize(image, d.mean, d.std)
    return augment.apply(image, fold(2), d.augment, d.image_size, after_normalise=True)
  return image if as_uint8 else normalize(image, d.mean, d.std)


def eval_size(d) -> int:
  """The evaluation resolution: data.eval_image_size (FixRes: other than the train crops) or data.image_size."""
  return d.get("eval_image_size", 0) or d.image_size


def eval_image(image_bytes, d, as_uint8=False):
  """The evaluation transform (torchvision's Resize + CenterCrop, or Resize((size, size)), on PIL images) ->
  float32 normalised with d.mean and d.std, or with as_uint8 the uint8 pixels (for the device to normalise)."""
  size = eval_size(d)
  if d.eval_crop == "center":
    image = center_crop(image_bytes, size, d.crop_pct, d.channels, interpolation(d))
  else:
    image = pil_resize(decode(image_bytes, d.channels), size, size, interpolation(d))
  image = tf.ensure_shape(image, (size, size, d.channels))
  return tf.cast(image, tf.uint8) if as_uint8 else normalize(image, d.mean, d.std)


def eval_image_file(path, d):
  """One image file -> float32 [H, W, C] exactly as evaluation preprocesses it; UserError when unreadable."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
  try:
    return eval_image(tf.constant(data), d).numpy()
  except tf.errors.OpError:  # TF's decoders say 'Unknown image file format', 'Invalid JPEG data', ...
    raise UserError(f"cannot read {path}: not a JPEG, PNG, GIF or BMP image, or the file is damaged") from None

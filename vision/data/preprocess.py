"""Image preprocessing ops on encoded bytes -> float32 HWC, randomness from stateless seeds.

Every random op takes an explicit [2] int seed, derived per example from
(config seed, position in the stream), so the augmentation an example receives
does not depend on tf.data parallelism or on where a run was resumed.
"""
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


def resize(image, size, method="bilinear"):
  """Antialiased resize of a uint8 or float image -> float32 in [0, 255] (PIL's filters, as torchvision's)."""
  image = tf.image.resize(image, (size, size), method=method, antialias=True)  # uint8 in: no float copy first
  return tf.clip_by_value(image, 0.0, 255.0)


def to_uint8(image):
  """[0, 255]-range float -> uint8, rounded (as PIL stores a resized image)."""
  return tf.saturate_cast(tf.round(image), tf.uint8)


def inception_crop(image_bytes, size, seed, channels, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Random-resized crop (Szegedy et al. 2015; torchvision RandomResizedCrop) then resize to size."""
  shape = _image_shape(image_bytes, channels)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [channels]], 0), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  return resize(_crop_window_decode(image_bytes, channels, window), size)


def pad_random_crop(image, size, pad, seed):
  """CIFAR-style: zero-pad by `pad` pixels, random crop size x size."""
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(image, (size, size, tf.shape(image)[-1]), seed=seed)


def center_crop(image_bytes, size, crop_pct, channels):
  """Resize the shorter side to size / crop_pct, then take the central size x size (torchvision eval)."""
  image = tf.cast(decode(image_bytes, channels), tf.float32)
  h, w = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
  short = tf.round(size / crop_pct)
  scale = short / tf.minimum(h, w)
  new_h = tf.cast(tf.maximum(tf.round(h * scale), size), tf.int32)
  new_w = tf.cast(tf.maximum(tf.round(w * scale), size), tf.int32)
  image = tf.clip_by_value(tf.image.resize(image, (new_h, new_w), antialias=True), 0.0, 255.0)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def normalize(image, mean, std):
  """uint8-range float -> (x / 255 - mean) / std, per channel."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (image / 255.0 - mean) / std


def train_decode(image_bytes, d):
  """The deterministic part of the training transform, as uint8: worth caching for small datasets.

  Inception crops need the full image; the other modes resize to image_size first.
  """
  image = decode(image_bytes, d.channels)
  if d.train_crop == "inception":
    return image
  return to_uint8(resize(image, d.image_size))


def _inception_crop_decoded(image, size, seed, scale, ratio):
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ratio, area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
  return resize(tf.slice(image, begin, crop_size), size)


def uint8_batches(d) -> bool:
  """Whether train images leave the host as uint8, normalised on the device (steps.normalize_images)."""
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
    if decoded:
      image = _inception_crop_decoded(image, d.image_size, crop_seed, d.crop_scale, d.crop_ratio)
    else:
      image = inception_crop(image, d.image_size, crop_seed, d.channels, d.crop_scale, d.crop_ratio)
    if as_uint8 and not d.augment:
      image = to_uint8(image)  # flip a quarter of the bytes
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


def eval_image(image_bytes, d):
  size = eval_size(d)
  if d.eval_crop == "center":
    image = center_crop(image_bytes, size, d.crop_pct, d.channels)
  else:
    image = resize(decode(image_bytes, d.channels), size)
  image = tf.ensure_shape(image, (size, size, d.channels))
  return normalize(image, d.mean, d.std)


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

"""Training augmentations in tf.data, chosen by a config string: RandAugment, TrivialAugmentWide,
AutoAugment (ImageNet policy), colour jitter, random erasing.

    config.data.augment = "randaugment(n=2,m=9,mstd=0.5)+erasing(p=0.25)"
    config.data.augment = "trivialaugment+erasing(p=0.1)"      # torchvision's 80.9% ResNet-50 recipe
    config.data.augment = "autoaugment+jitter(b=0.4,c=0.4,s=0.4)"

Ops are joined by '+' and run in that order; the policy ops (randaugment,
trivialaugment, autoaugment, jitter) act on [0, 255] images after the crop and
flip, `erasing` acts on the normalised image (as torchvision's RandomErasing
after Normalize). Every random choice is stateless, drawn from the
example's seed, so augmentation is reproducible and independent of parallelism
and of where a run resumed.

The image operations follow torchvision's tensor implementations on uint8
images (torchvision/transforms/_functional_tensor.py and autoaugment.py),
including their rounding, so that the policies mean what their papers and
torchvision's recipes mean: _blend truncates to uint8, sharpness rounds its
blurred image, equalize uses torchvision's (PIL's) histogram LUT, geometric ops
use nearest-neighbour sampling with fill 0, shear about the top-left corner,
rotation about the centre. The magnitude spaces are torchvision's (31 bins for
RandAugment/TrivialAugmentWide, 10 for AutoAugment). `mstd` adds timm's
Gaussian noise to RandAugment's magnitude, per op application, clipped to the
bin range. Tests compare each op with torchvision's on the same images.
"""
import functools
import inspect
import math
import re

import tensorflow as tf

try:  # for case(); TensorFlow's internal module, so its absence only costs speed
  from tensorflow.python.ops import cond_v2
except ImportError:
  cond_v2 = None

from vision.errors import UserError, close_matches

# --- image operations on float32 [H, W, C] images holding integers in [0, 255] -----------------------------


def _u8(x):
  """Clamp and truncate as torch's `.clamp(0, 255).to(torch.uint8)`."""
  return tf.floor(tf.clip_by_value(x, 0.0, 255.0))


def _blend(img1, img2, v):
  """torchvision's _blend(img1, img2, 1.0 + v) for a float32 magnitude v: the weights are float32(1 + v) and
  float32(1.0 - (1 + v)) with the subtraction in double, i.e. exactly -v."""
  return _u8((1.0 + v) * img1 + (-v) * img2)


def _blend_factor(img1, img2, f):
  """_blend with a float32 factor f drawn directly (ColorJitter): the second weight is float32(1.0 - f)."""
  rest = tf.cast(1.0 - tf.cast(f, tf.float64), tf.float32)
  return _u8(f * img1 + rest * img2)


def _grayscale(img):
  """torchvision's rgb_to_grayscale of a uint8 image (truncated to uint8); single channel images pass."""
  if img.shape[-1] == 1:
    return img
  r, g, b = tf.unstack(img, axis=-1)
  return tf.floor(0.2989 * r + 0.587 * g + 0.114 * b)[..., None]


def brightness(img, v):
  return _u8((1.0 + v) * img)  # _blend with a zero image: (-v) * 0 adds a signed zero, which changes nothing


def color(img, v):
  return img if img.shape[-1] == 1 else _blend(img, _grayscale(img), v)


def contrast(img, v):
  mean = tf.reduce_mean(_grayscale(img))
  return _blend(img, mean, v)


def sharpness(img, v):
  # torchvision's 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as sums of shifted slices (TensorFlow's CPU
  # depthwise convolution is ~20x slower). The sums are exact integers and sum / 13 is never a rounding tie,
  # so the rounded result equals the convolution's.
  rows = img[:-2] + img[1:-1] + img[2:]
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  centre = img[1:-1, 1:-1]
  blurred = tf.round((box + 4.0 * centre) / 13.0)
  # The border keeps its pixels (torchvision and PIL blur the interior only).
  degenerate = img + tf.pad(blurred - centre, [[1, 1], [1, 1], [0, 0]])
  return _blend(img, degenerate, v)


def posterize(img, bits):
  # floor(v / 2^s) * 2^s is exactly v's low s bits cleared (powers of two divide integers exactly in float32),
  # without the round trip through int32.
  scale = tf.cast(tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32)), img.dtype)
  return tf.floor(img / scale) * scale


def solarize(img, threshold, top=255.0):
  """top - img where img >= threshold (PIL's ImageOps.solarize; top=1 on [0, 1] images). A 0/1 mask's blend
  is exact for any float (one of its terms is zero) and 3-4x faster than tf.where on this CPU."""
  m = tf.cast(img >= threshold, img.dtype)
  return img * (1.0 - m) + (top - img) * m


def invert(img, _=None):
  return 255.0 - img


def _rows(img):
  """The image as [H, W * C] (and W): a per-channel vector tiled W times then broadcasts over the rows.
  TensorFlow's CPU kernels are slow broadcasting along the last axis ([H, W, C] with [C] or [H, W, 1]) and
  reducing over all axes but it; along the leading axis they are several times faster (BENCHMARKS.md)."""
  s = tf.shape(img)
  return tf.reshape(img, [s[0], s[1] * s[2]]), s[1]


def autocontrast(img, _=None):
  lo = tf.reduce_min(tf.reduce_min(img, 0), 0)  # per channel, the leading axis first
  hi = tf.reduce_max(tf.reduce_max(img, 0), 0)
  flat = tf.equal(hi, lo)
  scale = tf.where(flat, 1.0, 255.0 / tf.where(flat, 1.0, hi - lo))
  rows, w = _rows(img)
  out = (rows - tf.tile(tf.where(flat, 0.0, lo), [w])) * tf.tile(scale, [w])
  return tf.reshape(_u8(out), tf.shape(img))


def equalize(img, _=None):
  """torchvision's (PIL's) per-channel histogram equalisation; the channels' histograms and LUTs side by side, so
  that one bincount and one gather serve all of them."""
  c = img.shape[-1]
  rows, w = _rows(img)
  values = tf.cast(rows, tf.int32) + tf.tile(tf.range(c) * 256, [w])  # channel k's values in [256k, 256k+256)
  hist = tf.reshape(tf.math.bincount(tf.reshape(values, [-1]), minlength=256 * c, maxlength=256 * c), [c, 256])
  top = 255 - tf.argmax(tf.reverse(hist, [1]) > 0, axis=1, output_type=tf.int32)  # the highest value present
  step = (tf.reduce_sum(hist, 1) - tf.gather(hist, top, batch_dims=1)) // 255
  lut = (tf.cumsum(hist, axis=1) + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None]
  lut = tf.clip_by_value(tf.concat([tf.zeros([c, 1], lut.dtype), lut[:, :-1]], 1), 0, 255)
  lut = tf.where((step == 0)[:, None], tf.range(256)[None], lut)  # a (nearly) constant channel stays as it is
  return tf.reshape(tf.cast(tf.gather(tf.reshape(lut, [-1]), values), img.dtype), tf.shape(img))


def _round_half_away(v):
  t = tf.floor(v)
  f = v - t  # exact
  return t + tf.cast((f > 0.5) | ((f == 0.5) & (v > 0)), v.dtype)


def _transform(img, matrix):
  """Nearest-neighbour affine sampling, fill 0: output pixel (x, y) takes input pixel
  (round(a0 x + a1 y + a2), round(b0 x + b1 y + b2)) for matrix (a0, a1, a2, b0, b1, b2), in the float32 arithmetic
  and rounding of TensorFlow's ImageProjectiveTransformV3 (NEAREST, CONSTANT), then one gather of whole pixels
  (that kernel works the coordinates out again for every channel; BENCHMARKS.md has the timings)."""
  h, w = tf.shape(img)[0], tf.shape(img)[1]
  x = tf.cast(tf.range(w), tf.float32)[None, :]
  y = tf.cast(tf.range(h), tf.float32)[:, None]
  a0, a1, a2, b0, b1, b2 = tf.unstack(tf.cast(matrix, tf.float32))
  xi = tf.cast(_round_half_away((a0 * x + a1 * y) + a2), tf.int32)
  yi = tf.cast(_round_half_away((b0 * x + b1 * y) + b2), tf.int32)
  inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  # Outside pixels take the zero pixel appended at index h * w (cheaper than masking the channels afterwards).
  pixels = tf.concat([tf.reshape(img, [h * w, -1]), tf.zeros_like(img[:1, 0])], 0)
  return tf.gather(pixels, tf.where(inside, yi * w + xi, h * w))


def shear_x(img, m):  # torchvision: center [0, 0], i.e. the top-left corner of pixel (0, 0)
  return _transform(img, tf.stack([1.0, m, 0.5 * m, 0.0, 1.0, 0.0]))


def shear_y(img, m):
  return _transform(img, tf.stack([1.0, 0.0, 0.0, m, 1.0, 0.5 * m]))


def _trunc(t):  # Python's int(): toward zero, as torchvision's translate=[int(magnitude), 0]
  return tf.sign(t) * tf.floor(tf.abs(t))


def _shift(img, t, axis):
  """Moves the image by whole pixels int(t) along axis (1: right, 0: down), zeros coming in (a translation
  with nearest-neighbour sampling, without the projective transform's per-pixel work)."""
  n = tf.shape(img)[axis]
  t = tf.clip_by_value(tf.cast(_trunc(t), tf.int32), -n, n)
  source = tf.range(n) - t
  keep = tf.cast((source >= 0) & (source < n), img.dtype)
  if axis == 0:
    return tf.roll(img, t, 0) * keep[:, None, None]
  rows, _ = _rows(img)  # along the width: whole pixels are runs of C values in a row
  c = tf.shape(img)[2]
  return tf.reshape(tf.roll(rows, t * c, 1) * tf.repeat(keep, c)[None], tf.shape(img))


def translate_x(img, t):
  return _shift(img, t, 1)


def translate_y(img, t):
  return _shift(img, t, 0)


def rotate(img, degrees):
  """Counter-clockwise about the image centre (torchvision's F.rotate)."""
  a = degrees * (math.pi / 180.0)
  h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
  cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
  cos, sin = tf.cos(a), tf.sin(a)
  # x_in = cos x_c - sin y_c, y_in = sin x_c + cos y_c in coordinates centred on the image.
  return _transform(img, tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]))


def identity(img, _=None):
  return img


# --- magnitude spaces (torchvision's) --------------------------------------------------------------------
# name: (op, magnitude at the top bin or a function of the bin fraction f in [0, 1], signed)

def _space(wide: bool, image_size: int):
  linear = lambda top: (lambda f: top * f)
  return {
      "Identity": (identity, None, False),
      "ShearX": (shear_x, linear(0.99 if wide else 0.3), True),
      "ShearY": (shear_y, linear(0.99 if wide else 0.3), True),
      "TranslateX": (translate_x, linear(32.0 if wide else 150.0 / 331.0 * image_size), True),
      "TranslateY": (translate_y, linear(32.0 if wide else 150.0 / 331.0 * image_size), True),
      "Rotate": (rotate, linear(135.0 if wide else 30.0), True),
      "Brightness": (brightness, linear(0.99 if wide else 0.9), True),
      "Color": (color, linear(0.99 if wide else 0.9), True),
      "Contrast": (contrast, linear(0.99 if wide else 0.9), True),
      "Sharpness": (sharpness, linear(0.99 if wide else 0.9), True),
      "Posterize": (posterize, lambda f: 8.0 - tf.round(f * (6.0 if wide else 4.0)), False),
      "Solarize": (solarize, lambda f: 255.0 - 255.0 * f, False),
      "AutoContrast": (autocontrast, None, False),
      "Equalize": (equalize, None, False),
  }


def _apply(img, name, space, level, bins, sign_seed):
  """One op at magnitude bin `level` (float) of `bins`, with a random sign if the op is signed."""
  op, magnitude, signed = space[name]
  if magnitude is None:
    return op(img)
  m = magnitude(tf.cast(level, tf.float32) / (bins - 1))
  if signed:
    m = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -m, m)
  return op(img, m)


_indexed_case = getattr(cond_v2, "indexed_case", None)
_UNLOWERED_CASE = bool(_indexed_case) and "lower_using_switch_merge" in inspect.signature(_indexed_case).parameters


def case(index, branches):
  """tf.switch_case(index, branches), run as one function call of the chosen branch. tf.switch_case lowers its
  Case op to Switch/Merge nodes, and then every op of every branch passes a dead tensor on for each image: with
  the 14 branches of RandAugment's ops that costs ~0.3 ms per switch on this CPU (BENCHMARKS.md). The keyword
  that keeps the Case op is TensorFlow's own (what its execute_fn_for_device passes), not yet public; without
  it, the lowered switch."""
  if _UNLOWERED_CASE and not tf.executing_eagerly():
    return _indexed_case(tf.convert_to_tensor(index, tf.int32), branches, lower_using_switch_merge=False)
  return tf.switch_case(index, branches)


def _switch(index, img, names, space, level, bins, sign_seed):
  branches = [lambda n=n: _apply(img, n, space, level, bins, sign_seed) for n in names]
  return tf.ensure_shape(case(index, branches), img.shape)


def randaugment(img, seed, image_size, n=2, m=9.0, mstd=0.0, bins=31):
  """RandAugment (Cubuk et al. 2020) as torchvision's, plus timm's magnitude noise `mstd`."""
  space = _space(False, image_size)
  names = list(space)
  for i, s in enumerate(tf.unstack(tf.random.experimental.stateless_split(seed, int(n)))):
    op_seed, sign_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(s, 3))
    index = tf.random.stateless_uniform([], op_seed, 0, len(names), tf.int32)
    level = tf.constant(float(m))
    if mstd > 0:
      level = tf.clip_by_value(level + mstd * tf.random.stateless_normal([], noise_seed), 0.0, bins - 1.0)
    img = _switch(index, img, names, space, level, bins, sign_seed)
  return img


def trivialaugment(img, seed, image_size, bins=31):
  """TrivialAugmentWide (Mueller & Hutter 2021): one op, uniform bin, torchvision's wide ranges."""
  space = _space(True, image_size)
  names = list(space)
  op_seed, level_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  index = tf.random.stateless_uniform([], op_seed, 0, len(names), tf.int32)
  level = tf.random.stateless_uniform([], level_seed, 0, bins, tf.int32)
  return _switch(index, img, names, space, level, bins, sign_seed)


# torchvision's AutoAugmentPolicy.IMAGENET (Cubuk et al. 2019): (op, probability, magnitude bin of 10).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def autoaugment(img, seed, image_size):
  """AutoAugment's ImageNet policy: one of 25 sub-policies, each op applied with its probability."""
  space = dict(_space(False, image_size), Invert=(invert, None, False))
  policy_seed, *op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))

  def sub_policy(ops):
    def run():
      out = img
      for (name, p, level), s in zip(ops, (op_seeds[:2], op_seeds[2:])):
        apply = tf.cast(tf.random.stateless_uniform([], s[0]) < p, tf.int32)
        op = functools.partial(_apply, out, name, space, level or 0, 10, s[1])
        out = tf.ensure_shape(case(apply, [lambda out=out: out, op]), img.shape)  # a skipped op does not run
      return out
    return run

  index = tf.random.stateless_uniform([], policy_seed, 0, len(IMAGENET_POLICY), tf.int32)
  return tf.ensure_shape(case(index, [sub_policy(ops) for ops in IMAGENET_POLICY]), img.shape)


def jitter(img, seed, image_size, b=0.4, c=0.4, s=0.4, h=0.0, p=1.0):
  """Colour jitter: brightness, contrast, saturation factors uniform in [max(0, 1 - x), 1 + x], hue shift in
  [-h, h], in that fixed order (torchvision's ColorJitter permutes the order), with probability p."""
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
  factor = lambda x, s_: tf.random.stateless_uniform([], s_, max(0.0, 1.0 - x), 1.0 + x)
  out = img
  if b:
    out = _blend_factor(out, tf.zeros_like(out), factor(b, seeds[0]))
  if c:
    out = _blend_factor(out, tf.reduce_mean(_grayscale(out)), factor(c, seeds[1]))
  if s and img.shape[-1] == 3:
    out = _blend_factor(out, _grayscale(out), factor(s, seeds[2]))
  if h and img.shape[-1] == 3:
    out = _u8(tf.image.adjust_hue(out / 255.0, tf.random.stateless_uniform([], seeds[3], -h, h)) * 255.0 + 0.5)
  return tf.where(tf.random.stateless_uniform([], seeds[4]) < p, out, img)


def erasing_box(h, w, seed, p=0.25, smin=0.02, smax=1 / 3, rmin=0.3, rmax=3.3):
  """Random erasing's rectangle in an h x w image: int32 [top, left, height, width], height = width = 0 when
  nothing is erased (probability 1 - p, or no try fits). The draws of `erasing` with the same seed."""
  area = tf.cast(h * w, tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, 13)
  eh, ew, top, left, found = tf.constant(0), tf.constant(0), tf.constant(0), tf.constant(0), tf.constant(False)
  for i in range(10):  # the first try that fits wins
    s1, s2, s3, s4 = tf.unstack(tf.random.experimental.stateless_split(seeds[i], 4))
    target = area * tf.random.stateless_uniform([], s1, smin, smax)
    ratio = tf.exp(tf.random.stateless_uniform([], s2, math.log(rmin), math.log(rmax)))
    th = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    tw = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    fits = tf.logical_and(th < h, tw < w)
    t = tf.random.stateless_uniform([], s3, 0, tf.maximum(h - th + 1, 1), tf.int32)
    l_ = tf.random.stateless_uniform([], s4, 0, tf.maximum(w - tw + 1, 1), tf.int32)
    take = tf.logical_and(fits, tf.logical_not(found))
    eh, ew, top, left = (tf.where(take, a, b) for a, b in ((th, eh), (tw, ew), (t, top), (l_, left)))
    found = tf.logical_or(found, fits)
  erase = found & (tf.random.stateless_uniform([], seeds[10]) < p)
  return tf.stack([top, left, tf.where(erase, eh, 0), tf.where(erase, ew, 0)])


def erasing(img, seed, image_size, p=0.25, smin=0.02, smax=1 / 3, rmin=0.3, rmax=3.3, mode="const"):
  """Random erasing (Zhong et al. 2020) of a normalised image, as torchvision's RandomErasing: with
  probability p one rectangle of area fraction in [smin, smax] and log-uniform aspect ratio in [rmin, rmax]
  (10 tries to fit) is set to 0 ('const', the mean after normalisation) or to N(0, 1) noise ('pixel', timm).

  With uint8 batches (config.data.uint8_batches) the pipeline ships erasing_boxes instead and the train step
  erases on the device (vision/train/steps.py:erase)."""
  h, w = tf.shape(img)[0], tf.shape(img)[1]
  top, left, eh, ew = tf.unstack(erasing_box(h, w, seed, p, smin, smax, rmin, rmax))
  rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  seeds = tf.random.experimental.stateless_split(seed, 13)
  fill = tf.random.stateless_normal(tf.shape(img), seeds[11]) if mode == "pixel" else tf.zeros_like(img)
  return tf.where(box[..., None], fill, img)


def erasing_boxes(seed, spec, image_size):
  """The rectangles of the spec's erasing ops for one image_size^2 image, drawn as apply(after_normalise=True)
  would draw them: int32 [ops, 5] = (top, left, height, width, 1 for noise ('pixel') or 0 for zeros)."""
  ops = [(n, kw) for n, kw in parse(spec) if n in AFTER_NORMALISE]
  rows = []
  for s, (_, kwargs) in zip(tf.unstack(tf.random.experimental.stateless_split(seed, len(ops))), ops):
    kwargs = dict(kwargs)
    noise = int(kwargs.pop("mode", "const") == "pixel")
    rows.append(tf.concat([erasing_box(image_size, image_size, s, **kwargs), [noise]], 0))
  return tf.stack(rows)


# --- the config string -----------------------------------------------------------------------------------

OPS = {"randaugment": randaugment, "trivialaugment": trivialaugment, "autoaugment": autoaugment,
       "jitter": jitter, "erasing": erasing}
ARGS = {"randaugment": {"n": int, "m": float, "mstd": float, "bins": int}, "trivialaugment": {"bins": int},
        "autoaugment": {}, "jitter": {"b": float, "c": float, "s": float, "h": float, "p": float},
        "erasing": {"p": float, "smin": float, "smax": float, "rmin": float, "rmax": float, "mode": str}}
AFTER_NORMALISE = ("erasing",)


def parse(spec: str) -> list[tuple[str, dict]]:
  """'randaugment(n=2,m=9)+erasing(p=0.25)' -> [('randaugment', {'n': 2, 'm': 9.0}), ('erasing', {'p': 0.25})]."""
  out = []
  for part in filter(None, (p.strip() for p in (spec or "").split("+"))):
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", part)
    name = match.group(1) if match else part
    if not match or name not in OPS:
      raise UserError(f"config.data.augment: unknown augmentation {name!r}{close_matches(name, OPS)}; "
                      f"use {', '.join(OPS)} joined by '+', e.g. 'randaugment(n=2,m=9)+erasing(p=0.25)'")
    kwargs = {}
    for item in filter(None, (i.strip() for i in (match.group(2) or "").split(","))):
      key, sep, value = item.partition("=")
      if not sep or key not in ARGS[name]:
        takes = ", ".join(f"{k}=" for k in ARGS[name]) + " arguments" if ARGS[name] else "no arguments"
        raise UserError(f"config.data.augment: {name} takes {takes}, not {item!r}")
      try:
        kwargs[key] = ARGS[name][key](value)
      except ValueError:
        raise UserError(f"config.data.augment: {name}({item}) needs a {ARGS[name][key].__name__}") from None
    if name == "erasing" and kwargs.get("mode", "const") not in ("const", "pixel"):
      raise UserError("config.data.augment: erasing(mode=...) is 'const' or 'pixel'")
    out.append((name, kwargs))
  return out


def has_erasing(spec: str) -> bool:
  """Whether `spec` has an op that works on normalised values (random erasing)."""
  return any(name in AFTER_NORMALISE for name, _ in parse(spec))


def apply(image, seed, spec, image_size, after_normalise=False):
  """The ops of `spec` that act before (default) or after normalisation, on one image."""
  ops = [(n, kw) for n, kw in parse(spec) if (n in AFTER_NORMALISE) == after_normalise]
  if not ops:
    return image
  if not after_normalise:  # the policies work on uint8 values, as torchvision's
    image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
  for s, (name, kwargs) in zip(tf.unstack(tf.random.experimental.stateless_split(seed, len(ops))), ops):
    image = OPS[name](image, s, image_size, **kwargs)
  return image

"""Augmentations: each op against torchvision's on the same uint8 images, policy invariants, the config string,
and the train stream with augmentation (deterministic, resumable, repeated augmentation)."""
import numpy as np
import pytest
import tensorflow as tf

from test_data import digits_data
from vision.data import augment, pipeline
from vision.errors import UserError


def _images(seed=0, n=3, size=(23, 31)):
  rng = np.random.default_rng(seed)
  out = [rng.integers(0, 256, size=(*size, 3)).astype(np.uint8)]
  # A smooth image with a narrow range: autocontrast and equalize have work to do.
  y, x = np.mgrid[0:size[0], 0:size[1]]
  out.append(np.stack([40 + (x * 3) % 50, 60 + (y * 2) % 40, 80 + (x + y) % 30], -1).astype(np.uint8))
  out.append(np.full((*size, 3), 77, np.uint8))  # constant: the degenerate cases
  return out[:n]


def _ours(op, img, *args):
  return op(tf.constant(img, tf.float32), *(tf.constant(a, tf.float32) for a in args)).numpy()


# (our op, torchvision functional name, our magnitude, torchvision's argument). torchvision's policies compute
# factors as 1.0 + float(float32 magnitude); the blend factors below are written the same way.
_factor = lambda m: 1.0 + float(np.float32(m))
COLOR_OPS = [(op, name, m, _factor(m)) for op, name in (
    (augment.brightness, "adjust_brightness"), (augment.color, "adjust_saturation"),
    (augment.contrast, "adjust_contrast"), (augment.sharpness, "adjust_sharpness")) for m in (0.8, -0.7)] + [
    (augment.posterize, "posterize", 3, 3), (augment.posterize, "posterize", 8, 8),
    (augment.solarize, "solarize", 128.0, 128.0), (augment.solarize, "solarize", 0.0, 0.0),
    (augment.autocontrast, "autocontrast", None, None), (augment.equalize, "equalize", None, None),
    (augment.invert, "invert", None, None),
]


@pytest.mark.parametrize("op,tv_name,ours_arg,tv_arg", COLOR_OPS,
                         ids=[f"{c[1]}({c[3]})" for c in COLOR_OPS])
def test_color_ops_equal_torchvision(op, tv_name, ours_arg, tv_arg):
  torch = pytest.importorskip("torch")
  F = pytest.importorskip("torchvision.transforms.functional")
  for img in _images():
    want = getattr(F, tv_name)(*([torch.from_numpy(img).permute(2, 0, 1)] + ([tv_arg] if tv_arg is not None else [])))
    got = _ours(op, img, *([ours_arg] if ours_arg is not None else []))
    np.testing.assert_array_equal(got, want.permute(1, 2, 0).numpy().astype(np.float32), err_msg=tv_name)


GEOMETRIC_OPS = [(augment.shear_x, "ShearX", 0.3), (augment.shear_y, "ShearY", -0.25),
                 (augment.translate_x, "TranslateX", 7.0), (augment.translate_y, "TranslateY", -5.0),
                 (augment.rotate, "Rotate", 30.0), (augment.rotate, "Rotate", -17.0)]


@pytest.mark.parametrize("op,tv_name,m", GEOMETRIC_OPS, ids=[f"{g[1]}({g[2]})" for g in GEOMETRIC_OPS])
def test_geometric_ops_match_torchvision(op, tv_name, m):
  """Nearest-neighbour sampling: equal up to rounding ties at a few pixels."""
  torch = pytest.importorskip("torch")
  from torchvision.transforms import InterpolationMode
  from torchvision.transforms.autoaugment import _apply_op
  img = _images()[0]
  want = _apply_op(torch.from_numpy(img).permute(2, 0, 1), tv_name, m, InterpolationMode.NEAREST, None)
  got = _ours(op, img, m)
  mismatch = np.mean(np.any(got != want.permute(1, 2, 0).numpy(), axis=-1))
  assert mismatch < 0.02, mismatch


def test_identities():
  img = _images()[0].astype(np.float32)
  for op, arg in [(augment.posterize, 8), (augment.solarize, 256.0), (augment.brightness, 0.0),
                  (augment.contrast, 0.0), (augment.shear_x, 0.0), (augment.translate_y, 0.0), (augment.rotate, 0.0)]:
    np.testing.assert_array_equal(_ours(op, img, arg), img, err_msg=op.__name__)
  np.testing.assert_array_equal(_ours(augment.rotate, img[:, :23], 90.0)[1:-1, 1:-1],
                                np.rot90(img[:, :23], 1)[1:-1, 1:-1])  # counter-clockwise


def test_affine_sampling_is_tensorflows_projective_transform():
  """Shear and rotation sample by one gather at coordinates worked out as ImageProjectiveTransformV3 (NEAREST,
  fill 0) works them out: the same output, up to float32 rounding at a rare pixel."""
  rng = np.random.default_rng(3)
  mismatched = total = 0
  for trial in range(24):
    h, w = rng.integers(3, 90, 2)
    img = tf.constant(rng.integers(1, 256, (h, w, 3)).astype(np.float32))  # no 0s: the fill shows
    op = (augment.shear_x, augment.shear_y, augment.rotate)[trial % 3]
    m = float(rng.uniform(-180, 180)) if op is augment.rotate else float(rng.uniform(-1, 1))
    m = round(m, 1) if trial % 4 == 0 else m  # ties: coordinates ending in .5
    matrix = {augment.shear_x: [1.0, m, 0.5 * m, 0, 1, 0], augment.shear_y: [1, 0, 0, m, 1, 0.5 * m]}.get(op)
    if matrix is None:
      a, cx, cy = np.deg2rad(np.float32(m)), (w - 1) / 2, (h - 1) / 2
      c, s = np.cos(a), np.sin(a)
      matrix = [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy]
    want = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None], transforms=tf.constant([list(matrix) + [0, 0]], tf.float32), output_shape=[h, w],
        fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")[0].numpy()
    got = _ours(op, img.numpy(), m)
    assert got.shape == want.shape and np.any(got == 0) == np.any(want == 0)
    mismatched += np.sum(np.any(got != want, axis=-1))
    total += h * w
  assert mismatched <= total * 1e-3, (mismatched, total)


def test_equalize_and_posterize_equal_torchvision_on_odd_histograms():
  """Channels with one value (left alone), two values, one pixel apart from the rest, a 1 x 1 image."""
  torch = pytest.importorskip("torch")
  F = pytest.importorskip("torchvision.transforms.functional")
  rng = np.random.default_rng(4)
  base = rng.integers(0, 256, (17, 13, 3)).astype(np.uint8)
  two = np.where(rng.random((17, 13)) < 0.3, 10, 200).astype(np.uint8)
  spike = np.full((17, 13), 90, np.uint8)
  spike[3, 4] = 255
  for img in [np.stack([base[..., 0], np.full((17, 13), 5, np.uint8), two], -1), np.stack([spike, two, spike], -1),
              base[:1, :1], np.full((4, 4, 3), 255, np.uint8)]:
    t = torch.from_numpy(img).permute(2, 0, 1)
    np.testing.assert_array_equal(_ours(augment.equalize, img), F.equalize(t).permute(1, 2, 0).numpy())
    for bits in range(0, 9):
      np.testing.assert_array_equal(_ours(augment.posterize, img, bits), F.posterize(t, bits).permute(1, 2, 0).numpy())


def test_autocontrast_per_channel_and_translations_by_whole_pixels():
  """autocontrast with one flat channel among stretched ones (torchvision's); translations equal numpy's shift
  with zeros coming in, for fractional, negative and larger-than-the-image magnitudes (truncated toward zero)."""
  torch = pytest.importorskip("torch")
  F = pytest.importorskip("torchvision.transforms.functional")
  rng = np.random.default_rng(5)
  img = np.stack([rng.integers(30, 90, (9, 14)), np.full((9, 14), 201), rng.integers(0, 256, (9, 14))], -1)
  img = img.astype(np.uint8)
  want = F.autocontrast(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
  np.testing.assert_array_equal(_ours(augment.autocontrast, img), want)
  for t in (-20.0, -14.0, -7.9, -1.0, -0.6, 0.0, 0.6, 3.7, 13.0, 14.0, 40.0):
    for op, axis in ((augment.translate_x, 1), (augment.translate_y, 0)):
      k, n = int(t), img.shape[axis]  # int(): toward zero, as torchvision's
      want = np.zeros_like(img)
      src = [slice(None)] * 2
      dst = [slice(None)] * 2
      src[axis], dst[axis] = (slice(0, max(n - k, 0)), slice(k, n)) if k >= 0 else (slice(-k, n), slice(0, max(n + k, 0)))
      want[tuple(dst)] = img[tuple(src)]
      np.testing.assert_array_equal(_ours(op, img, t), want, err_msg=f"{op.__name__}({t})")


def test_case_runs_the_chosen_branch_as_switch_case_does():
  """augment.case (the Case op kept, not lowered to Switch/Merge) picks what tf.switch_case picks, out-of-range
  indices included (the last branch), eagerly, in a tf.function and in tf.data."""
  branches = [lambda k=k: tf.constant([float(k)]) for k in range(4)]

  @tf.function
  def both(i):
    return augment.case(i, branches), tf.switch_case(i, branches)

  for i in (-3, 0, 2, 3, 4, 99):
    ours, want = both(tf.constant(i))
    assert ours.numpy()[0] == want.numpy()[0] == tf.switch_case(tf.constant(i), branches).numpy()[0]
    assert augment.case(tf.constant(i), branches).numpy()[0] == want.numpy()[0]
  got = [float(v[0]) for v in tf.data.Dataset.range(6).map(lambda i: augment.case(tf.cast(i, tf.int32), branches))]
  assert got == [0.0, 1.0, 2.0, 3.0, 3.0, 3.0]
  graph = both.get_concrete_function(tf.constant(0)).graph.as_graph_def()
  cases = [n for n in graph.node if n.op.endswith("Case")]
  assert len(cases) == 2
  if augment._UNLOWERED_CASE:
    assert sorted(n.attr["_lower_using_switch_merge"].b for n in cases) == [False, True]


def test_trivialaugment_in_a_graph_gives_the_eager_ops_result():
  """The policy traced into a graph applies exactly the op the parity tests check eagerly, at the drawn bin and
  sign. (With the Case op lowered to Switch/Merge, graph rewrites moved 0.1-1% of the blend ops' pixels by
  one level.)"""
  rng = np.random.default_rng(6)
  img = tf.constant(rng.integers(0, 256, (20, 28, 3)).astype(np.float32))
  space = augment._space(True, 28)
  names = list(space)
  policy = tf.function(lambda seed: augment.trivialaugment(img, seed, 28))
  seen = set()
  for k in range(80):
    seed = tf.constant([k, 11])
    op_seed, level_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    name = names[int(tf.random.stateless_uniform([], op_seed, 0, len(names), tf.int32))]
    level = tf.random.stateless_uniform([], level_seed, 0, 31, tf.int32)
    want = augment._apply(img, name, space, level, 31, sign_seed).numpy()
    np.testing.assert_array_equal(policy(seed).numpy(), want, err_msg=f"{name} at bin {int(level)}")
    seen.add(name)
  assert {"Color", "Sharpness", "Brightness", "Contrast"} <= seen


@pytest.mark.parametrize("spec", ["randaugment(n=2,m=9,mstd=0.5)", "trivialaugment", "autoaugment",
                                  "jitter(b=0.4,c=0.4,s=0.4,h=0.1)"])
def test_policies_keep_uint8_values_and_are_deterministic(spec):
  img = tf.constant(_images()[1], tf.float32)
  outs = [augment.apply(img, tf.constant([s, 7]), spec, 23).numpy() for s in range(12)]
  for out in outs:
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out, np.round(out))
  np.testing.assert_array_equal(augment.apply(img, tf.constant([3, 7]), spec, 23).numpy(), outs[3])
  assert len({o.tobytes() for o in outs}) >= 6  # different seeds, different results


def test_random_erasing_area_and_probability():
  img = tf.ones((40, 50, 3))
  erased = [augment.erasing(img, tf.constant([s, 1]), 40, p=1.0).numpy() for s in range(40)]
  fractions = np.array([np.mean(e[..., 0] == 0) for e in erased])
  assert np.all(fractions > 0) and np.all(fractions < 0.36) and fractions.min() >= 0.015
  for e in erased:  # one axis-aligned rectangle, all channels
    rows, cols = np.nonzero(e[..., 0] == 0)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)
    assert np.array_equal(e[..., 0] == 0, e[..., 2] == 0)
  kept = [augment.erasing(img, tf.constant([s, 1]), 40, p=0.0).numpy() for s in range(10)]
  assert all(np.all(k == 1) for k in kept)
  noise = augment.erasing(img, tf.constant([0, 1]), 40, p=1.0, mode="pixel").numpy()
  assert 0 < np.mean(noise != 1) < 0.36 and np.std(noise[noise != 1]) > 0.5


@pytest.mark.parametrize("mode", ["const", "pixel"])
def test_uint8_batches_leave_random_erasing_to_the_step_with_the_same_rectangles(tmp_path, mode):
  """data.uint8_batches with erasing: the host draws the rectangles it would have erased, the step erases."""
  import jax
  from test_data import _write_folder
  from vision.train.config import default_config
  from vision.train.steps import erase, normalize_images
  root = str(tmp_path / "imgs")
  _write_folder(root, "train", {"a": 8, "b": 8}, size=(40, 30), ext=".jpg")
  d = default_config().data
  d.name, d.image_size, d.mean, d.std = f"imagefolder:{root}", 24, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  d.augment = f"jitter(b=0.4)+erasing(p=0.7,mode={mode})"
  d.uint8_batches = False
  host = next(pipeline.train_batches(d, 16, seed=5))
  d.uint8_batches = True
  mine = next(pipeline.train_batches(d, 16, seed=5))
  assert set(host) == {"image", "label"} and mine["image"].dtype == np.uint8 and mine["erase"].shape == (16, 1, 5)
  boxes = mine["erase"][:, 0]
  assert 4 <= np.sum(boxes[:, 2] > 0) <= 15 and np.all(boxes[:, 4] == (mode == "pixel"))  # p = 0.7 of 16
  on_device = np.asarray(erase(normalize_images(mine["image"], d.mean, d.std), mine["erase"], jax.random.key(0)))
  inside = np.zeros(host["image"].shape[:3], bool)
  for i, (top, left, h, w, _) in enumerate(boxes):
    inside[i, top:top + h, left:left + w] = True
  tol = 0.5 / 255 / min(d.std) + 1e-5  # uint8 rounding
  np.testing.assert_allclose(on_device[~inside], host["image"][~inside], rtol=0, atol=tol)
  if mode == "const":  # the host erased exactly these rectangles, to 0
    np.testing.assert_allclose(on_device, host["image"], rtol=0, atol=tol)
    assert np.all(on_device[inside] == 0)
  else:  # N(0, 1) noise on both sides (other draws)
    assert abs(on_device[inside].mean()) < 0.1 and 0.9 < on_device[inside].std() < 1.1
    assert abs(host["image"][inside].std() - 1) < 0.1


def test_config_string_errors():
  assert augment.parse("randaugment(n=2,m=9)+erasing(p=0.25)") == [("randaugment", {"n": 2, "m": 9.0}),
                                                                   ("erasing", {"p": 0.25})]
  with pytest.raises(UserError, match=r"unknown augmentation 'randaugmnt' \(did you mean: randaugment"):
    augment.parse("randaugmnt")
  with pytest.raises(UserError, match=r"randaugment takes n=, m=, mstd=, bins= arguments, not 'x=1'"):
    augment.parse("randaugment(x=1)")
  with pytest.raises(UserError, match=r"needs a float"):
    augment.parse("erasing(p=high)")


def test_train_stream_with_augmentation_is_deterministic_and_resumable(data_dir):
  d = digits_data(data_dir)
  d.augment, d.channels, d.mean, d.std = "randaugment(n=2,m=9,mstd=0.5)+erasing(p=0.5)", 3, (0.5,) * 3, (0.5,) * 3
  first = pipeline.train_batches(d, 16, seed=1)
  batches = [next(first) for _ in range(3)]
  assert batches[0]["image"].dtype == np.uint8 and batches[0]["erase"].shape == (16, 1, 5)  # erased by the step
  again = next(pipeline.train_batches(d, 16, seed=1, start_step=2))
  np.testing.assert_array_equal(again["image"], batches[2]["image"])
  np.testing.assert_array_equal(again["erase"], batches[2]["erase"])
  d.augment = ""
  plain = next(pipeline.train_batches(d, 16, seed=1))
  assert not np.array_equal(plain["image"], batches[0]["image"])
  np.testing.assert_array_equal(plain["label"], batches[0]["label"])  # augmentation leaves the order alone


def test_repeated_augmentation_repeats_each_image_differently(data_dir):
  d = digits_data(data_dir)
  d.augment, d.repeated_augment, d.channels = "trivialaugment", 3, 3
  d.mean, d.std = (0.5,) * 3, (0.5,) * 3
  batch = next(pipeline.train_batches(d, 30, seed=0))
  assert batch["image"].dtype == np.uint8  # no op after normalisation: uint8 batches (data.uint8_batches)
  labels = batch["label"].reshape(10, 3)
  assert np.all(labels == labels[:, :1])  # three copies in a row
  images = batch["image"].reshape(10, 3, -1)
  assert sum(not np.array_equal(images[i, 0], images[i, 1]) for i in range(10)) >= 5  # augmented apart

"""Input pipeline: the digits dataset, resumable train stream, exactly-once eval, folders, tfds mocks."""
import collections
import io
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import PIL
from PIL import Image

from vision import UserError
from vision.data import pipeline
from vision.data.digits import NUM_TEST, NUM_TRAIN, digits_split
from vision.train.config import default_config


def digits_data(data_dir):
  d = default_config().data
  d.name, d.data_dir, d.image_size, d.channels = "digits", data_dir, 32, 1
  d.train_crop, d.pad, d.flip, d.eval_crop, d.mean, d.std = "pad_random", 2, False, "resize", (0.5,), (0.5,)
  return d


def test_digits_split_is_fixed_stratified_and_disjoint():
  images, labels, train_idx, test_idx = digits_split()
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8 and images.max() == 255
  assert (len(train_idx), len(test_idx)) == (NUM_TRAIN, NUM_TEST) == (1437, 360)
  assert not set(train_idx) & set(test_idx)
  counts = np.bincount(labels[test_idx], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each digit


def test_digits_tfds_facts(data_dir):
  num_classes, names, n_train = pipeline.dataset_facts(digits_data(data_dir))
  assert (num_classes, n_train) == (10, NUM_TRAIN)
  assert names == [str(i) for i in range(10)]


def test_train_stream_resumes_exactly_and_is_deterministic(data_dir):
  d = digits_data(data_dir)
  run = pipeline.train_batches(d, 64, seed=3)
  batches = [next(run) for _ in range(30)]  # crosses an epoch boundary (1437 / 64 = 22.5)
  assert batches[0]["image"].shape == (64, 32, 32, 1) and batches[0]["image"].dtype == np.uint8  # uint8_batches
  assert batches[0]["label"].dtype == np.int32
  assert batches[0]["image"].max() == 255  # the digits' ink
  again = pipeline.train_batches(d, 64, seed=3, start_step=0)
  np.testing.assert_array_equal(next(again)["image"], batches[0]["image"])
  for start in (7, 22, 25):
    resumed = next(pipeline.train_batches(d, 64, seed=3, start_step=start))
    np.testing.assert_array_equal(resumed["image"], batches[start]["image"])
    np.testing.assert_array_equal(resumed["label"], batches[start]["label"])
  other_seed = next(pipeline.train_batches(d, 64, seed=4))
  assert not np.array_equal(other_seed["label"], batches[0]["label"])
  # The first epoch (22 full batches + part of the 23rd) holds no duplicates.
  first_epoch = np.concatenate([b["image"].reshape(64, -1) for b in batches[:22]])
  assert len(np.unique(first_epoch, axis=0)) > 0.97 * len(first_epoch)  # a few digits are identical images


def test_eval_covers_every_example_exactly_once(data_dir):
  d = digits_data(data_dir)
  batches, n = pipeline.eval_batches(d, "test", 64)
  batches = list(batches)
  assert n == len(batches) == 6  # ceil(360 / 64)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert mask.sum() == NUM_TEST and len(mask) == 6 * 64
  _, all_labels, _, test_idx = digits_split()
  assert collections.Counter(labels[mask == 1]) == collections.Counter(all_labels[test_idx])
  assert np.all(mask[:NUM_TEST] == 1) and np.all(mask[NUM_TEST:] == 0)


def test_process_shares_are_disjoint_and_eval_batches_agree(data_dir):
  d = digits_data(data_dir)
  sources = [pipeline.source(d, "test", p, 3) for p in range(3)]
  assert sum(s.num_examples for s in sources) == NUM_TEST
  counts = [pipeline.eval_batches(d, "test", 16, p, 3)[1] for p in range(3)]
  assert len(set(counts)) == 1  # every process runs the same number of eval steps
  seen = [ex[0].numpy() + bytes([int(ex[1])]) for s in sources for ex in s.records]
  assert len(seen) == NUM_TEST


def _write_folder(root, split, counts, size=(20, 14), mode="RGB", ext=".png"):
  rng = np.random.default_rng(0)
  for cls, n in counts.items():
    os.makedirs(os.path.join(root, split, cls), exist_ok=True)
    for i in range(n):
      shape = size[::-1] + ((3,) if mode == "RGB" else ())
      Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
          os.path.join(root, split, cls, f"{i}{ext}"))


def test_image_folder_source(tmp_path):
  root = str(tmp_path / "imgs")
  _write_folder(root, "train", {"cat": 5, "dog": 3})
  _write_folder(root, "test", {"cat": 2, "dog": 2}, mode="L", ext=".jpg")  # grayscale JPEGs become RGB
  d = default_config().data
  d.name, d.image_size, d.train_split, d.eval_split = f"imagefolder:{root}", 16, "train", "test"
  num_classes, names, n = pipeline.dataset_facts(d)
  assert (num_classes, names, n) == (2, ["cat", "dog"], 8)
  batch = next(pipeline.train_batches(d, 4, seed=0))
  assert batch["image"].shape == (4, 16, 16, 3)
  batches, n_batches = pipeline.eval_batches(d, "test", 3)
  batches = list(batches)
  labels = np.concatenate([b["label"] for b in batches])[np.concatenate([b["mask"] for b in batches]) == 1]
  assert n_batches == 2 and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_image_folder_errors(tmp_path):
  root = str(tmp_path / "imgs")
  _write_folder(root, "train", {"cat": 2})
  os.makedirs(os.path.join(root, "train", "empty"))
  d = default_config().data
  d.name = f"imagefolder:{root}"
  with pytest.raises(UserError, match="has no images"):
    pipeline.dataset_facts(d)
  d.name = f"imagefolder:{tmp_path}/missing"
  with pytest.raises(UserError, match="does not exist"):
    pipeline.dataset_facts(d)


def test_mocked_cifar10_batches():
  d = default_config().data
  d.name, d.image_size, d.train_crop, d.eval_crop = "cifar10", 32, "pad_random", "resize"
  with tfds.testing.mock_data(num_examples=40):
    num_classes, _, n = pipeline.dataset_facts(d)
    batch = next(pipeline.train_batches(d, 8, seed=0))
    _, n_eval = pipeline.eval_batches(d, "test", 16)
  assert (num_classes, n, n_eval) == (10, 40, 3)
  assert batch["image"].shape == (8, 32, 32, 3)


def test_unknown_dataset_and_split(data_dir):
  d = default_config().data
  d.name = "cifar11"
  with pytest.raises(UserError, match=r"unknown dataset 'cifar11'.*cifar10"):
    pipeline.dataset_facts(d)
  d = digits_data(data_dir)
  with pytest.raises(UserError, match=r"no split 'tset'.*test"):
    pipeline.eval_batches(d, "tset", 8)


def test_imagenet_not_prepared_says_how_to_prepare(tmp_path):
  d = default_config().data
  d.name, d.data_dir = "imagenet2012", str(tmp_path)
  with pytest.raises(UserError, match=r"manual download.*ILSVRC2012_img_train.tar.*tfds build imagenet2012"):
    pipeline.dataset_facts(d)


def test_cached_decoding_gives_the_same_stream(data_dir, tmp_path):
  d = digits_data(data_dir)
  d.cache = False
  plain = pipeline.train_batches(d, 64, seed=1, start_step=20)
  d.cache = True
  cached = pipeline.train_batches(d, 64, seed=1, start_step=20)
  for _ in range(4):  # crosses the epoch boundary at step 22.5
    a, b = next(plain), next(cached)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Inception crops from cached full-size images equal those cut from the encoded PNGs.
  root = str(tmp_path / "imgs")
  _write_folder(root, "train", {"a": 4, "b": 4}, size=(40, 30))
  f = default_config().data
  f.name, f.image_size, f.train_crop = f"imagefolder:{root}", 16, "inception"
  plain = next(pipeline.train_batches(f, 8, seed=0))
  f.cache = True
  np.testing.assert_allclose(next(pipeline.train_batches(f, 8, seed=0))["image"], plain["image"], atol=1e-6)


@pytest.mark.parametrize("crop", ["inception", "pad_random"])
def test_uint8_batches_normalised_on_the_device_equal_the_float_batches(tmp_path, crop):
  """data.uint8_batches: the same crops and flips, normalised by the train step instead of the host."""
  from vision.train.steps import normalize_images
  root = str(tmp_path / "imgs")
  _write_folder(root, "train", {"a": 6, "b": 6}, size=(40, 30), ext=".jpg")
  d = default_config().data
  d.name, d.image_size, d.train_crop, d.flip = f"imagefolder:{root}", 24, crop, True
  d.mean, d.std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  d.uint8_batches = False
  floats = [next(pipeline.train_batches(d, 8, seed=s)) for s in range(3)]
  d.uint8_batches = True
  bytes_ = [next(pipeline.train_batches(d, 8, seed=s)) for s in range(3)]
  for f, b in zip(floats, bytes_):
    assert f["image"].dtype == np.float32 and b["image"].dtype == np.uint8
    np.testing.assert_array_equal(f["label"], b["label"])
    on_device = np.asarray(normalize_images(b["image"], d.mean, d.std))
    # The uint8 side is rounded to whole levels (as PIL stores a resized image): half a level apart at most.
    np.testing.assert_allclose(on_device, f["image"], rtol=0, atol=0.5 / 255 / min(d.std) + 1e-5)
  assert normalize_images(floats[0]["image"], d.mean, d.std) is floats[0]["image"]  # floats pass through
  with pytest.raises(ValueError, match="need the mean and std"):
    normalize_images(bytes_[0]["image"], None, None)


def test_uint8_eval_batches_normalise_to_the_float_ones(tmp_path):
  """data.uint8_batches also covers evaluation: the same pixels (the eval transform yields whole levels),
  normalised by the consumer's jitted step; the padding rows stay zeros of the batch's dtype."""
  from vision.train.steps import normalize_images
  root = str(tmp_path / "imgs")
  _write_folder(root, "test", {"a": 3, "b": 2}, size=(40, 30), ext=".jpg")
  _write_folder(root, "train", {"a": 1, "b": 1}, size=(40, 30), ext=".jpg")
  d = default_config().data
  d.name, d.image_size, d.mean, d.std = f"imagefolder:{root}", 24, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  d.uint8_batches = False
  floats = list(pipeline.eval_batches(d, "test", 4)[0])
  d.uint8_batches = True
  bytes_ = list(pipeline.eval_batches(d, "test", 4)[0])
  assert len(floats) == len(bytes_) == 2
  for f, b in zip(floats, bytes_):
    assert f["image"].dtype == np.float32 and b["image"].dtype == np.uint8
    np.testing.assert_array_equal(f["label"], b["label"])
    np.testing.assert_array_equal(f["mask"], b["mask"])
    real = f["mask"] > 0  # padding rows are zeros in either dtype, hence not equal once normalised; masked out
    np.testing.assert_allclose(np.asarray(normalize_images(b["image"], d.mean, d.std))[real], f["image"][real],
                               atol=2e-6)
  assert not bytes_[1]["image"][1:].any() and bytes_[1]["mask"].tolist() == [1, 0, 0, 0]


def test_train_resize_fast_paths_equal_the_antialiased_resize():
  """The train crops' resize: enlarging crops take the plain bilinear kernel, uint8 output rounds in one pass;
  both equal the antialiased float resize (and PIL's, within a level) to float rounding."""
  from vision.data import preprocess
  rng = np.random.default_rng(2)
  size = 32
  # The first four fit in 32 x 32 (the plain kernel); the rest shrink on a side (antialiased).
  for h, w in [(20, 20), (32, 9), (32, 32), (1, 7), (33, 8), (40, 50), (64, 31)]:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for method in ("bilinear", "bicubic"):
      ref = tf.clip_by_value(tf.image.resize(image, (size, size), method=method, antialias=True), 0, 255).numpy()
      ours = preprocess.resize(tf.constant(image), size, method).numpy()
      np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-3, err_msg=str((h, w, method)))
      rounded = preprocess.resize(tf.constant(image), size, method, as_uint8=True).numpy()
      assert rounded.dtype == np.uint8
      near_half = np.abs(ref - np.floor(ref) - 0.5) < 2e-3
      np.testing.assert_array_equal(rounded[~near_half], np.floor(ref + 0.5)[~near_half])
      assert np.abs(rounded.astype(int) - ref).max() <= 0.5 + 2e-3
      if method == "bilinear":  # (bicubic's one pass is not PIL's two clipped ones where the kernel overshoots)
        pil_out = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), np.int64)
        assert np.abs(rounded.astype(np.int64) - pil_out).max() <= 1, (h, w)


def _textured_png(rng, h, w):
  """A smooth picture plus noise (what resampling errors and off-by-one crops show up in), PNG-encoded."""
  coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.int64)
  image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


# Shapes: landscape, portrait, square, odd sides (crop offsets with halves), an extreme aspect ratio, and a
# shorter side below the resize size (upsampling).
EVAL_SHAPES = [(375, 500), (500, 375), (333, 333), (301, 457), (457, 301), (260, 999), (224, 300)]


def test_eval_transform_equals_the_weights_transforms_of_torchvision():
  """Resize + CenterCrop + Normalize of torchvision's released weights (PIL images, as they were evaluated):
  the sizes, crop offsets and filter must be theirs; resampling within 2 levels of PIL (1 when shrinking)."""
  pytest.importorskip("torch")
  models = pytest.importorskip("torchvision.models")
  from vision.data import preprocess
  weights = [models.ResNet50_Weights.IMAGENET1K_V1,  # resize 256, bilinear
             models.ResNet50_Weights.IMAGENET1K_V2,  # 232 bilinear
             models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,  # 236 bilinear
             models.Swin_T_Weights.IMAGENET1K_V1,  # 232 bicubic
             models.EfficientNet_B3_Weights.IMAGENET1K_V1]  # 320 bicubic, crop 300
  rng = np.random.default_rng(0)
  for h, w in EVAL_SHAPES:
    data = _textured_png(rng, h, w)
    for weight in weights:
      t = weight.transforms()
      size, resize = t.crop_size[0], t.resize_size[0]
      d = default_config().data
      d.image_size, d.crop_pct, d.mean, d.std = size, size / resize, tuple(t.mean), tuple(t.std)
      d.interpolation = t.interpolation.value
      assert preprocess.resize_size(size, d.crop_pct) == resize
      ref = t(Image.open(io.BytesIO(data))).numpy().transpose(1, 2, 0)
      ours = preprocess.eval_image(tf.constant(data), d).numpy()
      levels = np.abs(ours - ref) * np.asarray(t.std) * 255.0  # back to uint8 levels
      assert ours.shape == ref.shape, (h, w, weight)
      assert levels.max() < (1.01 if min(h, w) >= resize else 2.01), (h, w, weight, levels.max())
      assert np.mean(levels > 0.5) < 0.05, (h, w, weight)


def test_eval_resize_mode_equals_pil_resize():
  """eval_crop='resize' (and the train resize of the pad-crop modes): PIL's resize to size x size."""
  from vision.data import preprocess
  rng = np.random.default_rng(1)
  for (h, w), size, method in [((8, 8), 32, "bilinear"), ((375, 500), 224, "bilinear"), ((301, 457), 160, "bicubic")]:
    image = np.asarray(Image.open(io.BytesIO(_textured_png(rng, h, w))))
    pil = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[method]
    ref = np.asarray(Image.fromarray(image).resize((size, size), pil), np.float32)
    ours = preprocess.pil_resize(tf.constant(image), size, size, method).numpy()
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1 and np.mean(ours != ref) < 0.05


def test_pil_resize_keeps_the_horizontal_pass_first_where_pillow_13_goes_vertical_first():
  """Tall shrinks (h - new_h > 2 (w - new_w)): PIL's horizontal pass then its vertical pass, as two one-axis
  resizes, which every Pillow version computes alike (Pillow <= 12's one call did the same; 13's goes vertical
  first, and where the two orders differ we side with the older one)."""
  from vision.data import preprocess
  rng = np.random.default_rng(4)
  for (h, w), (new_h, new_w), method in [((96, 47), (8, 22), "bilinear"), ((301, 200), (160, 160), "bicubic"),
                                         ((500, 180), (284, 102), "bilinear")]:
    assert h - new_h > 2 * (w - new_w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[method]
    one_axis = lambda im, size: im.resize(size, pil)
    horizontal_first = np.asarray(one_axis(one_axis(Image.fromarray(image), (new_w, h)), (new_w, new_h)), np.int64)
    vertical_first = np.asarray(one_axis(one_axis(Image.fromarray(image), (w, new_h)), (new_w, new_h)), np.int64)
    ours = preprocess.pil_resize(tf.constant(image), new_h, new_w, method).numpy()
    assert np.abs(ours - horizontal_first).max() <= 1 and np.mean(ours != horizontal_first) < 0.05, (h, w)
    assert np.mean(horizontal_first != vertical_first) > 0.05  # the order matters here
    one_call = np.asarray(Image.fromarray(image).resize((new_w, new_h), pil), np.int64)
    newer = int(PIL.__version__.split(".")[0]) >= 13
    np.testing.assert_array_equal(one_call, vertical_first if newer else horizontal_first)


def test_pil_resize_rows_as_one_pixel_wide_images_is_the_two_axis_resample_to_the_bit():
  """pil_resize's passes resample one axis of a 1-pixel-wide image; ScaleAndTranslate on the 2-D image with
  scale 1 on the other axis (the implementation before 2026-12-01) gives the same values to the bit."""
  from vision.data import preprocess
  kernels = {"bilinear": "triangle", "bicubic": "keyscubic"}

  def two_axis(image, new_h, new_w, method, window):
    h, w = image.shape[:2]
    top, left, out_h, out_w = window

    def resample(x, size, scale, translation):
      out = tf.raw_ops.ScaleAndTranslate(images=x[None], size=size, scale=tf.constant(scale, tf.float32),
                                         translation=tf.constant(translation, tf.float32),
                                         kernel_type=kernels[method], antialias=True)[0]
      return tf.floor(tf.clip_by_value(out, 0.0, 255.0) + 0.5)
    x = resample(image, [h, out_w], [1.0, new_w / w], [0.0, -left])
    return resample(x, [out_h, out_w], [new_h / h, 1.0], [-top, 0.0]).numpy()
  rng = np.random.default_rng(3)
  for (h, w), (new_h, new_w, window) in [((75, 100), (51, 68, (3, 11, 45, 45))), ((30, 21), (64, 45, (0, 0, 64, 45))),
                                        ((1, 9), (4, 4, (0, 0, 4, 4)))]:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for method in ("bilinear", "bicubic"):
      ours = preprocess.pil_resize(tf.constant(image), new_h, new_w, method, window).numpy()
      np.testing.assert_array_equal(ours, two_axis(image, new_h, new_w, method, window), err_msg=str((h, w)))


def test_crop_pct_and_interpolation_are_validated():
  from vision.train.config import validate
  c = default_config()
  c.model.name, c.data.crop_pct = "lenet5", 1.2
  with pytest.raises(UserError, match=r"config.data.crop_pct = 1.2 must be in \(0, 1\]"):
    validate(c, 1)
  c.data.crop_pct, c.data.interpolation = 0.875, "lanczos"
  with pytest.raises(UserError, match=r"config.data.interpolation = 'lanczos' is not one of \('bilinear', 'bicubic'\)"):
    validate(c, 1)

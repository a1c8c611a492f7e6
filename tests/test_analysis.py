"""Analysis: the new metrics in the run's JSON, eval.py --plots pictures, Grad-CAM, predict.py.

One short LeNet run on the digits (in-process, 1 device) gives the checkpoint;
predict.py then runs as a user runs it.
"""
import io
import json
import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from vision.errors import UserError
from vision.models import create_model
from vision.tools import introspect, plots
from vision.tools.predict import predict_files
from vision.train import steps

CONFIG = os.path.join(ROOT, "configs", "lenet_digits.py")
STEPS = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import lenet_digits
  from vision.train.loop import train_and_evaluate
  config = lenet_digits.get_config()
  config.data.data_dir = data_dir
  config.train.num_steps, config.train.log_every = STEPS, 10
  config.train.eval_every = config.train.checkpoint_every = STEPS
  config.train.async_checkpointing = False
  workdir = str(tmp_path_factory.mktemp("lenet"))
  results = train_and_evaluate(config, workdir, devices=jax.devices()[:1])
  assert results["top1"] > 0.6  # enough to make the pictures and predictions mean something
  return workdir, config, results


def _args(workdir, data_dir):
  return [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]


def _digit_pngs(folder, count=2):
  """The first `count` test digits as 8x8 grey PNGs (the bytes tfds stores decode to the same pixels)."""
  from vision.data.digits import digits_split
  images, labels, _, test_idx = digits_split()
  paths = []
  for i in test_idx[:count]:
    path = os.path.join(folder, f"digit{i}_is_{labels[i]}.png")
    Image.fromarray(images[i][..., 0], "L").save(path)
    paths.append(path)
  return paths, [str(labels[i]) for i in test_idx[:count]]


def test_train_loop_final_json_has_every_metric(run):
  workdir, _, results = run
  saved = json.load(open(os.path.join(workdir, f"eval_test_step{STEPS}.json")))
  assert saved["count"] == 360 and saved["top1"] == results["top1"]
  for key in ("per_class", "macro", "weighted", "ece", "ece_bins", "confusion_matrix", "top5"):
    assert key in saved, key
  per_class = saved["per_class"]
  for name, row in per_class.items():
    assert row["recall"] == pytest.approx(saved["per_class_accuracy"][name])
  assert sum(row["support"] for row in per_class.values()) == 360
  assert saved["macro"]["f1"] == pytest.approx(np.mean([row["f1"] for row in per_class.values()]))
  assert saved["weighted"]["recall"] == pytest.approx(saved["top1"])  # support-weighted recall is accuracy
  assert sum(saved["ece_bins"]["count"]) == 360 and 0.0 <= saved["ece"] < 1.0


def _check_picture(path, size):
  assert os.path.isfile(path), path
  image = Image.open(path)
  assert image.size == size, (path, image.size)
  pixels = np.asarray(image.convert("RGB"))
  assert pixels.std() > 20, (path, pixels.std())  # not blank
  colours = pixels.reshape(-1, 3).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
  assert len(np.unique(colours)) > 100, path  # drawn, not a flat fill


def test_eval_pictures(run, tmp_path):
  """What `eval.py --plots --image=I --layer=stage1 --class_index=3` runs after its evaluation. In-process:
  the CLI costs 20-35 s of imports on the loaded 2-core test machine (its flags: the test below)."""
  workdir, config, _ = run
  image, _ = _digit_pngs(str(tmp_path), 1)
  from vision.train.loop import restore_for_eval, write_results
  exp, variables, step = restore_for_eval(config, workdir, devices=jax.devices()[:1])
  assert plots.check_request(exp, variables) == "stage2"  # the default: the deepest sown stage
  with pytest.raises(UserError, match="out of range; the model has 10 classes"):
    plots.check_request(exp, variables, "stage1", 10)
  with pytest.raises(UserError, match="is not a sown feature map"):
    plots.check_request(exp, variables, "stage9")
  with pytest.raises(UserError, match=r"cannot read .*nothing\.png: No such file"):
    plots.check_request(exp, variables, image_path=str(tmp_path / "nothing.png"))
  results = exp.evaluate(variables, "test")
  saved = json.load(open(write_results(workdir, "test", step, results)))
  assert saved["macro"] == results["macro"] and saved["ece"] == results["ece"]
  written = plots.write_all(exp, variables, workdir, "test", step, results, image[0], "stage1", 3)
  out = os.path.join(workdir, "plots")
  tag = f"test_step{STEPS}"
  # Sizes from plots.py's docstrings at DPI 100; LeNet has 6 first-layer filters and 6 stage1 maps.
  expected = {f"confusion_{tag}.png": (700, 700), f"reliability_{tag}.png": (600, 600),
              f"predictions_{tag}.png": (1000, 1190), "curves.png": (1500, 400),
              f"filters_step{STEPS}.png": (720, 170), f"features_stage1_step{STEPS}.png": (1120, 210),
              f"gradcam_stage1_class3_step{STEPS}.png": (1200, 440)}
  assert sorted(written) == sorted(os.path.join(out, name) for name in expected)
  for name, size in expected.items():
    _check_picture(os.path.join(out, name), size)


def test_eval_cli_refuses_picture_flags_without_plots(tmp_path):
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={tmp_path}", "--layer=stage1")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == "error: --image, --layer and --class_index go with --plots"


def test_predict_cli_top5_skips_bad_files(run, data_dir, tmp_path):
  workdir, config, _ = run
  pngs, truths = _digit_pngs(str(tmp_path))
  jpeg = str(tmp_path / "colour.jpg")  # RGB and 40x40: converted to grey and resized, as evaluation does
  Image.open(pngs[0]).convert("RGB").resize((40, 40)).save(jpeg, quality=95)
  corrupt = str(tmp_path / "corrupt.png")
  with open(corrupt, "wb") as f:
    f.write(b"\x89PNG not really" + os.urandom(200))
  missing = str(tmp_path / "missing.jpg")
  proc = run_cli("predict.py", *_args(workdir, data_dir), pngs[0], corrupt, pngs[1], missing, jpeg)
  assert proc.returncode == 0, proc.stderr[-3000:]
  skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped:")]
  assert skipped == [f"skipped: cannot read {corrupt}: not a JPEG, PNG, GIF or BMP image, or the file is damaged",
                     f"skipped: cannot read {missing}: No such file or directory"], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  blocks = re.findall(r"^(\S.*)\n((?:  .*\n){5})", proc.stdout, re.M)
  assert [b[0] for b in blocks] == [pngs[0], pngs[1], jpeg], proc.stdout
  top1 = {}
  for path, lines in blocks:
    rows = [re.match(r"\s+([0-9.]+)%  (\S+)$", line).groups() for line in lines.splitlines()]
    probs = [float(p) for p, _ in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.05
    assert len({name for _, name in rows}) == 5 and all(name in map(str, range(10)) for _, name in rows)
    top1[path] = (rows[0][1], probs[0])
  # The files are preprocessed exactly as evaluation does: the same pixels as the pipeline's test images, and
  # the probabilities the model gives those.
  from vision.data.preprocess import eval_image_file
  from vision.train.loop import restore_for_eval
  exp, variables, _ = restore_for_eval(config, workdir, devices=jax.devices()[:1])
  batches, _ = exp.pipeline.eval_batches(config.data, "test", 360)
  batch = next(iter(batches))
  assert batch["image"].dtype == np.uint8  # data.uint8_batches: the steps normalise
  images = np.asarray(steps.normalize_images(batch["image"], config.data.mean, config.data.std))
  probs = np.asarray(introspect.probabilities_fn(exp.model)(variables, images))
  for path in pngs:
    # Normalised on the host (predict) and on the device (evaluation): equal to float32 rounding.
    rows = [i for i in range(360) if np.allclose(images[i], eval_image_file(path, config.data), atol=1e-5)]
    assert rows, f"{path} does not preprocess to any test image"
    label, percent = top1[path]
    assert label == str(int(np.argmax(probs[rows[0]])))
    assert percent == pytest.approx(100 * probs[rows[0]].max(), abs=0.006)
  # Nothing readable: a UserError (predict.py: exit 2 with this line), after one line per file.
  err = io.StringIO()
  with pytest.raises(UserError, match=r"^none of the 2 files could be read as an image$"):
    predict_files(config, workdir, [corrupt, missing], out=io.StringIO(), err=err)
  assert err.getvalue().count("skipped: cannot read") == 2


class Toy(nn.Module):
  """Two sown stages; `tail` is the network from stage1 on, for the hand-made reference."""

  def setup(self):
    self.conv1 = nn.Conv(4, (3, 3))
    self.conv2 = nn.Conv(5, (3, 3))
    self.head = nn.Dense(3)

  def __call__(self, x, train=False):
    a = jnp.tanh(self.conv1(x))
    self.sow("intermediates", "stage1", a)
    return self.tail(a)

  def tail(self, a):
    b = jnp.tanh(self.conv2(nn.avg_pool(a, (2, 2), (2, 2))))
    self.sow("intermediates", "stage2", b)
    return self.head(b.mean((1, 2)))


def _reference_cam(acts, grads, size):
  weights = grads.mean((0, 1))
  cam = np.maximum((acts * weights).sum(-1), 0.0)
  cam = np.asarray(jax.image.resize(jnp.asarray(cam), size, "bilinear"))
  return cam / cam.max()


def test_grad_cam_equals_gradients_taken_by_hand():
  model = Toy()
  image = jax.random.normal(jax.random.key(1), (12, 12, 2))
  variables = model.init(jax.random.key(0), image[None])
  _, state = model.apply(variables, image[None], mutable=["intermediates"])
  a, b = state["intermediates"]["stage1"][0], state["intermediates"]["stage2"][0]
  for c in (0, 2):
    # stage1: the gradient of the logit through the rest of the network, by jax.grad of `tail`.
    grads = jax.grad(lambda x: model.apply(variables, x, method=Toy.tail)[0, c])(a)[0]
    cam, used, probs, acts = introspect.grad_cam(model, variables, image, "stage1", c)
    assert used == c and cam.shape == (12, 12) and cam.max() == pytest.approx(1.0)
    np.testing.assert_allclose(acts, a[0], atol=1e-6)
    np.testing.assert_allclose(cam, _reference_cam(np.asarray(a[0]), np.asarray(grads), (12, 12)), atol=1e-5)
    if c == 0:
      continue
    # stage2 feeds a mean and a Dense: d logit_c / d b[h, w, k] = W[k, c] / (h w) by hand.
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    hand = np.broadcast_to(kernel[:, c] / (b.shape[1] * b.shape[2]), b.shape[1:])
    cam, _, _, _ = introspect.grad_cam(model, variables, image, "stage2", c)
    if (np.asarray(b[0]) * kernel[:, c]).sum(-1).max() > 0:  # else the CAM is all zero
      np.testing.assert_allclose(cam, _reference_cam(np.asarray(b[0]), hand, (12, 12)), atol=1e-5)
  logits = model.apply(variables, image[None])
  _, used, probs, _ = introspect.grad_cam(model, variables, image, "stage1")
  assert used == int(jnp.argmax(logits)) and probs == pytest.approx(np.asarray(jax.nn.softmax(logits[0])), abs=1e-6)


class Flat(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(4)(x)
    self.sow("intermediates", "pre_logits", x)
    return nn.Dense(3)(x)


def test_layers_and_first_filters_of_lenet():
  model = create_model("lenet5", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  assert introspect.spatial_layer_names(model, variables, (1, 32, 32, 1)) == ["stage1", "stage2"]
  assert introspect.check_spatial_layer(model, variables, (1, 32, 32, 1), None) == "stage2"
  with pytest.raises(UserError, match=r"--layer='pre_logits' is not a sown feature map .*\['stage1', 'stage2'\]"):
    introspect.check_spatial_layer(model, variables, (1, 32, 32, 1), "pre_logits")
  layers = introspect.sown_layers(model, variables, jnp.ones((2, 32, 32, 1)))
  assert {k: v.shape for k, v in layers.items()} == {"stage1": (2, 28, 28, 6), "stage2": (2, 10, 10, 16),
                                                     "pre_logits": (2, 84)}
  flat = Flat()  # sows no feature maps: no default layer, and no first convolution
  flat_variables = flat.init(jax.random.key(0), jnp.zeros((1, 4)))
  assert introspect.check_spatial_layer(flat, flat_variables, (1, 4), None) is None
  assert introspect.first_conv_kernel(flat, flat_variables, (1, 4)) is None
  path, kernel = introspect.first_conv_kernel(model, variables, (1, 32, 32, 1))
  assert path == "c1" and kernel.shape == (5, 5, 1, 6)
  np.testing.assert_array_equal(kernel, variables["params"]["c1"]["kernel"])


def test_grid_choice_and_curves_of_a_resumed_run(tmp_path):
  labels = np.array([0, 1, 2, 3, 4, 5])
  preds = np.array([0, 2, 2, 0, 4, 1])
  assert plots.choose_grid(labels, preds, n=4) == [1, 3, 0, 2]  # mistakes first, at most half
  assert plots.choose_grid(labels, preds, n=10) == [1, 3, 5, 0, 2, 4]
  # A resumed run logs steps 20-30 twice; the curve keeps the later values once.
  records = [{"step": s, "train/loss": 1.0 / s} for s in (10, 20, 30)] + [{"step": s, "train/loss": 2.0 / s}
                                                                         for s in (20, 30, 40)]
  assert plots._series(records, "train/loss") == ([10, 20, 30, 40], [0.1, 0.1, 2 / 30, 0.05])
  path = plots.training_curves(str(tmp_path / "curves.png"), records)
  _check_picture(path, (1500, 400))

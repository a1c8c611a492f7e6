"""Bad input: every user-fixable problem is one line on stderr naming the problem and the fix, exit 2, and
nothing in the workdir lost; image folders with broken or unusual files train without crashing."""
import json
import logging
import os
import re
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from vision import UserError
from vision.data import pipeline, scan
from vision.train.config import default_config

CONFIG = os.path.join(ROOT, "configs", "lenet_digits.py")
RNG = np.random.default_rng(0)


def _rgb(h=20, w=30):
  return Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _png_header_only(path, width, height):
  """A PNG whose header claims width x height (a decompression bomb) and whose data is missing."""
  import zlib
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _odd_folder(root):
  """Every kind of file a user's folder may hold. Returns {name: decodable?}."""
  a, b = os.path.join(root, "train", "a"), os.path.join(root, "train", "b")
  os.makedirs(a)
  os.makedirs(b)
  for i in range(4):
    _rgb().save(os.path.join(a, f"rgb{i}.jpg"))
    _rgb().save(os.path.join(b, f"rgb{i}.png"))
  _rgb().convert("L").save(os.path.join(a, "gray.png"))
  _rgb().convert("RGBA").save(os.path.join(a, "rgba.png"))
  _rgb().convert("CMYK").save(os.path.join(a, "cmyk.jpg"))
  Image.fromarray(RNG.integers(0, 65535, (20, 30)).astype(np.uint16)).save(os.path.join(b, "gray16.png"))
  _rgb().convert("P").save(os.path.join(b, "palette.gif"))
  _rgb().save(os.path.join(b, "rgb.bmp"))
  Image.new("RGB", (6000, 4000), (10, 200, 30)).save(os.path.join(b, "huge.png"))  # 24 Mpx: decoded, resized
  good = sorted(os.listdir(a)) + sorted(os.listdir(b))
  jpeg = open(os.path.join(a, "rgb0.jpg"), "rb").read()
  open(os.path.join(a, "truncated.jpg"), "wb").write(jpeg[:len(jpeg) // 2])
  png = open(os.path.join(b, "rgb0.png"), "rb").read()
  open(os.path.join(b, "truncated.png"), "wb").write(png[:len(png) // 2])
  corrupt = bytearray(jpeg)
  corrupt[300:-10:7] = bytes(x ^ 0x55 for x in corrupt[300:-10:7])
  open(os.path.join(a, "corrupt.jpg"), "wb").write(bytes(corrupt))
  open(os.path.join(a, "empty.jpg"), "wb").close()
  open(os.path.join(b, "text.png"), "w").write("not an image at all")
  _png_header_only(os.path.join(b, "bomb.png"), 40000, 40000)
  open(os.path.join(b, "notes.txt"), "w").write("ignored: not an image extension")
  return good


def test_odd_image_folder_converts_what_decodes_skips_the_rest_and_trains(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("VISION_CACHE_DIR", str(tmp_path / "cache"))
  root = str(tmp_path / "imgs")
  good = _odd_folder(root)
  d = default_config().data
  d.name, d.image_size, d.eval_split, d.train_crop = f"imagefolder:{root}", 16, "train", "inception"
  with caplog.at_level(logging.WARNING, logger="vision"):
    num_classes, names, n = pipeline.dataset_facts(d)
  assert (num_classes, names, n) == (2, ["a", "b"], len(good)) and len(good) == 15
  files = [os.path.join(root, "train", c, f) for c in "ab" for f in sorted(os.listdir(os.path.join(root, "train", c)))
           if not f.endswith(".txt")]
  bad = scan.bad_files(files, 3)
  reasons = {os.path.basename(k): v for k, v in bad.items()}
  assert reasons == {"truncated.jpg": "not a readable image (unknown format or broken header)",
                     "truncated.png": "cannot be decoded (corrupt or truncated)",
                     "corrupt.jpg": "cannot be decoded (corrupt or truncated)", "empty.jpg": "empty file",
                     "text.png": "not a readable image (unknown format or broken header)",
                     "bomb.png": "40000x40000 is more than 178,956,970 pixels"}
  logged = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
  assert len(logged) == 1 and "skipping 6 of 21 image files that cannot be decoded" in logged[0]
  # The stream is deterministic and resumable over the 15 good files (inception crops, CMYK and 16-bit too).
  run = pipeline.train_batches(d, 4, seed=0)
  batches = [next(run) for _ in range(6)]  # 24 examples: past the epoch boundary at 15
  assert all(b["image"].shape == (4, 16, 16, 3) and np.isfinite(b["image"]).all() for b in batches)
  np.testing.assert_array_equal(next(pipeline.train_batches(d, 4, seed=0, start_step=5))["image"],
                                batches[5]["image"])
  evals, n_batches = pipeline.eval_batches(d, "train", 8)
  assert sum(b["mask"].sum() for b in evals) == 15
  # Later runs read the scan from the cache: only the files are stat'ed.
  monkeypatch.setattr(scan, "_undecodable", lambda *a: pytest.fail("scanned again"))
  scan._MEMO.clear()
  assert pipeline.dataset_facts(d)[2] == 15
  # And the real loop runs on it (LeNet on 3 channels, a few steps, eval on the same folder).
  from vision.train.loop import train_and_evaluate
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import lenet_digits
  c = lenet_digits.get_config()
  c.data = d
  c.data.image_size, c.data.channels, c.data.mean, c.data.std = 32, 3, (0.5,) * 3, (0.5,) * 3
  c.train.batch_size, c.train.eval_batch_size, c.train.num_steps = 4, 8, 4
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 4
  results = train_and_evaluate(c, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert results["count"] == 15 and np.isfinite(results["loss"])


def test_class_folder_whose_files_are_all_broken(tmp_path, monkeypatch):
  monkeypatch.setenv("VISION_CACHE_DIR", str(tmp_path / "cache"))
  root = tmp_path / "imgs"
  for cls in ("cat", "dog"):
    (root / "train" / cls).mkdir(parents=True)
  _rgb().save(root / "train" / "cat" / "0.png")
  (root / "train" / "dog" / "0.jpg").write_bytes(b"")
  (root / "train" / "dog" / "1.jpg").write_text("html error page")
  d = default_config().data
  d.name = f"imagefolder:{root}"
  with pytest.raises(UserError, match=r"class folder .*/train/dog has no images \(its 2 files cannot be decoded\); "
                                      r"add images or remove the folder"):
    pipeline.dataset_facts(d)


def _safetensors(path, tensors):
  """The .safetensors format (8-byte header length, JSON header, raw bytes) written with numpy alone."""
  header, offset, blobs = {}, 0, []
  for key, array in tensors.items():
    data = np.ascontiguousarray(array, np.float32).tobytes()
    header[key] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
  head = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _resnet18_state_dict():
  """A torchvision-layout resnet18 state_dict made from our own tree (no torch): keys with '_' for '.'."""
  from vision.models import registry
  from vision.weights import mapping
  source = mapping.parse_source("torchvision:resnet18")
  abstract = registry.abstract_variables("resnet18", num_classes=1000)
  sd = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in mapping._flat(abstract[collection]).items():
      sd[mapping.torch_key(path, source)] = np.zeros(mapping._torch_layout(leaf.shape, path.rsplit("/", 1)[-1]))
  mapping.convert(sd, source, abstract)  # the complete file converts (so the failures below are the keys')
  return sd


def _cli(script, devices, cache):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["VISION_CACHE_DIR"] = cache
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.Popen([sys.executable, *script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT)


def test_bad_inputs_are_one_line_exit_2_and_lose_nothing(tmp_path, data_dir):
  """Each case as a user meets it, all started at once (they are independent): the message and the fix.

  Also one line, exit 2, tested elsewhere: unknown model / config key / dataset, negative lr, eval without a
  checkpoint (test_train.py); ImageNet not prepared (test_train.py); a checkpoint of another shape (test_train.py).
  """
  from vision.models import create_model
  from vision.train import checkpoint as ckpt_lib
  from vision.train import optim, steps
  pipeline.dataset_facts(_digits(data_dir))  # prepared before several processes read it
  # A digits LeNet workdir (10 classes) to point other models and class counts at.
  workdir = tmp_path / "lenet"
  model, tx = create_model("lenet5", num_classes=10), optim.make_optimizer(default_config().optim, 0.1)
  state = steps.init_state(model, tx, jax.random.key(0), (1, 32, 32, 1))
  ckpt = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  ckpt.save(5, state, {"model": "lenet5", "num_classes": 10})
  ckpt.close()
  before = sorted(os.listdir(workdir / "checkpoints"))
  three = tmp_path / "three"
  for cls in ("x", "y", "z"):
    (three / "train" / cls).mkdir(parents=True)
    _rgb().save(three / "train" / cls / "0.png")
  empty = tmp_path / "empty"
  (empty / "train" / "cat").mkdir(parents=True)
  (empty / "train" / "dog").mkdir(parents=True)
  _rgb().save(empty / "train" / "cat" / "0.png")
  sd = _resnet18_state_dict()
  missing = {k: v for k, v in sd.items() if k != "layer2_0_downsample_1_running_var"}
  _safetensors(tmp_path / "missing.safetensors", missing)
  _safetensors(tmp_path / "extra.safetensors", dict(sd, **{"extra_weight": np.zeros(3)}))
  train = lambda *a, w=tmp_path / "w": (["train.py", f"--config={CONFIG}", f"--workdir={w}",
                                         f"--config.data.data_dir={data_dir}", *a], 1)
  convert = lambda name: (["-m", "vision.weights.convert", "--source", "torchvision:resnet18", "--checkpoint",
                           str(tmp_path / f"{name}.safetensors"), "--out", str(tmp_path / name)], 1)
  cases = {
      "unknown split": (train("--config.data.eval_split=tset"),
                        r"dataset digits has no split 'tset' \(did you mean: test\?\)"),
      "wrong type": (train("--config.train.batch_size=abc"),
                     r"config.train.batch_size = 'abc' is not a valid int; .*--config.train.batch_size=64"),
      "batch vs devices": ((train("--config.train.batch_size=60")[0], 8),
                           r"config.train.batch_size = 60 is not divisible by the 8 devices; use a multiple of 8"),
      "mean per channel": (train("--config.data.mean=(0.5,0.5)"),
                           r"config.data.mean = \(0.5, 0.5\) needs one value per channel"),
      "empty class folder": (train(f"--config.data.name=imagefolder:{empty}", "--config.data.channels=3",
                                   "--config.data.mean=(0.5,0.5,0.5)", "--config.data.std=(0.5,0.5,0.5)"),
                             r"class folder .*/train/dog has no images \(no .jpg, .jpeg, .png, .bmp, .gif files\)"),
      "other architecture": (train("--config.model.name=resnet18", w=workdir),
                             r"the checkpoint at step 5 in .* is for model='lenet5' but the config gives 'resnet18'; "
                             r"use another --workdir or the matching config"),
      "other number of classes": (train(f"--config.data.name=imagefolder:{three}", "--config.data.eval_split=train",
                                        w=workdir),
                                  r"is for num_classes=10 but the config gives 3"),
      "weights: missing key": (convert("missing"), r"the torchvision:resnet18 checkpoint has no tensor for "
                               r"batch_stats/layer2_0/downsample_bn/var of resnet18"),
      "weights: extra key": (convert("extra"), r"checkpoint tensor 'extra_weight' \(3,\) has no place in resnet18"),
  }
  procs = {name: _cli(*args, str(tmp_path / "cache")) for name, (args, _) in cases.items()}
  lines = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, (name, err[-2000:])
    assert "Traceback" not in err, (name, err[-2000:])
    lines[name] = err.strip().splitlines()[-1]
    assert lines[name].startswith("error: ") and re.search(cases[name][1], lines[name]), (name, lines[name])
  assert sorted(os.listdir(workdir / "checkpoints")) == before  # nothing of the run was touched
  assert not os.path.exists(tmp_path / "missing" / "checkpoints" / "0")
  print("\n".join(f"| {name} | `{line}` |" for name, line in lines.items()))  # the README table (pytest -s)


def _digits(data_dir):
  d = default_config().data
  d.name, d.data_dir = "digits", data_dir
  return d

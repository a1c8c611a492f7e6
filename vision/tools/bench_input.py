"""Input-pipeline throughput: our tf.data pipeline against torchvision's DataLoader on the same JPEGs and cores.

    python -m vision.tools.bench_input --images 2000 --batch 64 --size 224

Both sides do the same work per image: read the JPEG, random-resized crop
(scale 0.08-1, ratio 3/4-4/3) to size x size with the antialiased bilinear
filter, horizontal flip, batch. Four pipelines, each in a process of its own
(same cores, no thread pools left over, torch never meets TensorFlow):

- ours: vision.data.pipeline.train_batches on `imagefolder:` with config.data's
  defaults: decodes only the crop window of a JPEG, and ships uint8 batches
  that the jitted train step normalises on the device (data.uint8_batches).
- ours_float: the same with data.uint8_batches=False: float32 batches
  normalised on the host.
- torchvision: ImageFolder + RandomResizedCrop + RandomHorizontalFlip +
  ToTensor + Normalize in a DataLoader with one worker per core: float32
  batches normalised on the host, as torchvision's reference recipe does.
- torchvision_uint8: the same with PILToTensor instead of ToTensor +
  Normalize: uint8 batches, the peer of ours.

The tool writes its own JPEGs (photo-like: smooth colour fields plus noise,
ImageNet's typical 500x375, quality 90) unless --dir points at a folder of
class folders. --eval times the evaluation transform instead: ours
(vision.data.pipeline.eval_batches: resize the shorter side to size / 0.875,
centre crop, PIL's two rounded passes; uint8 batches, and ours_float: float32
normalised on the host) against torchvision's Resize + CenterCrop + ToTensor +
Normalize in the DataLoader (and torchvision_uint8: PILToTensor), in order, one
pass over the folder after another. --augment adds a data.augment policy on both sides
(torchvision: TrivialAugmentWide, RandAugment, AutoAugment on the PIL crop,
RandomErasing after Normalize; the uint8 sides leave erasing to the device).
--multicrop times DINOv2's multi-crop instead: ours (vision.data.multicrop,
uint8 crops; ours_float: bfloat16 normalised on the host) against the release's
DataAugmentationDINO written with torchvision transforms (dinov2_transform;
torchvision_uint8: PILToTensor at the end), config.ssl's defaults on both.
Reported: images/s of each after one warm-up batch (with --repeats, the median
of that many runs, the sides taking turns), and ours over each torchvision
side. torch is imported only by this tool.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from vision.tools import require_at_least


def write_jpegs(root, count, classes=10, size=(500, 375), seed=0):
  """`count` photo-like JPEGs in root/train/<class>/ (returns root)."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  w, h = size
  for i in range(count):
    folder = os.path.join(root, "train", f"class{i % classes:03d}")
    os.makedirs(folder, exist_ok=True)
    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    pixels = np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
  return root


def ensure_jpegs(root, count):
  """root as --dir takes it: a folder without train/ (new, or empty) gets `count` JPEGs written into it first."""
  if not os.path.isdir(os.path.join(root, "train")):
    print(f"writing {count} JPEGs to {os.path.join(root, 'train')}", file=sys.stderr, flush=True)
    write_jpegs(root, count)
  return root


def _timed(batches, images, batch):
  next(batches)  # warm-up: tf.data autotuning / DataLoader worker start
  n, start = 0, time.perf_counter()
  while n < images:
    next(batches)
    n += batch
  return n / (time.perf_counter() - start)


def _endless(loader):
  """A DataLoader's batches, epoch after epoch."""
  while True:
    yield from loader


def ours(root, images, batch, size, uint8=True, augment=""):
  from vision.data import pipeline
  from vision.train.config import default_config
  d = default_config().data
  d.name, d.image_size, d.train_crop, d.flip, d.shuffle_buffer = f"imagefolder:{root}", size, "inception", True, 1000
  d.uint8_batches, d.augment = uint8, augment
  return _timed(pipeline.train_batches(d, batch, seed=0), images, batch)


def ours_eval(root, images, batch, size, uint8=True):
  from vision.data import pipeline
  from vision.train.config import default_config
  d = default_config().data
  d.name, d.image_size, d.uint8_batches = f"imagefolder:{root}", size, uint8

  def forever():
    while True:
      batches, n = pipeline.eval_batches(d, "train", batch)
      for _, b in zip(range(n), batches):
        yield b
  return _timed(forever(), images, batch)


def torchvision_eval(root, images, batch, size, workers, uint8=False):
  import torch
  from torchvision import datasets, transforms

  from vision.data.preprocess import resize_size
  tail = [transforms.PILToTensor()] if uint8 else [
      transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
  t = transforms.Compose([transforms.Resize(resize_size(size, 0.875)), transforms.CenterCrop(size), *tail])
  loader = torch.utils.data.DataLoader(datasets.ImageFolder(os.path.join(root, "train"), t), batch_size=batch,
                                       num_workers=workers, persistent_workers=workers > 0)
  return _timed(_endless(loader), images, batch)


def torchvision_transforms(spec, uint8):
  """(transforms on the PIL crop, transforms after normalisation) equal to our data.augment `spec`.

  The uint8 side leaves random erasing out: like ours, it would erase on the accelerator.
  """
  from torchvision import transforms
  from vision.data import augment
  before, after = [], []
  for name, kw in augment.parse(spec):
    if name == "trivialaugment" and set(kw) <= {"bins"}:
      before.append(transforms.TrivialAugmentWide(num_magnitude_bins=kw.get("bins", 31)))
    elif name == "randaugment" and set(kw) <= {"n", "m", "bins"}:
      before.append(transforms.RandAugment(kw.get("n", 2), int(kw.get("m", 9)), kw.get("bins", 31)))
    elif name == "autoaugment":
      before.append(transforms.AutoAugment())
    elif name == "erasing" and set(kw) <= {"p", "mode"}:
      if not uint8:
        after.append(transforms.RandomErasing(kw.get("p", 0.25), value="random" if kw.get("mode") == "pixel" else 0))
    else:
      raise SystemExit(f"error: --augment: no torchvision equivalent here for {name}{kw or ''}")
  return before, after


def torchvision_loader(root, images, batch, size, workers, uint8=False, augment=""):
  import torch
  from torchvision import datasets, transforms
  before, after = torchvision_transforms(augment, uint8)
  tail = [transforms.PILToTensor()] if uint8 else [
      transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))] + after
  t = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] + before + tail)
  loader = torch.utils.data.DataLoader(datasets.ImageFolder(os.path.join(root, "train"), t), batch_size=batch,
                                       shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
  return _timed(_endless(loader), images, batch)


def ours_multicrop(root, images, batch, uint8=True):
  """DINOv2's multi-crop (vision.data.multicrop, config.ssl's defaults: the release's) on `imagefolder:`."""
  import tensorflow as tf

  from vision.data import multicrop
  from vision.train.config import default_config
  c = default_config()
  d = c.data
  d.name, d.flip, d.shuffle_buffer, d.uint8_batches = f"imagefolder:{root}", True, 1000, uint8
  return _timed(multicrop.train_batches(d, c.ssl, batch, seed=0, dtype=tf.bfloat16), images, batch)


def dinov2_transform(uint8=False):
  """DINOv2's DataAugmentationDINO (dinov2/data/augmentations.py) from torchvision transforms, with
  config.ssl's defaults: image -> {'global_crops': [2, 3, G, G], 'local_crops': [L, 3, l, l]}.

  As the release: its GaussianBlur(p) is RandomApply(GaussianBlur(9, (0.1, 2)), p=1-p) (blur p = 0 / 0.9 / 0.5
  on global 1 / global 2 / local); ToTensor + Normalize at the end, or (uint8) PILToTensor.
  """
  import torch
  from torchvision import transforms as T

  from vision.train.config import default_config
  s = default_config().ssl
  bicubic = T.InterpolationMode.BICUBIC
  geometric = lambda size, scale: T.Compose([T.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic),
                                             T.RandomHorizontalFlip(p=0.5)])
  colour = T.Compose([T.RandomApply([T.ColorJitter(*s.color_jitter)], p=s.color_jitter_prob),
                      T.RandomGrayscale(p=s.grayscale_prob)])
  blur = lambda p: T.RandomApply([T.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)
  tail = T.PILToTensor() if uint8 else T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                               (0.229, 0.224, 0.225))])
  glob, local = geometric(s.global_crop_size, s.global_crop_scale), geometric(s.local_crop_size, s.local_crop_scale)
  g1 = T.Compose([colour, blur(s.blur_prob[0]), tail])
  g2 = T.Compose([colour, blur(s.blur_prob[1]), T.RandomSolarize(threshold=128, p=s.solarize_prob), tail])
  loc = T.Compose([colour, blur(s.blur_prob[2]), tail])

  def transform(image):
    return {"global_crops": torch.stack([g1(glob(image)), g2(glob(image))]),
            "local_crops": torch.stack([loc(local(image)) for _ in range(s.local_crops)])}
  transform.parts = {"global": glob, "local": local, "global_1": g1, "global_2": g2, "local_extra": loc}
  return transform


def torchvision_multicrop(root, images, batch, workers, uint8=False):
  import torch
  from torchvision import datasets
  loader = torch.utils.data.DataLoader(datasets.ImageFolder(os.path.join(root, "train"), dinov2_transform(uint8)),
                                       batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)
  return _timed(_endless(loader), images, batch)


SIDES = {"ours": lambda a: ours(a.dir, a.images, a.batch, a.size, augment=a.augment),
         "ours_float": lambda a: ours(a.dir, a.images, a.batch, a.size, uint8=False, augment=a.augment),
         "torchvision": lambda a: torchvision_loader(a.dir, a.images, a.batch, a.size, a.workers, augment=a.augment),
         "torchvision_uint8": lambda a: torchvision_loader(a.dir, a.images, a.batch, a.size, a.workers, uint8=True,
                                                           augment=a.augment)}
MULTICROP_SIDES = {"ours": lambda a: ours_multicrop(a.dir, a.images, a.batch),
                   "ours_float": lambda a: ours_multicrop(a.dir, a.images, a.batch, uint8=False),
                   "torchvision": lambda a: torchvision_multicrop(a.dir, a.images, a.batch, a.workers),
                   "torchvision_uint8": lambda a: torchvision_multicrop(a.dir, a.images, a.batch, a.workers,
                                                                       uint8=True)}
EVAL_SIDES = {"ours": lambda a: ours_eval(a.dir, a.images, a.batch, a.size),
              "ours_float": lambda a: ours_eval(a.dir, a.images, a.batch, a.size, uint8=False),
              "torchvision": lambda a: torchvision_eval(a.dir, a.images, a.batch, a.size, a.workers),
              "torchvision_uint8": lambda a: torchvision_eval(a.dir, a.images, a.batch, a.size, a.workers,
                                                              uint8=True)}


def _side(name, root, args):
  """One side's images/s, measured in a fresh process."""
  cmd = [sys.executable, "-m", "vision.tools.bench_input", "--side", name, "--dir", root, "--images",
         str(args.images), "--batch", str(args.batch), "--size", str(args.size), "--workers", str(args.workers),
         "--augment", args.augment] + (["--eval"] if args.eval else []) + (["--multicrop"] if args.multicrop else [])
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{name} side failed: {proc.stderr.strip().splitlines()[-1:]}")
  return float(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m vision.tools.bench_input", description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=2000, help="images timed on each side (after one warm-up batch)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--dir", help="a folder with train/<class>/*.jpg; one without train/ gets --files JPEGs written "
                 "into it (kept for the next run). Default: --files JPEGs in a temporary folder")
  p.add_argument("--files", type=int, default=1000, help="JPEGs to write when --dir is not given or has no train/")
  p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: one per core)")
  p.add_argument("--augment", default="", help="a config.data.augment string on both sides, e.g. "
                 "'trivialaugment+erasing(p=0.1)' (trivialaugment, randaugment(n,m), autoaugment, erasing(p,mode))")
  p.add_argument("--repeats", type=int, default=1,
                 help="measure each side this many times, the sides taking turns; report the median")
  p.add_argument("--eval", action="store_true", help="time the evaluation transform (resize + centre crop)")
  p.add_argument("--multicrop", action="store_true", help="time DINOv2's multi-crop (2 x 224 + 8 x 98 crops, "
                 "colour jitter, grayscale, blur, solarisation; config.ssl's defaults) against the release's "
                 "torchvision transforms; --size is not used")
  p.add_argument("--json", action="store_true")
  p.add_argument("--sides", help=f"which of {', '.join(SIDES)} to run (comma-separated; default: all; the same "
                 "names with --eval and --multicrop)")
  p.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)  # one side, in this process
  args = p.parse_args(argv)
  table = EVAL_SIDES if args.eval else MULTICROP_SIDES if args.multicrop else SIDES
  require_at_least(p, args, images=1, batch=1, size=1, files=1, repeats=1, workers=0)
  if args.eval and args.multicrop:
    p.error("--eval and --multicrop time different transforms; choose one")
  if (args.eval or args.multicrop) and args.augment:
    p.error("--augment is for the supervised training transform; leave it out with --eval and --multicrop")
  if args.side:
    print(table[args.side](args))
    return True
  sides = [x.strip() for x in (args.sides or ",".join(table)).split(",") if x.strip()]
  unknown = [x for x in sides if x not in table]
  if unknown:
    p.error(f"unknown --sides {unknown}; choose from {', '.join(table)}")
  tmp = None
  root = args.dir
  if root is None:
    tmp = tempfile.TemporaryDirectory()
    root = write_jpegs(tmp.name, args.files)
  else:
    ensure_jpegs(root, args.files)
  row = {"images": args.images, "batch": args.batch, "size": args.size, "cores": os.cpu_count(),
         "workers": args.workers, "augment": args.augment,
         "transform": "eval" if args.eval else "multicrop" if args.multicrop else "train"}
  runs = {name: [] for name in sides}
  for _ in range(args.repeats):  # in turns, so a slow spell of the machine hits every side alike
    for name in sides:
      runs[name].append(_side(name, root, args))
  for name in sides:
    row[f"{name}_images_per_sec"] = float(np.median(runs[name]))
    row[f"{name}_runs"] = runs[name]
  for peer in ("torchvision", "torchvision_uint8"):
    for mine in ("ours", "ours_float"):
      if f"{mine}_images_per_sec" in row and f"{peer}_images_per_sec" in row:
        row[f"{mine}_over_{peer}"] = row[f"{mine}_images_per_sec"] / row[f"{peer}_images_per_sec"]
  if tmp is not None:
    tmp.cleanup()
  if args.json:
    print(json.dumps(row))
  else:
    for name in sides:
      each = ", ".join(f"{v:,.1f}" for v in runs[name])
      print(f"{name:18s} {row[f'{name}_images_per_sec']:8,.1f} images/s" + (f" (median of {each})" if len(runs[name]) > 1 else ""))
    for key, value in row.items():
      if "_over_" in key:
        print(f"{key:34s} {value:.2f}")
  return row


if __name__ == "__main__":
  sys.exit(0 if main() else 1)

"""Which files of an image folder can be decoded: checked once when the source is built, then cached.

Why here and not in the input pipeline: the train stream's position is a pure
function of the step (pipeline.py), so every file in the list must decode, or a
run would drop examples where an uninterrupted run would not (tf.data's
ignore_errors shifts everything after the bad file). So bad files are taken out
of the list before it is sharded and shuffled, with the decoder the pipeline
itself uses (tf.io.decode_image, same channels), in a parallel tf.data pass.
The result is cached by the files' names, sizes and modification times, so
later runs (and restarts) only stat the files. Converted on the fly, not
skipped: grayscale, RGBA, palette, CMYK JPEG, 16-bit PNG, large images.
Skipped: empty, non-image, truncated or corrupt files, and images of more than
MAX_PIXELS pixels (decompression bombs), read from the header without decoding.
"""
import hashlib
import json
import logging
import os

import tensorflow as tf

log = logging.getLogger("vision")

MAX_PIXELS = 178_956_970  # Pillow's DecompressionBombError threshold: 2 x its 89.5 Mpx warning limit
_MEMO = {}


def cache_dir() -> str:
  return os.environ.get("VISION_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vision")


def _signature(files) -> str:
  h = hashlib.sha256()
  for f in files:
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:32]


def _header_problem(path):
  """Cheap checks that need no decoding: '' when the file may be a decodable image."""
  from PIL import Image
  if os.path.getsize(path) == 0:
    return "empty file"
  try:
    with Image.open(path) as im:
      w, h = im.size
  except Image.DecompressionBombError:
    return f"more than {MAX_PIXELS:,} pixels"
  except Exception:  # Pillow raises several types for files it cannot identify
    return "not a readable image (unknown format or broken header)"
  if w * h > MAX_PIXELS:
    return f"{w}x{h} is more than {MAX_PIXELS:,} pixels"
  return ""


def _undecodable(paths, channels) -> set:
  """Indices into `paths` that tf.io.decode_image fails on (tf.data in parallel, errors dropped)."""
  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(paths)))
  ds = ds.map(lambda i, p: (i, tf.shape(tf.io.decode_image(tf.io.read_file(p), channels=channels,
                                                            expand_animations=False))),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ok = {int(i) for i, _ in ds.ignore_errors().as_numpy_iterator()}
  return set(range(len(paths))) - ok


def bad_files(files, channels, where="") -> dict:
  """{path: reason} for the files the pipeline could not decode; logs a count once per folder."""
  if not files:
    return {}
  sig = f"{_signature(files)}-{channels}"
  if sig in _MEMO:
    return _MEMO[sig]
  path = os.path.join(cache_dir(), f"scan-{sig}.json")
  try:
    with open(path) as f:
      bad = json.load(f)
  except (OSError, ValueError):
    old = _pillow_bomb_limit(None)
    try:
      bad = {f: r for f in files if (r := _header_problem(f))}
    finally:
      _pillow_bomb_limit(old)
    rest = [f for f in files if f not in bad]
    bad.update({rest[i]: "cannot be decoded (corrupt or truncated)" for i in _undecodable(rest, channels)})
    try:
      os.makedirs(cache_dir(), exist_ok=True)
      with open(path + f".tmp{os.getpid()}", "w") as f:
        json.dump(bad, f)
      os.replace(path + f".tmp{os.getpid()}", path)
    except OSError:
      pass  # no cache: the next run scans again
  if bad:
    first = sorted(bad)[:3]
    log.warning("%s: skipping %d of %d image files that cannot be decoded (%s%s); the list: %s", where or "images",
                len(bad), len(files), "; ".join(f"{os.path.basename(f)}: {bad[f]}" for f in first),
                ", ..." if len(bad) > 3 else "", path)
  _MEMO[sig] = bad
  return bad


def _pillow_bomb_limit(value):
  """Sets Pillow's decompression-bomb limit (None: off, we check it ourselves); returns the old one."""
  from PIL import Image
  old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, value
  return old

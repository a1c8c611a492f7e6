"""tf.data input: tfds datasets by name or class-per-folder images -> per-process numpy batches.

Train stream: the split is cut into config.data.train_shards even shards (by
default one per process) and each process reads only its own; epoch e of a
shard is the shard shuffled with seed (seed, shard, e); a shard's stream is
epochs back to back, batched without regard to epoch boundaries, and a
process's batch is its shards' batches side by side. The position is a pure
function of the step (step x examples per shard and batch), so a resumed run
skips the encoded records it already consumed (no decoding) and sees exactly
the batches an uninterrupted run would have seen.

With config.data.cache, decoded uint8 images are kept in memory (small
datasets): skipping is then cheaper still, and the stream is the same.

Eval stream: every example of the split exactly once, padded with mask=0
examples to whole batches of the same count on every process.
"""
import dataclasses
import logging
import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from vision.data import preprocess
from vision.errors import UserError, close_matches

log = logging.getLogger("vision")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# tf.data must not take the accelerators from JAX.
tf.config.set_visible_devices([], "GPU")


@dataclasses.dataclass
class Source:
  """Encoded (image bytes, label) records of one split share, plus facts about them."""
  records: tf.data.Dataset
  num_examples: int  # in this process's share
  max_share: int  # largest share over processes (eval pads every process to it)
  total_examples: int  # in the whole split
  num_classes: int
  class_names: list


def _tfds_builder(d):
  import tensorflow_datasets as tfds
  if d.name == "digits":
    import vision.data.digits  # noqa: F401  (registers the builder)
  try:
    builder = tfds.builder(d.name, data_dir=d.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {d.name!r}{close_matches(d.name, tfds.list_builders())}; use a tfds name "
                    "or 'imagefolder:/path/with/one/folder/per/split'") from None
  if builder.is_prepared():
    return builder
  where = builder.data_dir
  if not d.download:
    raise UserError(f"dataset {d.name} is not prepared in {where}; run `tfds build {d.name}` or set "
                    "config.data.download=True")
  try:
    config = tfds.download.DownloadConfig(manual_dir=d.manual_dir or None)
    builder.download_and_prepare(download_config=config)
  except Exception as e:  # network, disk, manual files: all end the same way for the user
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
      manual = d.manual_dir or os.path.join(os.path.dirname(os.path.dirname(where)), "downloads", "manual")
      hint = (" (put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org there)"
              if d.name.startswith("imagenet2012") else "")
      raise UserError(f"dataset {d.name} is not prepared in {where} and needs a manual download: place the "
                      f"archives in {manual}{hint}, then run `tfds build {d.name} --data_dir "
                      f"{d.data_dir or '~/tensorflow_datasets'} --manual_dir {manual}` (or set config.data.manual_dir)"
                      ) from None
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f"could not prepare dataset {d.name} in {where} ({first}); prepare it where it can be "
                    f"downloaded (`tfds build {d.name} --data_dir DIR`) and point config.data.data_dir at DIR") from None
  return builder


def _tfds_source(d, split, process_index, process_count):
  import tensorflow_datasets as tfds
  builder = _tfds_builder(d)
  known = list(builder.info.splits.keys())
  if known and split.split("[")[0] not in known:
    raise UserError(f"dataset {d.name} has no split {split!r}{close_matches(split, known)}; its splits: {known}")
  shares = tfds.even_splits(split, n=process_count)
  records = builder.as_dataset(split=shares[process_index], shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()},
                               read_config=tfds.ReadConfig(interleave_cycle_length=16))
  records = records.map(lambda ex: (ex["image"], ex["label"]))

  def count(s):
    try:
      return builder.info.splits[s].num_examples
    except (KeyError, ValueError):  # mocked data or metadata without split counts
      n = int(builder.as_dataset(split=s, decoders={"image": tfds.decode.SkipDecoding()}).cardinality())
      if n < 0:
        raise UserError(f"cannot count the examples of {d.name}:{split}; prepare the dataset with tfds") from None
      return n
  sizes = [count(s) for s in shares]
  label = builder.info.features["label"]
  return Source(records, sizes[process_index], max(sizes), sum(sizes), label.num_classes, list(label.names))


def _folder_source(d, split, process_index, process_count):
  """root/<split>/<class>/<image>; files no decoder can read are left out (vision/data/scan.py)."""
  from vision.data import scan
  root = d.name[len("imagefolder:"):]
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    have = sorted(os.listdir(root)) if os.path.isdir(root) else []
    raise UserError(f"image folder {split_dir} does not exist; expected {root}/<split>/<class>/<image> "
                    f"(splits found: {have or 'none'})")
  train_dir = os.path.join(root, d.train_split)  # class names come from the train split
  class_root = train_dir if os.path.isdir(train_dir) else split_dir
  class_names = sorted(e for e in os.listdir(class_root) if os.path.isdir(os.path.join(class_root, e)))
  found = {}
  for name in class_names:
    folder = os.path.join(split_dir, name)
    found[name] = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                         if f.lower().endswith(IMAGE_EXTENSIONS)) if os.path.isdir(folder) else []
  bad = scan.bad_files([f for fs in found.values() for f in fs], d.channels, split_dir)
  files, labels = [], []
  for label, name in enumerate(class_names):
    good = [f for f in found[name] if f not in bad]
    if not good and class_root == split_dir:
      why = f"its {len(found[name])} files cannot be decoded" if found[name] else \
          f"no {', '.join(IMAGE_EXTENSIONS)} files"
      raise UserError(f"class folder {os.path.join(split_dir, name)} has no images ({why}); add images or "
                      "remove the folder")
    files += good
    labels += [label] * len(good)
  if not files:
    raise UserError(f"image folder {split_dir} holds no images in class subfolders")
  unknown = sorted(set(e for e in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, e))) - set(class_names))
  if unknown:
    raise UserError(f"{split_dir} has classes not in the train split: {unknown[:5]}; make the class folders match")
  shares = [list(range(p, len(files), process_count)) for p in range(process_count)]
  mine = shares[process_index]
  records = tf.data.Dataset.from_tensor_slices((np.array(files)[mine], np.array(labels, np.int64)[mine]))
  records = records.map(lambda path, label: (tf.io.read_file(path), label))
  return Source(records, len(mine), max(len(s) for s in shares), len(files), len(class_names), class_names)


def source(d, split, process_index=0, process_count=1) -> Source:
  """The split's encoded records for this process. `d` is config.data."""
  classes = tuple(d.get("classes", ()))
  if classes:
    return _class_subset(d, split, process_index, process_count, classes)
  if d.name.startswith("imagefolder:"):
    return _folder_source(d, split, process_index, process_count)
  return _tfds_source(d, split, process_index, process_count)


def _class_subset(d, split, process_index, process_count, classes) -> Source:
  """Only the examples of `classes` (config.data.classes), relabelled 0..n-1 in that order.

  Counting them takes one pass over the split's labels (the encoded images are not decoded): cheap for small
  datasets, minutes for ImageNet.
  """
  import ml_collections
  whole = ml_collections.ConfigDict(d.to_dict())
  whole.classes = ()
  shares = [source(whole, split, p, process_count) for p in range(process_count)]
  num_classes = shares[0].num_classes
  bad = [c for c in classes if c >= num_classes]
  if bad:
    raise UserError(f"config.data.classes = {classes}: {bad} are not labels of {d.name} (0..{num_classes - 1})")
  table = np.full(num_classes, -1, np.int64)
  table[list(classes)] = np.arange(len(classes))
  lookup = tf.constant(table)

  def count(share):
    labels = share.records.map(lambda image, label: label, num_parallel_calls=tf.data.AUTOTUNE)
    hist = labels.reduce(tf.zeros(num_classes, tf.int64), lambda acc, y: acc + tf.one_hot(y, num_classes, dtype=tf.int64))
    return int(np.sum(hist.numpy()[list(classes)]))

  sizes = [count(s) for s in shares]
  mine = shares[process_index].records.filter(lambda image, label: tf.gather(lookup, label) >= 0)
  mine = mine.map(lambda image, label: (image, tf.gather(lookup, label)))
  names = [shares[0].class_names[c] if c < len(shares[0].class_names) else str(c) for c in classes]
  return Source(mine, sizes[process_index], max(sizes), sum(sizes), len(classes), names)


def _parallel(d):
  return tf.data.AUTOTUNE if d.num_parallel_calls < 0 else d.num_parallel_calls


def train_batches(d, local_batch, seed, start_step=0, process_index=0, process_count=1) -> Iterator[dict]:
  """Endless numpy batches {'image', 'label': i32 [B]} from `start_step` on.

  'image': uint8 [B,H,W,C] for the train step to normalise (config.data.uint8_batches, the default), plus
  'erase': i32 [B, ops, 5] rectangles when data.augment has random erasing; float32 normalised otherwise.

  The batch is the concatenation of equal parts of this process's shards (config.data.train_shards), so
  the global batch, process-local parts put side by side, does not depend on the number of processes.
  """
  num_shards = d.get("train_shards", 0) or process_count
  mine = num_shards // process_count
  shards = range(process_index * mine, (process_index + 1) * mine)
  streams = [_shard_batches(d, local_batch // mine, seed, start_step, s, num_shards) for s in shards]
  log.info("process %d of %d reads train shards %s of %d (%s examples)", process_index, process_count,
           list(shards), num_shards, " + ".join(str(n) for _, n in streams))
  streams = [ds for ds, _ in streams]
  if mine == 1:
    return iter(streams[0].as_numpy_iterator())
  ds = tf.data.Dataset.zip(tuple(streams)).map(lambda *parts: {k: tf.concat([p[k] for p in parts], 0)
                                                               for k in parts[0]})
  return iter(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())


def _shard_batches(d, local_batch, seed, start_step, shard, num_shards):
  """(one shard's endless batches from `start_step` on, the shard's number of examples)."""
  src = source(d, d.train_split, shard, num_shards)
  n = src.num_examples
  if n < local_batch:
    raise UserError(f"the train split has {n} examples per shard, fewer than the batch's part {local_batch}; "
                    "lower config.train.batch_size (or config.data.train_shards)")
  consumed = start_step * local_batch
  start_epoch, offset = divmod(consumed, n)
  base_seed = np.int64(seed) * 1_000_003 + shard
  records = src.records
  if d.cache:  # decode (and resize) once, keep uint8 images in memory
    records = records.map(lambda b, label: (preprocess.train_decode(b, d), label),
                          num_parallel_calls=_parallel(d)).cache()

  r = d.repeated_augment
  if d.augment:
    from vision.data import augment
    augment.parse(d.augment)  # a bad string fails here, before anything is compiled

  def epoch(e):
    shuffled = records.shuffle(min(d.shuffle_buffer, n), seed=base_seed + e * 7919, reshuffle_each_iteration=False)
    if r > 1:  # repeated augmentation (Hoffer et al. 2020): r copies in a row, n examples per epoch as usual
      shuffled = shuffled.flat_map(lambda *rec: tf.data.Dataset.from_tensors(rec).repeat(r)).take(n)
    return shuffled.enumerate().map(lambda i, rec: (e * n + i, rec))

  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch).skip(offset)

  erase = preprocess.erases_on_device(d)

  def process(position, rec):
    image, label = rec
    seed = tf.stack([tf.constant(base_seed), position])
    out = {"image": preprocess.train_image(image, seed, d, decoded=d.cache), "label": tf.cast(label, tf.int32)}
    if erase:
      out["erase"] = preprocess.erase_boxes(seed, d)
    return out

  ds = ds.map(process, num_parallel_calls=_parallel(d), deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE), n


def eval_batches(d, split, local_batch, process_index=0, process_count=1):
  """(iterator of {'image','label','mask'} batches, number of batches): each example once, padded.

  'image': uint8 for the consumer's jitted step to normalise (config.data.uint8_batches, the default; the
  eval step, the feature extractors and the plots do), else float32 normalised on the host.
  """
  src = source(d, split, process_index, process_count)
  num_batches = max(1, math.ceil(src.max_share / local_batch))
  as_uint8 = preprocess.uint8_batches(d)
  ds = src.records.map(lambda b, label: {"image": preprocess.eval_image(b, d, as_uint8),
                                         "label": tf.cast(label, tf.int32), "mask": tf.constant(1.0)},
                       num_parallel_calls=_parallel(d))
  size = preprocess.eval_size(d)
  pad = {"image": tf.zeros((size, size, d.channels), tf.uint8 if as_uint8 else tf.float32), "label": tf.constant(0),
         "mask": tf.constant(0.0)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local_batch - src.num_examples))
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator(), num_batches


def dataset_facts(d, process_index=0, process_count=1):
  """(num_classes, class names, train examples in the whole split)."""
  src = source(d, d.train_split, process_index, process_count)
  return src.num_classes, src.class_names, src.total_examples

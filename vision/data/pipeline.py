"""tf.data input: tfds datasets by name or class-per-folder images -> per-process numpy batches.

Train stream: each process reads its own even share of the split; epoch e is
that share shuffled with seed (seed, e); the stream is epochs back to back,
batched without regard to epoch boundaries. Its position is a pure function of
the step (step x local batch examples), so a resumed run skips the encoded
records it already consumed (no decoding) and sees exactly the batches an
uninterrupted run would have seen.

With config.data.cache, decoded uint8 images are kept in memory (small
datasets): skipping is then cheaper still, and the stream is the same.

Eval stream: every example of the split exactly once, padded with mask=0
examples to whole batches of the same count on every process.
"""
import dataclasses
import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from vision.data import preprocess
from vision.errors import UserError, close_matches

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
  root = d.name[len("imagefolder:"):]
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    have = sorted(os.listdir(root)) if os.path.isdir(root) else []
    raise UserError(f"image folder {split_dir} does not exist; expected {root}/<split>/<class>/<image> "
                    f"(splits found: {have or 'none'})")
  train_dir = os.path.join(root, d.train_split)  # class names come from the train split
  class_root = train_dir if os.path.isdir(train_dir) else split_dir
  class_names = sorted(e for e in os.listdir(class_root) if os.path.isdir(os.path.join(class_root, e)))
  files, labels = [], []
  for label, name in enumerate(class_names):
    folder = os.path.join(split_dir, name)
    found = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)) if os.path.isdir(folder) else []
    if not found and class_root == split_dir:
      raise UserError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove it")
    files += [os.path.join(folder, f) for f in found]
    labels += [label] * len(found)
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
  if d.name.startswith("imagefolder:"):
    return _folder_source(d, split, process_index, process_count)
  return _tfds_source(d, split, process_index, process_count)


def _parallel(d):
  return tf.data.AUTOTUNE if d.num_parallel_calls < 0 else d.num_parallel_calls


def train_batches(d, local_batch, seed, start_step=0, process_index=0, process_count=1) -> Iterator[dict]:
  """Endless numpy batches {'image': f32 [B,H,W,C], 'label': i32 [B]} from `start_step` on."""
  src = source(d, d.train_split, process_index, process_count)
  n = src.num_examples
  if n < local_batch:
    raise UserError(f"the train split has {n} examples per process, fewer than the local batch {local_batch}; "
                    "lower config.train.batch_size")
  consumed = start_step * local_batch
  start_epoch, offset = divmod(consumed, n)
  base_seed = np.int64(seed) * 1_000_003 + process_index
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

  def process(position, rec):
    image, label = rec
    image = preprocess.train_image(image, tf.stack([tf.constant(base_seed), position]), d, decoded=d.cache)
    return {"image": image, "label": tf.cast(label, tf.int32)}

  ds = ds.map(process, num_parallel_calls=_parallel(d), deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(ds.as_numpy_iterator())


def eval_batches(d, split, local_batch, process_index=0, process_count=1):
  """(iterator of {'image','label','mask'} batches, number of batches): each example once, padded."""
  src = source(d, split, process_index, process_count)
  num_batches = max(1, math.ceil(src.max_share / local_batch))
  ds = src.records.map(lambda b, label: {"image": preprocess.eval_image(b, d), "label": tf.cast(label, tf.int32),
                                         "mask": tf.constant(1.0)}, num_parallel_calls=_parallel(d))
  pad = {"image": tf.zeros((d.image_size, d.image_size, d.channels)), "label": tf.constant(0), "mask": tf.constant(0.0)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local_batch - src.num_examples))
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator(), num_batches


def dataset_facts(d, process_index=0, process_count=1):
  """(num_classes, class names, train examples in the whole split)."""
  src = source(d, d.train_split, process_index, process_count)
  return src.num_classes, src.class_names, src.total_examples

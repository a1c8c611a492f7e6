"""`digits`: scikit-learn's bundled 1,797 handwritten digits as a tfds dataset (no network).

8x8 grayscale images from the UCI "Optical Recognition of Handwritten Digits"
test set, pixel counts 0..16 rescaled to uint8 0..255 (round(v * 255 / 16)).
Fixed split: sklearn.model_selection.train_test_split(test_size=0.2,
stratify=labels, random_state=0) on the dataset's order, giving 1,437 train and
360 test images. Built into the tfds data_dir on first use, like any dataset.
"""
import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN, NUM_TEST = 1437, 360


def digits_split():
  """(images uint8 [N,8,8,1], labels int64 [N], train_idx, test_idx) of the fixed split."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int64)
  idx = np.arange(len(labels))
  train_idx, test_idx = train_test_split(idx, test_size=0.2, stratify=labels, random_state=0)
  return images, labels, np.sort(train_idx), np.sort(test_idx)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits (8x8 grayscale, 10 classes)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split with random_state=0."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships inside scikit-learn
    images, labels, train_idx, test_idx = digits_split()
    return {"train": self._generate_examples(images, labels, train_idx),
            "test": self._generate_examples(images, labels, test_idx)}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}

"""vision.tools.split_dataset: stratified seeded splits, duplicate groups kept in one split, the pipeline reads it."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from vision.tools import split_dataset as sd

COUNTS = {"cat": 40, "dog": 30, "owl": 20, "yak": 6}  # yak: fewer than --min-images


def _smooth_image(rng, size=48):
  """Random low-frequency colours: distinct pictures whose dHash is stable under resizing and re-encoding."""
  small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  for name, n in COUNTS.items():
    os.makedirs(root / name)
    for i in range(n):
      image = _smooth_image(rng)
      if i % 2:
        image.save(root / name / f"{i:03d}.jpg", quality=92)
      else:
        image.save(root / name / f"{i:03d}.png")
  # Planted: an exact copy in the same class, an exact copy in another class (conflicting labels), and a
  # near-duplicate (shrunk to 30 px and re-encoded as a lower-quality JPEG).
  (root / "cat" / "copy_of_005.jpg").write_bytes((root / "cat" / "005.jpg").read_bytes())
  (root / "owl" / "stray_dog_007.jpg").write_bytes((root / "dog" / "007.jpg").read_bytes())
  Image.open(root / "owl" / "004.png").convert("RGB").resize((30, 30)).save(root / "owl" / "small_004.jpg",
                                                                            quality=70)
  # Left out or ignored: not decodable, decodable by PIL but not by TensorFlow, not an image file.
  (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  _smooth_image(rng).save(root / "dog" / "webp_inside.jpg", format="WEBP")
  (root / "cat" / "notes.txt").write_text("not an image")
  return str(root)


@pytest.fixture(scope="module")
def split(src, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("split") / "data")
  assert sd.main(["--src", src, "--out", out]) == 0
  return out, json.load(open(os.path.join(out, "split.json")))


def _by_path(report):
  return {r["path"]: r for r in report["files"]}


def test_planted_duplicates_are_found_and_kept_in_one_split(split):
  _, report = split
  files = _by_path(report)
  for a, b in [("cat/005.jpg", "cat/copy_of_005.jpg"), ("dog/007.jpg", "owl/stray_dog_007.jpg"),
               ("owl/004.png", "owl/small_004.jpg")]:
    assert files[a]["group"] == files[b]["group"] and files[a]["split"] == files[b]["split"], (a, b)
  groups = sorted(sorted(g) for g in report["duplicate_groups"])
  assert groups == [["cat/005.jpg", "cat/copy_of_005.jpg"], ["dog/007.jpg", "owl/stray_dog_007.jpg"],
                    ["owl/004.png", "owl/small_004.jpg"]]
  assert report["exact_groups"] == 2
  assert any("conflicting labels" in w and "owl/stray_dog_007.jpg" in w for w in report["warnings"])


def test_no_image_or_near_copy_in_two_splits(split):
  _, report = split
  by_sha = {}
  for r in report["files"]:
    by_sha.setdefault(r["sha256"], set()).add(r["split"])
  assert all(len(s) == 1 for s in by_sha.values())
  hashes = np.array([int(r["dhash"], 16) for r in report["files"]], np.uint64)
  splits = np.array([r["split"] for r in report["files"]])
  for i, j in sd.near_pairs(hashes, report["hamming"]):
    assert splits[i] == splits[j]
  # The unrelated pictures are far apart: the threshold has a wide margin.
  distances = [bin(int(a) ^ int(b)).count("1") for a, b in zip(hashes[:40], hashes[1:41])]
  assert min(distances) > 3 * report["hamming"]


def test_stratified_counts_and_the_written_layout(split):
  out, report = split
  counts = report["counts"]
  for name in ("dog", "yak"):  # no duplicate groups inside: exactly round(n x fraction)
    n = sum(counts[name].values())
    assert [counts[name][s] for s in sd.SPLITS] == sd.targets(n, 0.1, 0.2)
  assert counts["dog"] == {"train": 21, "val": 3, "test": 6}  # 30 readable images (+1 stray copy in owl)
  assert counts["cat"] == {"train": 29, "val": 4, "test": 8}  # 41 with the copy; the pair moves as one
  for name in COUNTS:
    for s in sd.SPLITS:
      folder = os.path.join(out, s, name)
      listed = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
      assert listed == sorted(os.path.basename(r["path"]) for r in report["files"]
                              if r["class"] == name and r["split"] == s)
  left_out = {u["path"]: u["reason"] for u in report["unreadable"]}
  assert set(left_out) == {"dog/broken.jpg", "dog/webp_inside.jpg"} and "WEBP" in left_out["dog/webp_inside.jpg"]
  assert report["ignored"] == ["cat/notes.txt"]
  assert any("'yak' has only 6 images" in w for w in report["warnings"])


def test_same_seed_same_split_other_seed_other_split(src, split, tmp_path):
  _, report = split
  again = sd.split_dataset(src, str(tmp_path / "again"), seed=0, mode="symlink")
  other = sd.split_dataset(src, str(tmp_path / "other"), seed=1)
  assignment = lambda rep: [(r["path"], r["split"]) for r in rep["files"]]
  assert assignment(again) == assignment(report)
  assert assignment(other) != assignment(report) and other["counts"] == report["counts"]
  link = tmp_path / "again" / "train" / "cat" / os.path.basename(next(
      r["path"] for r in again["files"] if r["class"] == "cat" and r["split"] == "train"))
  assert link.is_symlink() and os.path.samefile(link, os.path.join(src, os.path.relpath(link, link.parents[1])))


def test_the_input_pipeline_reads_the_output(split):
  from vision.data import pipeline
  from vision.train.config import default_config
  out, report = split
  assert sd.IMAGE_EXTENSIONS == pipeline.IMAGE_EXTENSIONS
  d = default_config().data
  d.name = f"imagefolder:{out}"
  for s in sd.SPLITS:
    source = pipeline.source(d, s)
    assert source.class_names == sorted(COUNTS)
    assert source.total_examples == sum(c[s] for c in report["counts"].values())


def test_bad_arguments_are_one_line_exit_2(src, split, tmp_path, capsys):
  out, _ = split
  assert sd.main(["--src", src, "--out", out]) == 2
  assert "exists and is not empty" in capsys.readouterr().err
  assert sd.main(["--src", src, "--out", str(tmp_path / "x"), "--val", "0.5", "--test", "0.5"]) == 2
  assert capsys.readouterr().err.strip() == "error: --val 0.5 and --test 0.5 must be >= 0 with val + test < 1"
  assert sd.main(["--src", src, "--out", str(tmp_path / "x"), "--hamming", "64"]) == 2  # all near-duplicates before
  assert capsys.readouterr().err.strip().startswith("error: --hamming 64 must be -1 (exact duplicates only) or 0 to")
  assert not os.path.exists(tmp_path / "x")
  assert sd.main(["--src", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")]) == 2
  assert sd.main(["--src", src, "--out", os.path.join(src, "cat", "out")]) == 2


def test_near_pairs_multi_index_equals_all_pairs():
  rng = np.random.default_rng(0)
  base = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2)
  copies = []
  for i in rng.integers(0, len(base), 300):  # near copies: 0 to 7 bits flipped
    v = int(base[i])
    for bit in rng.choice(64, rng.integers(0, 8), replace=False):
      v ^= 1 << int(bit)
    copies.append(v)
  hashes = np.concatenate([base, np.array(copies, np.uint64), np.full(40, 5, np.uint64)])  # + one crowded bucket
  for bits in (0, 3, 4, 6):
    brute = sd.near_pairs(hashes, bits)
    assert len(brute) > 40 * 39 // 2
    np.testing.assert_array_equal(sd.near_pairs(hashes, bits, brute_force_below=0), brute)

"""Split a class-per-folder image directory into train/val/test with no duplicate across splits.

    python -m vision.tools.split_dataset --src photos --out data [--val 0.1 --test 0.2 --seed 0]
        [--copy | --symlink] [--hamming 4] [--min-images 10]

Input: SRC/<class>/<image> (JPEG, PNG, GIF, BMP; what the input pipeline reads).
Output: OUT/<split>/<class>/<image> as copies (default) or symlinks, the layout
that `--config.data.name=imagefolder:OUT` reads (eval on `test`, or
`--config.data.eval_split=val`), plus OUT/split.json recording where every
file went, its hashes and the duplicate groups.

Leakage: two files are duplicates when their bytes are equal (SHA-256) or their
perceptual hashes are within --hamming bits. The perceptual hash is a 64-bit
difference hash (dHash: grey image resized to 9x8, one bit per horizontally
adjacent pair, "is the right pixel brighter"); re-encoding, resizing and mild
colour changes move it by a few bits, unrelated photos differ in ~32. Files
linked by either relation, transitively, form a group, and a group goes to one
split as a whole, so no image or near-copy of it is in two splits. Groups
whose files sit in different class folders are reported (conflicting labels).

Stratification: per class, val and test get round(n x fraction) images and
train the rest. Groups are placed largest first, then in an order drawn from
--seed, each into the split that still lacks most images of its classes; with
no duplicates this hits the per-class targets exactly. The same files and seed
give the same split.

Files that PIL cannot decode, or whose content is not JPEG/PNG/GIF/BMP whatever
their name, are left out and listed: the pipeline could not read them either.
Exit status 2 with one line for unusable arguments (missing SRC, non-empty OUT).
"""
import argparse
import concurrent.futures
import hashlib
import io
import json
import math
import os
import shutil
import sys

import numpy as np
from PIL import Image

from vision.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # vision.data.pipeline's (tested equal; it imports TF)
DECODABLE = {"JPEG", "MPO", "PNG", "GIF", "BMP"}  # what tf.io.decode_image reads (MPO is a JPEG with extras)
SPLITS = ("train", "val", "test")


def scan(src):
  """(class names, [(class index, path)], ignored paths): direct files of each class folder, sorted."""
  if not os.path.isdir(src):
    raise UserError(f"--src {src} is not a directory; expected SRC/<class>/<image>")
  classes = sorted(e for e in os.listdir(src) if os.path.isdir(os.path.join(src, e)))
  if not classes:
    raise UserError(f"--src {src} has no class folders; expected SRC/<class>/<image>")
  files, ignored = [], [os.path.join(src, e) for e in sorted(os.listdir(src)) if e not in classes]
  for label, name in enumerate(classes):
    folder = os.path.join(src, name)
    for entry in sorted(os.listdir(folder)):
      path = os.path.join(folder, entry)
      if os.path.isfile(path) and entry.lower().endswith(IMAGE_EXTENSIONS):
        files.append((label, path))
      else:
        ignored.append(path)
  return classes, files, ignored


def dhash(image) -> int:
  """64-bit difference hash of a PIL image."""
  grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
  bits = (grey[:, 1:] > grey[:, :-1]).ravel()
  return int(np.packbits(bits).view(">u8")[0])


def fingerprint(path):
  """(SHA-256 hex, dHash, None) of a file, or (None, None, reason) when it cannot be used."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as image:
      if image.format not in DECODABLE:
        return None, None, f"{image.format} content, which the input pipeline cannot decode"
      image.draft("L", (64, 64))  # JPEG: decode at 1/2..1/8 scale, enough for a 9x8 hash
      return hashlib.sha256(data).hexdigest(), dhash(image), None
  except Image.UnidentifiedImageError:
    return None, None, "not an image format PIL recognises"
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    return None, None, f"not a readable image ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})"


def _popcount(x):
  if hasattr(np, "bitwise_count"):  # numpy >= 2
    return np.bitwise_count(x)
  table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
  return table[x.view(np.uint8).reshape(x.shape + (8,))].sum(-1)


def _pairs_within(h, max_bits, chunk_elems=1 << 22):
  """Index pairs (i < j) of `h` within max_bits bits: every pair, in row chunks of bounded memory."""
  rows = max(1, chunk_elems // max(len(h), 1))
  out = [np.zeros((0, 2), np.int64)]
  for start in range(0, len(h), rows):
    i, j = np.nonzero(_popcount(h[start:start + rows, None] ^ h[None, start:]) <= max_bits)
    keep = j > i  # both relative to start
    out.append(np.stack([i[keep] + start, j[keep] + start], 1))
  return np.concatenate(out)


def near_pairs(hashes, max_bits, brute_force_below=16384):
  """Index pairs (i < j) whose 64-bit hashes differ in at most max_bits bits, all of them.

  Up to `brute_force_below` hashes every pair is compared (0.6 s for 10k). Above, multi-index hashing:
  cut the 64 bits into max_bits + 1 blocks; two hashes within max_bits bits agree exactly on at least one
  block (pigeonhole), so only hashes sharing a block value are compared. Unrelated hashes rarely share a
  13-bit block: 2 s for 50k hashes instead of 12 s, 10 s for a million instead of hours.
  """
  h = np.asarray(hashes, np.uint64)
  if max_bits < 0 or len(h) < 2:
    return np.zeros((0, 2), np.int64)
  if len(h) < brute_force_below:
    return _pairs_within(h, max_bits)
  bounds = np.linspace(0, 64, min(max_bits + 1, 64) + 1).astype(np.uint64)
  found = [np.zeros((0, 2), np.int64)]
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    key = (h >> lo) & np.uint64((1 << int(hi - lo)) - 1)
    order = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[order])) + 1
    for members in np.split(order, cuts):
      if len(members) > 1:
        found.append(members[_pairs_within(h[members], max_bits)])
  pairs = np.sort(np.concatenate(found), axis=1)
  return np.unique(pairs, axis=0)


def duplicate_groups(shas, hashes, max_bits):
  """Group index per file: exact (same SHA-256) or near (dHash within max_bits) duplicates, transitively."""
  parent = list(range(len(shas)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  def union(i, j):
    parent[find(i)] = find(j)

  first = {}
  for i, sha in enumerate(shas):
    union(i, first.setdefault(sha, i))
  near = near_pairs(hashes, max_bits) if max_bits >= 0 else np.zeros((0, 2), np.int64)
  for i, j in near:
    union(int(i), int(j))
  roots = {}
  return [roots.setdefault(find(i), len(roots)) for i in range(len(shas))], len(near)


def targets(n, val, test):
  """(train, val, test) image counts for a class of n images; at least one for train."""
  n_val, n_test = math.floor(n * val + 0.5), math.floor(n * test + 0.5)
  while n > 0 and n - n_val - n_test < 1:
    if n_val >= n_test:
      n_val -= 1
    else:
      n_test -= 1
  return [n - n_val - n_test, n_val, n_test]


def assign(labels, groups, num_classes, val, test, seed):
  """Split index per file: each group whole, largest first then in seeded order, where its classes lack most."""
  labels, groups = np.asarray(labels), np.asarray(groups)
  want = np.array([targets(int(n), val, test) for n in np.bincount(labels, minlength=num_classes)])
  have = np.zeros_like(want)
  members = [[] for _ in range(groups.max() + 1)] if len(groups) else []
  for i, g in enumerate(groups):
    members[g].append(i)
  draw = np.random.default_rng(seed).permutation(len(members))
  split = np.zeros(len(labels), np.int64)
  for g in sorted(range(len(members)), key=lambda g: (-len(members[g]), draw[g])):
    lack = (want - have)[labels[members[g]]].sum(0)
    s = int(np.argmax(lack))  # ties go to the earlier split (train, val, test)
    split[members[g]] = s
    np.add.at(have[:, s], labels[members[g]], 1)
  return split


def split_dataset(src, out, val=0.1, test=0.2, seed=0, mode="copy", hamming=4, min_images=10, workers=None):
  """Does the work of the CLI; returns the report dict also written to OUT/split.json."""
  if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
    raise UserError(f"--val {val} and --test {test} must be >= 0 with val + test < 1")
  if not -1 <= hamming < 64:  # 64 or more bits of a 64-bit hash: every image a near-duplicate of every other
    raise UserError(f"--hamming {hamming} must be -1 (exact duplicates only) or 0 to 63 bits of the 64-bit dHash")
  src, out = os.path.abspath(src), os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise UserError(f"--out {out} exists and is not empty; choose a new directory (old files would mix in)")
  if os.path.commonpath([src, out]) in (src, out):
    raise UserError(f"--out {out} and --src {src} must not contain one another")
  classes, files, ignored = scan(src)
  with concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
    prints = list(pool.map(fingerprint, [p for _, p in files]))
  unreadable = [{"path": os.path.relpath(p, src), "reason": r} for (_, p), (_, _, r) in zip(files, prints) if r]
  kept = [(f, fp) for f, fp in zip(files, prints) if not fp[2]]
  if not kept:
    raise UserError(f"--src {src} holds no readable images in its class folders")
  labels = [label for (label, _), _ in kept]
  paths = [p for (_, p), _ in kept]
  shas, hashes = [fp[0] for _, fp in kept], [fp[1] for _, fp in kept]
  groups, near_links = duplicate_groups(shas, hashes, hamming)
  split = assign(labels, groups, len(classes), val, test, seed)
  records = [{"path": os.path.relpath(p, src), "class": classes[c], "split": SPLITS[s], "sha256": sha,
              "dhash": f"{h:016x}", "group": g}
             for p, c, s, sha, h, g in zip(paths, labels, split, shas, hashes, groups)]
  by_group = {}
  for r in records:
    by_group.setdefault(r["group"], []).append(r)
  dup = [rs for rs in by_group.values() if len(rs) > 1]
  assert all(len({r["split"] for r in rs}) == 1 for rs in dup), "a duplicate group spans splits"
  counts = {name: {s: 0 for s in SPLITS} for name in classes}
  for r in records:
    counts[r["class"]][r["split"]] += 1
  warnings = _warnings(classes, counts, dup, val, test, min_images)
  report = {"src": src, "out": out, "mode": mode, "seed": seed, "fractions": {"val": val, "test": test},
            "hamming": hamming, "classes": classes, "counts": counts, "warnings": warnings,
            "duplicate_groups": [[r["path"] for r in rs] for rs in dup],
            "exact_groups": sum(len({r["sha256"] for r in rs}) == 1 for rs in dup), "near_links": near_links,
            "unreadable": unreadable, "ignored": [os.path.relpath(p, src) for p in ignored], "files": records}
  _write(src, out, records, mode)
  with open(os.path.join(out, "split.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def _warnings(classes, counts, dup, val, test, min_images):
  out = []
  for name in classes:
    total = sum(counts[name].values())
    if total < min_images:
      out.append(f"class {name!r} has only {total} images (fewer than {min_images}); its metrics will be noisy")
    for s, fraction in (("train", 1.0), ("val", val), ("test", test)):
      if fraction > 0 and total and not counts[name][s]:
        out.append(f"class {name!r} has no {s} images")
  for rs in dup:
    if len({r["class"] for r in rs}) > 1:
      out.append("the same image is in several classes (conflicting labels): "
                 + ", ".join(r["path"] for r in rs[:4]) + (" ..." if len(rs) > 4 else ""))
  return out


def _write(src, out, records, mode):
  for r in records:
    target = os.path.join(out, r["split"], r["class"], os.path.basename(r["path"]))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if mode == "symlink":
      os.symlink(os.path.join(src, r["path"]), target)
    else:
      shutil.copy2(os.path.join(src, r["path"]), target)


def format_report(report) -> str:
  counts, classes = report["counts"], report["classes"]
  width = max(8, *(len(c) for c in classes))
  lines = [f"{'class':<{width}} {'train':>7} {'val':>7} {'test':>7} {'total':>7}"]
  totals = {s: 0 for s in SPLITS}
  for name in classes:
    row = counts[name]
    lines.append(f"{name:<{width}} " + " ".join(f"{row[s]:>7}" for s in SPLITS) + f" {sum(row.values()):>7}")
    for s in SPLITS:
      totals[s] += row[s]
  lines.append(f"{'total':<{width}} " + " ".join(f"{totals[s]:>7}" for s in SPLITS) + f" {sum(totals.values()):>7}")
  groups = report["duplicate_groups"]
  in_groups = sum(len(g) for g in groups)
  near = len(groups) - report["exact_groups"]
  lines.append(f"duplicates: {len(groups)} groups with {in_groups} files ({report['exact_groups']} of identical "
               f"bytes, {near} with near-duplicates within {report['hamming']} bits of dHash); "
               "each group is in one split, none spans two")
  lines += [f"  {' = '.join(g[:4])}{' ...' if len(g) > 4 else ''}" for g in groups[:5]]
  if len(groups) > 5:
    lines.append(f"  ... {len(groups) - 5} more in split.json")
  for u in report["unreadable"]:
    lines.append(f"left out {u['path']}: {u['reason']}")
  if report["ignored"]:
    lines.append(f"ignored {len(report['ignored'])} entries that are not image files in class folders "
                 f"(e.g. {report['ignored'][0]})")
  lines += [f"warning: {w}" for w in report["warnings"]]
  lines.append(f"wrote {report['out']}/<split>/<class>/ ({report['mode']}) and {report['out']}/split.json; "
               f"train with --config.data.name=imagefolder:{report['out']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--src", required=True, help="SRC/<class>/<image>")
  p.add_argument("--out", required=True, help="new directory for OUT/<split>/<class>/<image>")
  p.add_argument("--val", type=float, default=0.1, help="fraction of each class for validation (0.1)")
  p.add_argument("--test", type=float, default=0.2, help="fraction of each class for test (0.2)")
  p.add_argument("--seed", type=int, default=0)
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy the files (default)")
  mode.add_argument("--symlink", dest="mode", action="store_const", const="symlink", help="symlink the files")
  p.add_argument("--hamming", type=int, default=4,
                 help="near-duplicate threshold in bits of the 64-bit dHash (4); -1: exact duplicates only")
  p.add_argument("--min-images", type=int, default=10, help="warn about classes with fewer images (10)")
  args = p.parse_args(argv)
  try:
    report = split_dataset(args.src, args.out, args.val, args.test, args.seed, args.mode or "copy", args.hamming,
                           args.min_images)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())

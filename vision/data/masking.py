"""iBOT block masks (BEiT's MaskingGenerator as DINOv2 uses it; numpy, on the input side).

A mask is a union of random rectangles of patches: each rectangle has an area
uniform in [min_num_patches, remaining budget] (at most max_num_patches) and a
log-uniform aspect ratio in [0.3, 1/0.3]; it is kept only if it adds at least
one new patch without overshooting the budget (10 tries per rectangle).

Per batch of global crops (dinov2/data/collate.py): int(n x mask_probability)
crops are masked, crop i with a target ratio uniform in the i-th of n_masked
equal bins of [ratio_min, ratio_max] (stratified), the rest unmasked, and the
masks shuffled over the crops. The release does this per GPU batch; we do it
per group (one group per device, see vision/ssl/steps.py), which also bounds
the number of masked patches per group by `upper_bound`, a static size.
"""
import math

import numpy as np


def block_mask(rng: np.random.Generator, grid, num_masking: int, min_num_patches=4, max_num_patches=None,
               min_aspect=0.3, max_aspect=None) -> np.ndarray:
  """bool [h, w] with at most num_masking patches set (fewer if rectangles stop fitting)."""
  h, w = grid
  mask = np.zeros((h, w), bool)
  max_num_patches = num_masking if max_num_patches is None else max_num_patches
  log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
  count = 0
  while count < num_masking:
    budget = min(num_masking - count, max_num_patches)
    delta = 0
    for _ in range(10):
      area = rng.uniform(min(min_num_patches, budget), max(min_num_patches, budget))  # random.uniform(4, budget)
      aspect = math.exp(rng.uniform(*log_aspect))
      bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if bw < w and bh < h:
        top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
        if 0 < new <= budget:
          mask[top:top + bh, left:left + bw] = True
          delta = new
          break
    if delta == 0:
      break
    count += delta
  return mask


def _ratio_bins(n_crops, mask_probability, ratio):
  n_masked = int(n_crops * mask_probability)
  # float32 like the release's torch.linspace, so int(N x bound) agrees with it.
  return n_masked, np.linspace(ratio[0], ratio[1], n_masked + 1, dtype=np.float32)


def upper_bound(n_crops: int, num_patches: int, mask_probability=0.5, ratio=(0.1, 0.5)) -> int:
  """Most masked patches `crop_masks` can return for n_crops crops (the release's `upperbound`)."""
  n_masked, bins = _ratio_bins(n_crops, mask_probability, ratio)
  return int(sum(int(num_patches * float(bins[i + 1])) for i in range(n_masked)))


def crop_masks(rng: np.random.Generator, n_crops: int, grid, mask_probability=0.5, ratio=(0.1, 0.5),
               max_block_fraction=0.5) -> np.ndarray:
  """bool [n_crops, h * w]: stratified ratios over the masked crops, shuffled (one release collate)."""
  num_patches = grid[0] * grid[1]
  n_masked, bins = _ratio_bins(n_crops, mask_probability, ratio)
  max_block = int(max_block_fraction * num_patches)
  masks = [block_mask(rng, grid, int(num_patches * rng.uniform(bins[i], bins[i + 1])), max_num_patches=max_block)
           for i in range(n_masked)]
  masks += [np.zeros(grid, bool)] * (n_crops - n_masked)
  order = rng.permutation(n_crops)
  return np.stack([masks[i] for i in order]).reshape(n_crops, num_patches)


def batch_masks(seed, step: int, process_index: int, local_batch: int, groups: int, n_global: int, grid,
                mask_probability=0.5, ratio=(0.1, 0.5)) -> np.ndarray:
  """bool [local_batch, n_global, h * w] for the batch of `step`: `groups` contiguous groups of examples,
  each with its own stratified draw. Deterministic in (seed, step, process): resuming redraws the same."""
  rng = np.random.default_rng([int(seed), int(process_index), int(step)])
  per_group = local_batch // groups
  out = [crop_masks(rng, per_group * n_global, grid, mask_probability, ratio).reshape(per_group, n_global, -1)
         for _ in range(groups)]
  return np.concatenate(out, axis=0)

"""Swin Transformer v1 (Liu et al. 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows"), laid out and computing exactly as torchvision.

Stem: 4x4/4 conv + LayerNorm. Four stages of blocks; block j of a stage is
x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))), where attn is
multi-head self-attention inside non-overlapping 7x7 windows with a learned
relative position bias, and odd blocks first roll the map by -window//2 (and
mask attention between pixels that the roll brought together from different
regions). The map is zero-padded (after norm1) to a multiple of the window; a
map no larger than the window is not shifted (torchvision; timm would instead
shrink the window). Between stages, patch merging concatenates the four 2x2
neighbours (odd sizes zero-padded), LayerNorm, Linear 4C -> 2C without bias.
Head: LayerNorm, global average pool, Linear. LayerNorm eps 1e-5, exact GELU,
stochastic depth linear from 0 to drop_path_rate over all blocks. NHWC.

Parameter names mirror torchvision's state_dict ('.' -> '_', weight -> kernel
or scale): features_0_0 (patch conv), features_0_2 (norm),
features_{2s+1}_{j}/{norm1, attn/{qkv, proj, relative_position_bias_table},
norm2, mlp_0, mlp_3} (stage s, block j), features_{2s+2}/{norm, reduction}
(patch merging after stage s), norm, head. relative_position_index and the shift
mask are computed, not stored. Stage outputs are sown as 'intermediates/stage{1..4}'.
Departures: no attention dropout (torchvision's default 0); the head bias uses
PyTorch's default uniform init instead of zeros.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision.models.layers import ClassifierHead, DropPath, drop_path_rates, remat, torch_bias_init, torch_linear_init
from vision.models.registry import register_model

# torchvision: trunc_normal_(std=0.02) on Linear weights (cut at +-2 absolute, i.e. 100 sigma), zero bias.
_init = nn.initializers.normal(0.02)
_MASKED = -100.0  # torchvision's additive mask value (not -inf)


def _layer_norm(dtype, name):
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def relative_position_index(window: int) -> np.ndarray:
  """(T, T) index into the ((2W-1)^2, heads) bias table for T = W*W tokens in a window."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, T, T), each in [0, 2W-2]
  return rel[0] * (2 * window - 1) + rel[1]


def _windows(x, window):
  """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def _unwindows(x, window, b, h, w):
  x = x.reshape(b, h // window, w // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, -1)


def shift_mask(height: int, width: int, window: int, shift: tuple[int, int]) -> np.ndarray:
  """Additive (nW, T, T) mask for a map of (padded) size height x width rolled by -shift.

  After the roll, each axis has three regions: [0, L - window), [L - window, L - shift)
  and [L - shift, L); only the last window along each axis straddles them. Two tokens of one window
  may attend to each other only if they come from the same region pair (0), else -100.
  """
  def regions(length, s):
    r = np.zeros(length, np.int32)
    if s:
      r[length - window:] = 1
      r[length - s:] = 2
    return r
  ids = regions(height, shift[0])[:, None] * 3 + regions(width, shift[1])[None, :]
  ids = _windows(ids[None, :, :, None], window)[..., 0]  # (nW, T)
  return np.where(ids[:, None, :] == ids[:, :, None], 0.0, _MASKED).astype(np.float32)


class WindowAttention(nn.Module):
  """Window multi-head self-attention with relative position bias on a (B, H, W, C) map."""
  num_heads: int
  window: int = 7
  shift: int = 0
  dtype: jnp.dtype = jnp.float32
  attn_implementation: str | None = None

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    win, heads = self.window, self.num_heads
    pad_h, pad_w = -h % win, -w % win
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    # No shift along an axis the window already covers (torchvision).
    shift = (0 if win >= hp else self.shift, 0 if win >= wp else self.shift)
    if any(shift):
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    x = _windows(x, win)  # (B * nW, T, C)
    n, t, _ = x.shape
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=_init, name="qkv")(x)
    qkv = qkv.reshape(n, t, 3, heads, c // heads)  # torch's order: (3, heads, head_dim) per token
    table = self.param("relative_position_bias_table", _init, ((2 * win - 1) ** 2, heads))
    bias = table[relative_position_index(win)].transpose(2, 0, 1)[None]  # (1, heads, T, T)
    if any(shift):
      mask = jnp.asarray(shift_mask(hp, wp, win, shift))[:, None]  # (nW, 1, T, T)
      bias = jnp.broadcast_to((bias + mask)[None], (b, n // b, heads, t, t)).reshape(n, heads, t, t)
    x = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], bias=bias.astype(qkv.dtype),
                                     implementation=self.attn_implementation)
    x = nn.Dense(c, dtype=self.dtype, kernel_init=_init, name="proj")(x.reshape(n, t, c))
    x = _unwindows(x, win, b, hp, wp)
    if any(shift):
      x = jnp.roll(x, shift, axis=(1, 2))
    return x[:, :h, :w]


class SwinBlock(nn.Module):
  num_heads: int
  window: int = 7
  shift: int = 0
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  drop_path: float = 0.0
  dtype: jnp.dtype = jnp.float32
  attn_implementation: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = WindowAttention(self.num_heads, self.window, self.shift, self.dtype, self.attn_implementation,
                        name="attn")(_layer_norm(self.dtype, "norm1")(x))
    x = x + DropPath(self.drop_path)(drop(y), train)
    y = nn.Dense(int(dim * self.mlp_ratio), dtype=self.dtype, kernel_init=_init, name="mlp_0")(
        _layer_norm(self.dtype, "norm2")(x))
    y = drop(nn.gelu(y, approximate=False))  # torch nn.GELU() is the exact form
    y = nn.Dense(dim, dtype=self.dtype, kernel_init=_init, name="mlp_3")(y)
    return x + DropPath(self.drop_path)(drop(y), train)


class PatchMerging(nn.Module):
  """2x2 neighbours -> channels (torchvision's order x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2])."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = _layer_norm(self.dtype, "norm")(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, kernel_init=_init, name="reduction")(x)


class SwinTransformer(nn.Module):
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  embed_dim: int = 96
  patch_size: int = 4
  window_size: int = 7
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  drop_path_rate: float = 0.2  # torchvision's stochastic_depth_prob
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32
  attn_implementation: str | None = None  # jax.nn.dot_product_attention's: None, 'xla', 'cudnn'
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)

  @nn.compact
  def __call__(self, x, train: bool = False):
    p = self.patch_size
    fan_in = p * p * x.shape[-1]
    x = nn.Conv(self.embed_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype, kernel_init=torch_linear_init,
                bias_init=torch_bias_init(fan_in), name="features_0_0")(x.astype(self.dtype))
    x = _layer_norm(self.dtype, "features_0_2")(x)
    rates = iter(drop_path_rates(self.drop_path_rate, sum(self.depths)))
    for s, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if s > 0:
        x = PatchMerging(self.dtype, name=f"features_{2 * s}")(x)
      block = remat(SwinBlock, self.remat)
      for j in range(depth):
        x = block(heads, self.window_size, 0 if j % 2 == 0 else self.window_size // 2, self.mlp_ratio,
                  self.dropout, next(rates), self.dtype, self.attn_implementation,
                  name=f"features_{2 * s + 1}_{j}")(x, train)
      self.sow("intermediates", f"stage{s + 1}", x)
    x = _layer_norm(self.dtype, "norm")(x)
    return ClassifierHead(self.num_classes, dtype=self.dtype, kernel_init=_init, name_fc="head")(x, train)


def _variant(names, embed_dim, depths, num_heads, drop_path_rate):
  def factory(**kw):
    return SwinTransformer(**{"embed_dim": embed_dim, "depths": depths, "num_heads": num_heads,
                              "drop_path_rate": drop_path_rate, **kw})
  factory.__doc__ = f"{names[0]}: embed dim {embed_dim}, depths {depths}, heads {num_heads}, window 7"
  register_model(factory, default_image_size=224, name=names[0])
  for alias in names[1:]:
    register_model(factory, default_image_size=224, name=alias, alias_of=names[0])


# torchvision's variants and its stochastic depth defaults; timm's names build the same
# modules (same parameter counts; timm's own default drop path is 0.1, here torchvision's).
_variant(("swin_t", "swin_tiny_patch4_window7_224"), 96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2)
_variant(("swin_s", "swin_small_patch4_window7_224"), 96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3)
_variant(("swin_b", "swin_base_patch4_window7_224"), 128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5)

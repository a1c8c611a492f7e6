"""Vision Transformers laid out as timm: ViT (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"),
trainable from scratch on ImageNet-1k with the DeiT recipe (Touvron et al. 2021, "Training
data-efficient image transformers"), DINOv2 backbones (Oquab et al. 2023) with or without
register tokens (Darcet et al. 2024, "Vision Transformers Need Registers").

Patch embedding (a patch x patch / patch conv), optional class token and register
tokens, learned absolute position embeddings, `depth` pre-norm blocks
(x + ls1 * attn(norm1(x)), x + ls2 * mlp(norm2(x)), each branch under drop path),
a final LayerNorm, then token pooling (`norm` before) or average pooling of the
patch tokens (`fc_norm` after, as timm). Every LayerNorm has eps 1e-6; attention
is one fused qkv Dense and `jax.nn.dot_product_attention` (softmax in float32;
`attn_implementation="cudnn"` selects flash attention on GPU); the MLP is Linear,
exact GELU, Linear, or for the giant DINOv2 timm's SwiGLUPacked: one fc1 of
2 x hidden, silu(first half) * second half, fc2.

Naming rule (the weight importer relies on it): our flat parameter path with '/'
replaced by '_' equals timm's state_dict key with '.' replaced by '_', except
that the leaves `kernel` / `scale` are torch's `weight` (Conv HWIO <-> OIHW,
Dense (in, out) <-> (out, in)). Other leaves keep timm's name and shape:
patch_embed/proj, cls_token (1, 1, D), reg_token (1, R, D), pos_embed (1, T, D),
blocks_{i}/{norm1, attn/qkv, attn/proj, ls1/gamma, norm2, mlp/fc1, mlp/fc2,
ls2/gamma}, norm, fc_norm, head. torchvision's names (vit_b_16, ...) are
aliases of the same modules; their state_dicts map onto this timm tree.

Position embeddings cover the patch grid of `img_size`; another input size
resamples them on the fly with `resample_pos_embed`: bicubic, equal to
torch.nn.functional.interpolate(mode="bicubic", align_corners=False) with
antialias=False (cubic a=-0.75, border clamp) by default; `interpolate_antialias`
gives torch's antialiased bicubic (a=-0.5, PIL-style support), which is what
timm's dynamic_img_size uses; `interpolate_offset=0.1` is DINOv2's own
scale-factor trick. DINOv2 with registers follows timm's conversion
(no_embed_class: the position embeddings cover patches only; the class token
absorbed its own), so its pos_embed is (1, 1369, D) at 518px.

`use_mask_token` adds DINOv2's mask_token (1, D): forward_features(x, masks=...)
replaces the embeddings of masked patches before position embeddings are added.

Departures from timm: the head bias starts from PyTorch's default uniform
init instead of zeros; `fc_norm` is not a separate switch (on iff
global_pool="avg", timm's default rule); no attention/projection/position
dropout, patch dropout, qk-norm, pre-norm (CLIP) or attention-pool heads.
"""
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision.models.layers import ClassifierHead, DropPath, drop_path_rates, remat, torch_bias_init, torch_linear_init
from vision.models.registry import register_model

# timm: trunc_normal_(std=.02) with absolute bounds +-2, i.e. 100 sigma: a plain N(0, 0.02). Zero biases.
_dense_init = nn.initializers.normal(0.02)


def _cubic(x, a):
  # Keys' cubic convolution kernel (torch's cubic_convolution1/2 for |x| < 1 and 1 <= |x| < 2).
  x = abs(x)
  if x < 1.0:
    return ((a + 2) * x - (a + 3)) * x * x + 1
  if x < 2.0:
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return 0.0


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(in_size, out_size, antialias=False, offset=0.0):
  """(out_size, in_size) weights of torch's 1-D bicubic interpolation, align_corners=False.

  antialias=False: aten's upsample_bicubic2d (a=-0.75, 4 taps, indices clamped to the border).
  antialias=True: aten's _upsample_bicubic2d_aa (a=-0.5, support widened by the scale when
  downsampling, weights normalised, taps outside the input dropped).
  offset: torch called with scale_factor=(out + offset) / in (DINOv2) instead of size=out.
  """
  scale = in_size / (out_size + offset)
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    if antialias:
      support = 2.0 * scale if scale >= 1.0 else 2.0
      inv = 1.0 / scale if scale >= 1.0 else 1.0
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)
      hi = min(int(center + support + 0.5), in_size)
      w = np.array([_cubic((j - center + 0.5) * inv, -0.5) for j in range(lo, hi)])
      if w.sum() != 0:
        m[i, lo:hi] = w / w.sum()
    else:
      src = scale * (i + 0.5) - 0.5
      idx = min(math.floor(src), in_size - 1)
      t = min(max(src - idx, 0.0), 1.0)
      for k, w in enumerate((_cubic(t + 1, -0.75), _cubic(t, -0.75), _cubic(1 - t, -0.75), _cubic(2 - t, -0.75))):
        m[i, min(max(idx - 1 + k, 0), in_size - 1)] += w
  return m.astype(np.float32)


def resample_pos_embed(pos_embed, new_grid, num_prefix_tokens=1, old_grid=None, antialias=False, offset=0.0):
  """Bicubic resampling of (1, prefix + H*W, D) position embeddings to a (h, w) patch grid.

  The first `num_prefix_tokens` entries (class / register tokens) are kept as they are;
  `old_grid` defaults to the square grid the remaining tokens form. Computed in float32 at
  full matmul precision; returns the input dtype.
  """
  new_grid = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
  n = pos_embed.shape[1] - num_prefix_tokens
  old_grid = old_grid or (math.isqrt(n),) * 2
  if old_grid[0] * old_grid[1] != n:
    raise ValueError(f"{n} position embeddings do not form a {old_grid} grid")
  if tuple(old_grid) == new_grid:
    return pos_embed
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  grid = jnp.asarray(grid, jnp.float32).reshape(1, *old_grid, -1)
  mh = _bicubic_matrix(old_grid[0], new_grid[0], antialias, offset)
  mw = _bicubic_matrix(old_grid[1], new_grid[1], antialias, offset)
  grid = jnp.einsum("ih,bhwd,jw->bijd", mh, grid, mw, precision=jax.lax.Precision.HIGHEST)
  grid = grid.reshape(1, new_grid[0] * new_grid[1], -1).astype(pos_embed.dtype)
  return jnp.concatenate([jnp.asarray(prefix), grid], axis=1)


def _layer_norm(dtype, name=None):
  # Two-pass variance: the residual stream of big ViTs has large means (E[x^2] - E[x]^2 cancels).
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, use_fast_variance=False, name=name)


class PatchEmbed(nn.Module):
  embed_dim: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    fan_in = p * p * x.shape[-1]
    return nn.Conv(self.embed_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype, kernel_init=torch_linear_init,
                   bias_init=torch_bias_init(fan_in), name="proj")(x)


class Attention(nn.Module):
  num_heads: int
  qkv_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
    qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)  # timm's (q, k, v) x heads layout
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=self.implementation)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="proj")(y.reshape(b, t, d))


def _glu_fc1_kernel_init(key, shape, dtype=jnp.float32):
  # timm GluMlp.init_weights: the second (non-activated) half starts near 0 weights, bias 1.
  k1, k2 = jax.random.split(key)
  half = shape[-1] // 2
  return jnp.concatenate([_dense_init(k1, (*shape[:-1], half), dtype),
                          1e-6 * jax.random.normal(k2, (*shape[:-1], shape[-1] - half), dtype)], axis=-1)


def _glu_fc1_bias_init(key, shape, dtype=jnp.float32):
  half = shape[-1] // 2
  return jnp.concatenate([jnp.zeros((half,), dtype), jnp.ones((shape[-1] - half,), dtype)])


class Mlp(nn.Module):
  hidden: int
  swiglu: bool = False  # timm SwiGLUPacked: fc1 -> (a, b), silu(a) * b, fc2 from hidden // 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    if self.swiglu:
      y = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_glu_fc1_kernel_init, bias_init=_glu_fc1_bias_init,
                   name="fc1")(x)
      a, b = jnp.split(y, 2, axis=-1)
      y = nn.silu(a) * b
    else:
      y = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x), approximate=False)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(y)


class LayerScale(nn.Module):
  init_values: float

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_values), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  num_heads: int
  mlp_hidden: int
  qkv_bias: bool = True
  init_values: float | None = None
  swiglu: bool = False
  drop_path: float = 0.0
  dtype: jnp.dtype = jnp.float32
  attn_implementation: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    ls = (lambda name: LayerScale(self.init_values, name=name)) if self.init_values else (lambda name: lambda y: y)
    y = Attention(self.num_heads, self.qkv_bias, self.dtype, self.attn_implementation, name="attn")(
        _layer_norm(self.dtype, "norm1")(x))
    x = x + DropPath(self.drop_path)(ls("ls1")(y), train)
    y = Mlp(self.mlp_hidden, self.swiglu, self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))
    return x + DropPath(self.drop_path)(ls("ls2")(y), train)


class VisionTransformer(nn.Module):
  img_size: int | Sequence[int] = 224  # fixes the pos_embed grid; other input sizes resample it
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  init_values: float | None = None  # layer scale (CaiT/DeiT-III/DINOv2); None: no ls1/ls2
  class_token: bool = True
  reg_tokens: int = 0
  no_embed_class: bool = False  # pos_embed covers the patches only (timm's DINOv2 + registers)
  global_pool: str = "token"  # 'token' (norm, class token) or 'avg' (mean of patch tokens, fc_norm)
  swiglu: bool = False
  use_mask_token: bool = False
  interpolate_antialias: bool = False
  interpolate_offset: float = 0.0
  drop_rate: float = 0.0  # dropout before the head
  drop_path_rate: float = 0.0
  drop_path_uniform: bool = False  # every block at drop_path_rate (DINOv2's drop_path_uniform) instead of linear
  attn_implementation: str | None = None  # jax.nn.dot_product_attention(implementation=...): 'xla', 'cudnn'
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.global_pool not in ("token", "avg"):
      raise ValueError(f"global_pool={self.global_pool!r}: use 'token' or 'avg'")
    if self.global_pool == "token" and not self.class_token:
      raise ValueError("global_pool='token' needs the class token")
    d = self.embed_dim
    self.patch_embed = PatchEmbed(d, self.patch_size, self.dtype)
    if self.class_token:
      self.cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
    if self.reg_tokens:
      self.reg_token = self.param("reg_token", nn.initializers.normal(1e-6), (1, self.reg_tokens, d))
    num_pos = self.grid[0] * self.grid[1] + (0 if self.no_embed_class else self.num_prefix_tokens)
    self.pos_embed = self.param("pos_embed", _dense_init, (1, num_pos, d))
    if self.use_mask_token:
      self.mask_token = self.param("mask_token", nn.initializers.zeros, (1, d))
    rates = [self.drop_path_rate] * self.depth if self.drop_path_uniform else \
        drop_path_rates(self.drop_path_rate, self.depth)
    block = remat(Block, self.remat)
    self.blocks = [block(self.num_heads, int(d * self.mlp_ratio), self.qkv_bias, self.init_values, self.swiglu,
                         rates[i], self.dtype, self.attn_implementation) for i in range(self.depth)]
    if self.global_pool == "avg":
      self.fc_norm = _layer_norm(self.dtype)
    else:
      self.norm = _layer_norm(self.dtype)
    self.classifier = ClassifierHead(self.num_classes, self.drop_rate, self.dtype, _dense_init, name_fc="head")

  @property
  def grid(self):
    size = (self.img_size,) * 2 if isinstance(self.img_size, int) else tuple(self.img_size)
    return size[0] // self.patch_size, size[1] // self.patch_size

  @property
  def num_prefix_tokens(self):
    return int(self.class_token) + self.reg_tokens

  def _embed(self, x, masks=None):
    """Patch embeddings (masked ones replaced), position embeddings, prefix tokens: [B, T, D]."""
    x = self.patch_embed(jnp.asarray(x, self.dtype))
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    if masks is not None:
      if not self.use_mask_token:
        raise ValueError("masks given to a model built without use_mask_token=True")
      x = jnp.where(masks.reshape(b, h * w, 1), self.mask_token.astype(x.dtype)[None], x)
    pos = resample_pos_embed(self.pos_embed, (h, w), 0 if self.no_embed_class else self.num_prefix_tokens,
                             self.grid, self.interpolate_antialias, self.interpolate_offset).astype(x.dtype)
    prefix = []
    if self.class_token:
      prefix.append(jnp.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, d)))
    if self.reg_tokens:
      prefix.append(jnp.broadcast_to(self.reg_token.astype(x.dtype), (b, self.reg_tokens, d)))
    if self.no_embed_class:
      return jnp.concatenate(prefix + [x + pos], axis=1)
    return jnp.concatenate(prefix + [x], axis=1) + pos

  def _final_norm(self, x):
    return x if self.global_pool == "avg" else self.norm(x)  # avg: timm's norm is Identity, fc_norm follows the pool

  def __call__(self, x, train: bool = False):
    f = self.forward_features(x, train)
    if self.global_pool == "avg":
      x = self.fc_norm(jnp.mean(f["x_norm_patchtokens"], axis=1))
    else:
      x = f["x_norm_clstoken"]
    return self.classifier(x, train)

  def forward_features(self, x, train: bool = False, masks=None):
    """DINOv2's dict: normed class / register / patch tokens and the tokens before the final norm.

    masks: bool [B, num_patches] (row-major patch order), needs use_mask_token=True.
    With global_pool='avg' there is no final norm: the 'x_norm_*' entries are the block outputs.
    """
    x = self._embed(x, masks)
    for block in self.blocks:
      x = block(x, train)
    x_norm = self._final_norm(x)
    c, r = int(self.class_token), self.reg_tokens
    out = {"x_norm_regtokens": x_norm[:, c:c + r], "x_norm_patchtokens": x_norm[:, c + r:], "x_prenorm": x}
    if self.class_token:
      out["x_norm_clstoken"] = x_norm[:, 0]
    return out

  def get_intermediate_layers(self, x, n: int | Sequence[int] = 4, norm: bool = True):
    """Outputs [B, T, D] (all tokens) of the last n blocks, or of the blocks indexed by n; eval mode."""
    take = set(range(self.depth - n, self.depth)) if isinstance(n, int) else {i % self.depth for i in n}
    x, outs = self._embed(x), []
    for i, block in enumerate(self.blocks):
      x = block(x, False)
      if i in take:
        outs.append(self._final_norm(x) if norm else x)
    return tuple(outs)


def _variant(name, image_size=224, aliases=(), **arch):
  def factory(**kw):
    return VisionTransformer(**{"img_size": image_size, **arch, **kw})
  factory.__name__ = name
  factory.__doc__ = f"{name} (timm): {arch}"
  register_model(factory, default_image_size=image_size)
  for alias in aliases:  # torchvision's name for the same architecture
    register_model(factory, default_image_size=image_size, name=alias, alias_of=name)


_S, _B, _L = dict(embed_dim=384, depth=12, num_heads=6), dict(embed_dim=768, depth=12, num_heads=12), \
    dict(embed_dim=1024, depth=24, num_heads=16)
_variant("vit_tiny_patch16_224", patch_size=16, embed_dim=192, depth=12, num_heads=3)
_variant("vit_small_patch16_224", patch_size=16, **_S)
_variant("vit_small_patch32_224", patch_size=32, **_S)
_variant("vit_base_patch8_224", patch_size=8, **_B)
_variant("vit_base_patch16_224", aliases=("vit_b_16",), patch_size=16, **_B)
_variant("vit_base_patch32_224", aliases=("vit_b_32",), patch_size=32, **_B)
_variant("vit_large_patch16_224", aliases=("vit_l_16",), patch_size=16, **_L)
_variant("vit_large_patch32_224", aliases=("vit_l_32",), patch_size=32, **_L)
_variant("vit_huge_patch14_224", aliases=("vit_h_14",), patch_size=14, embed_dim=1280, depth=32, num_heads=16)

# DINOv2 (timm's builds of the facebookresearch/dinov2 checkpoints): 518px (37x37 patches), layer scale 1e-5;
# giant: SwiGLU with hidden int(1536 * 2.66667 * 2) = 8192 packed (4096 after the gate), as timm.
_DINO = dict(image_size=518, patch_size=14, init_values=1e-5)
_G = dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=2.66667 * 2, swiglu=True)
for _reg, _extra in (("", {}), ("reg4_", dict(reg_tokens=4, no_embed_class=True))):
  _variant(f"vit_small_patch14_{_reg}dinov2", **_DINO, **_S, **_extra)
  _variant(f"vit_base_patch14_{_reg}dinov2", **_DINO, **_B, **_extra)
  _variant(f"vit_large_patch14_{_reg}dinov2", **_DINO, **_L, **_extra)
  _variant(f"vit_giant_patch14_{_reg}dinov2", **_DINO, **_G, **_extra)

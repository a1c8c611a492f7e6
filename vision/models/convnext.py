"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), laid out exactly as torchvision.

Stem: 4x4/4 conv (with bias) + LayerNorm. Each block: 7x7 depthwise conv, LayerNorm,
Linear 4x expansion, exact (erf) GELU, Linear back, per-channel layer scale
(init 1e-6), drop path at a rate growing linearly from 0 to drop_path_rate over
all blocks. Between stages: LayerNorm + 2x2/2 conv. Head: global average pool,
LayerNorm, Linear. Every LayerNorm has eps 1e-6; it normalises the channel axis,
which in NHWC is simply the last one.
Parameter names mirror torchvision's state_dict: features_0_{0,1} (stem),
features_{2s+1}_{j}/block_{0,2,3,5} + layer_scale (stage s, block j),
features_{2s+2}_{0,1} (downsample), classifier_0 (norm) and classifier_2 (fc).
torchvision stores layer_scale as (C, 1, 1); here it is (C,). Departure: the
classifier bias uses PyTorch's default uniform init instead of zeros.
Stage outputs are sown as 'intermediates/stage{1..4}'.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import ClassifierHead, DropPath, drop_path_rates, remat
from vision.models.registry import register_model

_init = nn.initializers.truncated_normal(0.02)  # torchvision: trunc_normal_(std=0.02), zero bias


def _layer_norm(dtype, name):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


class CNBlock(nn.Module):
  drop_path: float = 0.0
  layer_scale: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    y = nn.Conv(dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=dim, dtype=self.dtype,
                kernel_init=_init, name="block_0")(x)
    y = _layer_norm(self.dtype, "block_2")(y)
    y = nn.Dense(4 * dim, dtype=self.dtype, kernel_init=_init, name="block_3")(y)
    y = nn.gelu(y, approximate=False)  # torch nn.GELU() is the exact form
    y = nn.Dense(dim, dtype=self.dtype, kernel_init=_init, name="block_5")(y)
    gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale), (dim,))
    return x + DropPath(self.drop_path)(gamma.astype(self.dtype) * y, train)


class ConvNeXt(nn.Module):
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  drop_path_rate: float = 0.1  # torchvision's stochastic_depth_prob
  layer_scale: float = 1e-6
  num_classes: int = 1000
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.dims[0], (4, 4), (4, 4), padding=((0, 0), (0, 0)), dtype=self.dtype,
                kernel_init=_init, name="features_0_0")(x.astype(self.dtype))
    x = _layer_norm(self.dtype, "features_0_1")(x)
    rates = iter(drop_path_rates(self.drop_path_rate, sum(self.depths)))
    for s, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if s > 0:
        x = _layer_norm(self.dtype, f"features_{2 * s}_0")(x)
        x = nn.Conv(dim, (2, 2), (2, 2), padding=((0, 0), (0, 0)), dtype=self.dtype, kernel_init=_init,
                    name=f"features_{2 * s}_1")(x)
      block = remat(CNBlock, self.remat)
      for j in range(depth):
        x = block(next(rates), self.layer_scale, self.dtype, name=f"features_{2 * s + 1}_{j}")(x, train)
      self.sow("intermediates", f"stage{s + 1}", x)
    x = _layer_norm(self.dtype, "classifier_0")(jnp.mean(x, axis=(1, 2)))
    return ClassifierHead(self.num_classes, dtype=self.dtype, kernel_init=_init,
                          name_fc="classifier_2")(x, train)


def _variant(name, depths, dims, drop_path_rate):
  def factory(**kw):
    return ConvNeXt(**{"depths": depths, "dims": dims, "drop_path_rate": drop_path_rate, **kw})
  factory.__name__ = name
  factory.__doc__ = f"{name}: depths {depths}, dims {dims}, drop path {drop_path_rate}"
  register_model(factory, default_image_size=224)


# Stochastic depth rates are torchvision's defaults for its ImageNet-1k recipes.
_variant("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1)
_variant("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768), 0.4)
_variant("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.5)
_variant("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.5)

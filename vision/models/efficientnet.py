"""EfficientNet B0-B7 (Tan & Le 2019), laid out exactly as torchvision.

Every variant comes from ONE rule applied to the B0 table: channels scaled by
the width coefficient and rounded to a multiple of 8 (round_filters), repeats
scaled by the depth coefficient and rounded up (round_repeats), plus the
variant's resolution and head dropout. MBConv blocks: 1x1 expand, depthwise
kxk, squeeze-excite (SiLU, sigmoid; squeeze width = block input / 4), linear
1x1 projection, stochastic depth on the residual branch at a rate that grows
linearly with the block index: 0.2 * i / num_blocks (torchvision's formula,
which never reaches 0.2, unlike layers.drop_path_rates).
As torchvision, B5-B7 use BatchNorm eps 1e-3 / torch momentum 0.01 (they were
ported from TF weights) and B0-B4 PyTorch's defaults.
Parameter names mirror torchvision's state_dict: features_0_{0,1} (stem),
features_{s}_{j}/block_{k}[_{0,1}] (stage s, block j; the SE is block_{k}/fc1,fc2),
features_8_{0,1} (head conv), classifier_1. Departures: B2's default size is the
paper's 260 (torchvision's weights evaluate at 288); the SE convs use flax's
default init and the classifier bias PyTorch's default uniform instead of zeros.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import ClassifierHead, DropPath, SqueezeExcite, remat
from vision.models.mobilenet import conv_bn, make_divisible
from vision.models.registry import register_model

# B0: (expand ratio, kernel, first stride, input channels, output channels, repeats).
_B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
       (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


def round_filters(channels, width_mult):
  return make_divisible(channels * width_mult, 8)


def round_repeats(repeats, depth_mult):
  return int(math.ceil(repeats * depth_mult))


class MBConv(nn.Module):
  expand_ratio: int
  kernel: int
  stride: int
  out_channels: int
  drop_path: float = 0.0
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    def cbn(y, features, kernel, stride=1, groups=1, act=None, *, name):
      return conv_bn(y, features, kernel, stride, groups, act, train=train, name=name, dtype=self.dtype,
                     bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)
    inp = x.shape[-1]
    expanded = make_divisible(inp * self.expand_ratio, 8)
    y, k = x, 0
    if expanded != inp:
      y = cbn(y, expanded, 1, act=nn.silu, name="block_0")
      k = 1
    y = cbn(y, expanded, self.kernel, self.stride, groups=expanded, act=nn.silu, name=f"block_{k}")
    y = SqueezeExcite(max(1, inp // 4), activation=nn.silu, dtype=self.dtype, name=f"block_{k + 1}")(y)
    y = cbn(y, self.out_channels, 1, name=f"block_{k + 2}")
    if self.stride == 1 and inp == self.out_channels:
      return x + DropPath(self.drop_path)(y, train)
    return y


class EfficientNet(nn.Module):
  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout: float = 0.2
  drop_path_rate: float = 0.2  # torchvision's stochastic_depth_prob
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9  # flax convention: 1 - torch momentum
  num_classes: int = 1000
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)
    stages = [(t, k, s, round_filters(c_out, self.width_mult), round_repeats(n, self.depth_mult))
              for t, k, s, _, c_out, n in _B0]
    x = conv_bn(x.astype(self.dtype), round_filters(_B0[0][3], self.width_mult), 3, 2, act=nn.silu,
                train=train, name="features_0", dtype=self.dtype, **bn)
    total = sum(n for *_, n in stages)
    block_id, level = 0, 1
    for i, (t, k, s, c_out, n) in enumerate(stages, start=1):
      for j in range(n):
        stride = s if j == 0 else 1
        if stride == 2:
          self.sow("intermediates", f"stage{level}", x)
          level += 1
        x = remat(MBConv, self.remat)(t, k, stride, c_out, self.drop_path_rate * block_id / total, dtype=self.dtype,
                   name=f"features_{i}_{j}", **bn)(x, train)
        block_id += 1
    x = conv_bn(x, 4 * x.shape[-1], 1, act=nn.silu, train=train, name=f"features_{len(stages) + 1}",
                dtype=self.dtype, **bn)
    self.sow("intermediates", f"stage{level}", x)
    # torchvision: U(-1/sqrt(fan_out), 1/sqrt(fan_out)) for the classifier weight.
    return ClassifierHead(self.num_classes, self.dropout, self.dtype,
                          nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform"),
                          name_fc="classifier_1")(x, train)


def _variant(name, width_mult, depth_mult, resolution, dropout, **defaults):
  def factory(**kw):
    return EfficientNet(**{"width_mult": width_mult, "depth_mult": depth_mult, "dropout": dropout,
                           **defaults, **kw})
  factory.__name__ = name
  factory.__doc__ = f"{name}: width x{width_mult}, depth x{depth_mult}, {resolution}px, dropout {dropout}"
  register_model(factory, default_image_size=resolution, width_mult=width_mult, depth_mult=depth_mult,
                 dropout=dropout)


_TF_BN = dict(bn_eps=1e-3, bn_momentum=0.99)
# (width, depth, resolution, dropout) from the paper (Table 1 / official code) and torchvision.
_variant("efficientnet_b0", 1.0, 1.0, 224, 0.2)
_variant("efficientnet_b1", 1.0, 1.1, 240, 0.2)
_variant("efficientnet_b2", 1.1, 1.2, 260, 0.3)
_variant("efficientnet_b3", 1.2, 1.4, 300, 0.3)
_variant("efficientnet_b4", 1.4, 1.8, 380, 0.4)
_variant("efficientnet_b5", 1.6, 2.2, 456, 0.4, **_TF_BN)
_variant("efficientnet_b6", 1.8, 2.6, 528, 0.5, **_TF_BN)
_variant("efficientnet_b7", 2.0, 3.1, 600, 0.5, **_TF_BN)

"""ResNet v1.5 (He et al. 2016; torchvision layout: stride on the 3x3 conv), ResNeXt, Wide ResNet.

The parameter tree mirrors torchvision's state_dict (conv1, bn1, layer{i}_{j}
with conv1..3/bn1..3/downsample_conv/downsample_bn, fc) so weight import is a
rename plus a transpose. Padding is explicit and symmetric, as in PyTorch, so
that outputs match torchvision exactly. Stage outputs are sown as
'intermediates/stage{1..4}'.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import (BatchNorm, ClassifierHead, DropPath, SqueezeExcite, conv_kernel_init,
                                  drop_path_rates, remat)
from vision.models.registry import register_model


def _conv(features, kernel, stride=1, groups=1, dtype=jnp.float32, name=None):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False, dtype=dtype,
                 kernel_init=conv_kernel_init, name=name)


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  drop_path: float = 0.0
  zero_init_residual: bool = False
  dtype: jnp.dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    y = nn.relu(norm(name="bn1")(_conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(x)))
    y = _conv(self.planes, 3, dtype=self.dtype, name="conv2")(y)
    y = norm(name="bn2", scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
    return nn.relu(_shortcut(self, x, self.planes, train) + DropPath(self.drop_path)(y, train))


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  drop_path: float = 0.0
  zero_init_residual: bool = False
  se_reduction: int = 0  # > 0: squeeze-and-excitation after bn3 (SENet, Hu et al. 2018)
  dtype: jnp.dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    width = int(self.planes * (self.base_width / 64.0)) * self.groups
    out = self.planes * self.expansion
    y = nn.relu(norm(name="bn1")(_conv(width, 1, dtype=self.dtype, name="conv1")(x)))
    y = nn.relu(norm(name="bn2")(_conv(width, 3, self.stride, self.groups, self.dtype, name="conv2")(y)))
    y = _conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = norm(name="bn3", scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
    if self.se_reduction:
      # timm rounds out/16 to a multiple of 8; for every width used here that is exactly out/16.
      y = SqueezeExcite(out // self.se_reduction, dtype=self.dtype, name="se")(y)
    return nn.relu(_shortcut(self, x, out, train) + DropPath(self.drop_path)(y, train))


def _shortcut(block, x, out_features, train):
  if block.stride == 1 and x.shape[-1] == out_features:
    return x
  y = _conv(out_features, 1, block.stride, dtype=block.dtype, name="downsample_conv")(x)
  return BatchNorm(use_running_average=not train, dtype=block.dtype, name="downsample_bn")(y)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block: str = "bottleneck"  # 'basic' or 'bottleneck'
  num_classes: int = 1000
  groups: int = 1
  width_per_group: int = 64
  stem: str = "imagenet"  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'cifar': one 3x3/1 conv
  drop_path_rate: float = 0.0
  zero_init_residual: bool = False
  se_reduction: int = 0  # bottleneck blocks only; 16 gives SE-ResNet / SE-ResNeXt
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = _conv(64, 7, 2, dtype=self.dtype, name="conv1")(x)
    elif self.stem == "cifar":
      x = _conv(64, 3, 1, dtype=self.dtype, name="conv1")(x)
    else:
      raise ValueError(f"unknown stem {self.stem!r}: use 'imagenet' or 'cifar'")
    x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    block_cls = {"basic": remat(BasicBlock, self.remat),
                 "bottleneck": functools.partial(remat(Bottleneck, self.remat), se_reduction=self.se_reduction)}[
        self.block]
    rates = iter(drop_path_rates(self.drop_path_rate, sum(self.stage_sizes)))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = block_cls(64 * 2**i, stride=2 if (i > 0 and j == 0) else 1, groups=self.groups,
                      base_width=self.width_per_group, drop_path=next(rates),
                      zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                      name=f"layer{i + 1}_{j}")(x, train)
      self.sow("intermediates", f"stage{i + 1}", x)
    return ClassifierHead(self.num_classes, dtype=self.dtype)(x, train)


def _variant(name, stage_sizes, block, **defaults):
  def factory(**kw):
    return ResNet(stage_sizes=stage_sizes, block=block, **{**defaults, **kw})
  factory.__name__ = name
  factory.__doc__ = f"{name}: stages {stage_sizes}, {block} blocks, {defaults or 'defaults'}"
  register_model(factory, default_image_size=224)


_variant("resnet18", (2, 2, 2, 2), "basic")
_variant("resnet34", (3, 4, 6, 3), "basic")
_variant("resnet50", (3, 4, 6, 3), "bottleneck")
_variant("resnet101", (3, 4, 23, 3), "bottleneck")
_variant("resnet152", (3, 8, 36, 3), "bottleneck")
_variant("resnext50_32x4d", (3, 4, 6, 3), "bottleneck", groups=32, width_per_group=4)
_variant("resnext101_32x8d", (3, 4, 23, 3), "bottleneck", groups=32, width_per_group=8)
_variant("wide_resnet50_2", (3, 4, 6, 3), "bottleneck", width_per_group=128)
_variant("wide_resnet101_2", (3, 4, 23, 3), "bottleneck", width_per_group=128)

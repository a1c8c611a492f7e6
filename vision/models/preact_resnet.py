"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks") and
Wide ResNet for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

Every residual unit is BN-ReLU-conv (x2 basic, x3 bottleneck) added to an untouched
identity; the network ends with BN-ReLU before pooling. Where a unit changes shape, the
1x1 projection shortcut (no BN) reads the pre-activated input, as in the authors' code.

- preact_resnet18/50: ImageNet layout exactly as timm's resnetv2_18/resnetv2_50 (7x7/2 conv
  stem without BN, 3x3/2 max pool, stride on the 3x3 conv). 11,687,720 / 25,549,352 params,
  equal to `timm.create_model('resnetv2_18'/'resnetv2_50')`. kuangliu's PreActResNet18 is the
  CIFAR layout without the final BN, so its counts differ.
- resnet164/resnet1001: CIFAR bottleneck nets of KaimingHe/resnet-1k-layers (depth 9n+2, stem
  3x3 conv to 16, stages of 64/128/256 output channels, stride on the first 1x1 conv as there).
  1,703,258 / 10,327,706 params at 10 classes (paper: 1.7M / 10.2M; equal to pytorchcv's
  preresnet164bn_cifar10 / preresnet1001_cifar10).
- wide_resnet28_10: basic pre-act units of width 160/320/640, optional dropout between the two
  convs (paper 0.3, here `dropout_rate` default 0.0); 36,479,194 params at 10 classes (paper 36.5M;
  equal to pytorchcv's wrn28_10_cifar10), convs without bias as in szagoruyko/wide-residual-networks.

The CIFAR variants keep the zoo-wide num_classes=1000 default (1,957,688 / 10,582,136 /
37,113,784 params there); pass num_classes=10 or 100. `dropout_rate` also works in bottleneck
units (before conv3); `drop_path_rate` decays linearly with depth (layers.drop_path_rates).

Parameter names follow timm's ResNetV2 state_dict (stem_conv, stages_{i}_blocks_{j} with
norm1..3/conv1..3/downsample_conv, norm, head_fc); timm's head.fc is a 1x1 conv, here a Dense.
Stage outputs are sown as 'intermediates/stage{i}'; the last one after the final BN-ReLU,
like timm's feature_info for ResNetV2.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import BatchNorm, ClassifierHead, DropPath, drop_path_rates, remat
from vision.models.registry import register_model
from vision.models.resnet import _conv


class PreActBasic(nn.Module):
  features: int
  stride: int = 1
  dropout_rate: float = 0.0
  drop_path: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    x_pre = nn.relu(norm(name="norm1")(x))
    shortcut = _preact_shortcut(self, x, x_pre)
    y = _conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x_pre)
    y = nn.relu(norm(name="norm2")(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    return shortcut + DropPath(self.drop_path)(y, train)


class PreActBottleneck(nn.Module):
  features: int  # output channels; the bottleneck is features // 4 wide
  stride: int = 1
  stride_in_1x1: bool = False  # the CIFAR reference code strides the first 1x1 conv
  dropout_rate: float = 0.0
  drop_path: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    width = self.features // 4
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    x_pre = nn.relu(norm(name="norm1")(x))
    shortcut = _preact_shortcut(self, x, x_pre)
    y = _conv(width, 1, s1, dtype=self.dtype, name="conv1")(x_pre)
    y = nn.relu(norm(name="norm2")(y))
    y = _conv(width, 3, s3, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(norm(name="norm3")(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _conv(self.features, 1, dtype=self.dtype, name="conv3")(y)
    return shortcut + DropPath(self.drop_path)(y, train)


def _preact_shortcut(block, x, x_pre):
  if block.stride == 1 and x.shape[-1] == block.features:
    return x
  return _conv(block.features, 1, block.stride, dtype=block.dtype, name="downsample_conv")(x_pre)


class PreActResNet(nn.Module):
  stage_sizes: Sequence[int]
  widths: Sequence[int]  # output channels of each stage's units
  block: str = "bottleneck"  # 'basic' or 'bottleneck'
  num_classes: int = 1000
  stem: str = "imagenet"  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'cifar': one 3x3/1 conv
  stem_width: int = 64
  stride_in_1x1: bool = False
  dropout_rate: float = 0.0  # inside each unit, before its last conv (WRN)
  drop_path_rate: float = 0.0
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = _conv(self.stem_width, 7, 2, dtype=self.dtype, name="stem_conv")(x)
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = _conv(self.stem_width, 3, 1, dtype=self.dtype, name="stem_conv")(x)
    else:
      raise ValueError(f"unknown stem {self.stem!r}: use 'imagenet' or 'cifar'")
    if self.block == "basic":
      make = functools.partial(remat(PreActBasic, self.remat), dropout_rate=self.dropout_rate, dtype=self.dtype)
    elif self.block == "bottleneck":
      make = functools.partial(remat(PreActBottleneck, self.remat), stride_in_1x1=self.stride_in_1x1,
                               dropout_rate=self.dropout_rate, dtype=self.dtype)
    else:
      raise ValueError(f"unknown block {self.block!r}: use 'basic' or 'bottleneck'")
    rates = iter(drop_path_rates(self.drop_path_rate, sum(self.stage_sizes)))
    last = len(self.stage_sizes) - 1
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = make(width, stride=2 if (i > 0 and j == 0) else 1, drop_path=next(rates),
                 name=f"stages_{i}_blocks_{j}")(x, train)
      if i < last:
        self.sow("intermediates", f"stage{i + 1}", x)
    # Pre-activation leaves the last unit's sum un-normalised: one more BN-ReLU before the head.
    x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="norm")(x))
    self.sow("intermediates", f"stage{last + 1}", x)
    return ClassifierHead(self.num_classes, dtype=self.dtype, name_fc="head_fc")(x, train)


@register_model(default_image_size=224)
def preact_resnet18(**kw):
  """timm resnetv2_18: 11,687,720 params."""
  return PreActResNet(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), block="basic", **kw)


@register_model(default_image_size=224)
def preact_resnet50(**kw):
  """timm resnetv2_50: 25,549,352 params."""
  return PreActResNet(stage_sizes=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), **kw)


def preact_resnet_cifar(depth, **kw):
  """The paper's CIFAR bottleneck family: depth = 9n + 2 (164 -> n=18, 1001 -> n=111)."""
  if (depth - 2) % 9:
    raise ValueError(f"depth must be 9n+2, got {depth}")
  n = (depth - 2) // 9
  kw = {"stem": "cifar", "stem_width": 16, "stride_in_1x1": True, **kw}
  return PreActResNet(stage_sizes=(n, n, n), widths=(64, 128, 256), **kw)


def wide_resnet_cifar(depth, widen_factor, **kw):
  """WRN-depth-k for CIFAR: depth = 6n + 4, stage widths 16k/32k/64k."""
  if (depth - 4) % 6:
    raise ValueError(f"depth must be 6n+4, got {depth}")
  n = (depth - 4) // 6
  kw = {"stem": "cifar", "stem_width": 16, **kw}
  return PreActResNet(stage_sizes=(n, n, n), widths=tuple(w * widen_factor for w in (16, 32, 64)),
                      block="basic", **kw)


@register_model(default_image_size=32)
def resnet164(**kw):
  """Paper: 1.7M params on CIFAR-10 (exactly 1,703,258 here at 10 classes)."""
  return preact_resnet_cifar(164, **kw)


@register_model(default_image_size=32)
def resnet1001(**kw):
  """Paper: 10.2M params on CIFAR-10 (exactly 10,327,706 here at 10 classes)."""
  return preact_resnet_cifar(1001, **kw)


@register_model(default_image_size=32)
def wide_resnet28_10(**kw):
  """WRN-28-10. Paper: 36.5M params on CIFAR-10 (exactly 36,479,194 here at 10 classes)."""
  return wide_resnet_cifar(28, 10, **kw)

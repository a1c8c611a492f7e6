"""MobileNet v1 (Howard et al. 2017), v2 (Sandler et al. 2018), v3 (Howard et al. 2019).

v2 and v3 follow torchvision exactly (layout, channel rounding, BatchNorm eps,
parameter names: features_{i} blocks holding conv_{k} / block_{k} children,
classifier_{k}), so weight import is a rename plus a transpose. v1 is not in
torchvision; it follows the paper's Table 1 with BatchNorm + activation after
every conv (Figure 3) and the common PyTorch layout features_{i}_{0,1,3,4} =
depthwise conv, BN, pointwise conv, BN. Two departures from the paper's text,
both as in the authors' TF-slim code and timm's mobilenetv1_100 (whose weights
then load by position): ReLU6 instead of ReLU, and stride 1 for the last
depthwise conv (the table says 2 on an already 7x7 input; no parameter changes).
Channels under the width multiplier are max(8, int(c * alpha)) as in TF-slim.
Known init departures: the SE 1x1 convs use flax's default init (layers.SqueezeExcite)
and head biases use PyTorch's default uniform instead of torchvision's zeros.
Features are sown as 'intermediates/stage{k}' before each stride-2 block and
after the last conv (output strides 2, 4, 8, 16, 32).
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import BatchNorm, ClassifierHead, SqueezeExcite, conv_kernel_init, remat
from vision.models.registry import register_model


def make_divisible(v, divisor=8, min_value=None):
  """Nearest multiple of `divisor` to v, never dropping below 90% of v (torchvision/TF)."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def conv(x, features, kernel, stride=1, groups=1, dtype=jnp.float32, name=None):
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False, dtype=dtype,
                 kernel_init=conv_kernel_init, name=name)(x)


def conv_bn(x, features, kernel, stride=1, groups=1, act=None, *, train, name, dtype=jnp.float32,
            bn_eps=1e-5, bn_momentum=0.9):
  """torchvision's Conv2dNormActivation: params {name}_0 (conv) and {name}_1 (BatchNorm)."""
  x = conv(x, features, kernel, stride, groups, dtype, name=f"{name}_0")
  x = BatchNorm(use_running_average=not train, momentum=bn_momentum, epsilon=bn_eps, dtype=dtype,
                name=f"{name}_1")(x)
  return act(x) if act is not None else x


class MobileNetV1(nn.Module):
  width_multiplier: float = 1.0  # the paper's alpha: 0.25, 0.5, 0.75 or 1.0
  num_classes: int = 1000
  dtype: jnp.dtype = jnp.float32

  # (pointwise output channels, depthwise stride) for the 13 separable layers of Table 1.
  layers = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
            (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

  @nn.compact
  def __call__(self, x, train: bool = False):
    ch = lambda c: max(8, int(c * self.width_multiplier))
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    x = conv_bn(x.astype(self.dtype), ch(32), 3, 2, act=nn.relu6, train=train, name="features_0",
                dtype=self.dtype)
    level = 1
    for i, (out, stride) in enumerate(self.layers, start=1):
      if stride == 2:
        self.sow("intermediates", f"stage{level}", x)
        level += 1
      c = x.shape[-1]
      x = nn.relu6(norm(name=f"features_{i}_1")(
          conv(x, c, 3, stride, groups=c, dtype=self.dtype, name=f"features_{i}_0")))
      x = nn.relu6(norm(name=f"features_{i}_4")(
          conv(x, ch(out), 1, dtype=self.dtype, name=f"features_{i}_3")))
    self.sow("intermediates", f"stage{level}", x)
    return ClassifierHead(self.num_classes, dtype=self.dtype, name_fc="classifier")(x, train)


def _v1_variant(name, alpha):
  def factory(**kw):
    return MobileNetV1(**{"width_multiplier": alpha, **kw})
  factory.__name__ = name
  factory.__doc__ = f"{name}: MobileNet v1, width multiplier {alpha}"
  register_model(factory, default_image_size=224, width_multiplier=alpha)


# Parameters at 1000 classes (BN scale/bias included): 4,231,976 / 2,585,560 / 1,331,592 /
# 470,072; the paper's Table 6-7 give 4.2M / 2.6M / 1.3M / 0.5M (it counts no BN: 4,210,088 at 1.0).
_v1_variant("mobilenet_v1", 1.0)
_v1_variant("mobilenet_v1_075", 0.75)
_v1_variant("mobilenet_v1_050", 0.5)
_v1_variant("mobilenet_v1_025", 0.25)


class InvertedResidualV2(nn.Module):
  out_channels: int
  stride: int
  expand_ratio: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    inp = x.shape[-1]
    hidden = int(round(inp * self.expand_ratio))
    y, k = x, 0
    if self.expand_ratio != 1:
      y = conv_bn(y, hidden, 1, act=nn.relu6, train=train, name="conv_0", dtype=self.dtype)
      k = 1
    y = conv_bn(y, hidden, 3, self.stride, groups=hidden, act=nn.relu6, train=train, name=f"conv_{k}",
                dtype=self.dtype)
    # The linear bottleneck: no activation after the projection (the paper's point).
    y = conv(y, self.out_channels, 1, dtype=self.dtype, name=f"conv_{k + 1}")
    y = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"conv_{k + 2}")(y)
    return x + y if self.stride == 1 and inp == self.out_channels else y


class MobileNetV2(nn.Module):
  width_mult: float = 1.0
  num_classes: int = 1000
  dropout: float = 0.2
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  # (expansion t, channels c, repeats n, first stride s) from the paper's Table 2.
  setting = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv_bn(x.astype(self.dtype), make_divisible(32 * self.width_mult), 3, 2, act=nn.relu6,
                train=train, name="features_0", dtype=self.dtype)
    i, level = 1, 1
    for t, c, n, s in self.setting:
      for j in range(n):
        stride = s if j == 0 else 1
        if stride == 2:
          self.sow("intermediates", f"stage{level}", x)
          level += 1
        x = remat(InvertedResidualV2, self.remat)(make_divisible(c * self.width_mult), stride, t, self.dtype,
                               name=f"features_{i}")(x, train)
        i += 1
    x = conv_bn(x, make_divisible(1280 * max(1.0, self.width_mult)), 1, act=nn.relu6, train=train,
                name=f"features_{i}", dtype=self.dtype)
    self.sow("intermediates", f"stage{level}", x)
    return ClassifierHead(self.num_classes, self.dropout, self.dtype, nn.initializers.normal(0.01),
                          name_fc="classifier_1")(x, train)


@register_model(default_image_size=224)
def mobilenet_v2(**kw):
  """torchvision: 3,504,872 parameters."""
  return MobileNetV2(**kw)


# torchvision's MobileNetV3 BatchNorm: eps 1e-3, torch momentum 0.01.
_V3_BN = dict(bn_eps=1e-3, bn_momentum=0.99)


class InvertedResidualV3(nn.Module):
  kernel: int
  expanded: int
  out_channels: int
  use_se: bool
  activation: str  # 'RE' (ReLU) or 'HS' (hard-swish), the paper's NL column
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = {"RE": nn.relu, "HS": nn.hard_swish}[self.activation]
    cbn = functools.partial(conv_bn, train=train, dtype=self.dtype, **_V3_BN)
    inp = x.shape[-1]
    y, k = x, 0
    if self.expanded != inp:
      y = cbn(y, self.expanded, 1, act=act, name="block_0")
      k = 1
    y = cbn(y, self.expanded, self.kernel, self.stride, groups=self.expanded, act=act, name=f"block_{k}")
    if self.use_se:
      k += 1
      y = SqueezeExcite(make_divisible(self.expanded // 4), activation=nn.relu, gate=nn.hard_sigmoid,
                        dtype=self.dtype, name=f"block_{k}")(y)
    y = cbn(y, self.out_channels, 1, name=f"block_{k + 1}")
    return x + y if self.stride == 1 and inp == self.out_channels else y


# (kernel, expanded, out, SE, activation, stride) from the paper's Tables 1-2 (torchvision's bneck_conf).
_V3_LARGE = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
             (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
             (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
             (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
             (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))
_V3_SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
             (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
             (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
             (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))


class MobileNetV3(nn.Module):
  setting: tuple = _V3_LARGE
  last_channel: int = 1280  # width of the hidden head layer: 1280 (large), 1024 (small)
  width_mult: float = 1.0
  num_classes: int = 1000
  dropout: float = 0.2
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    adjust = lambda c: make_divisible(c * self.width_mult)
    x = conv_bn(x.astype(self.dtype), adjust(16), 3, 2, act=nn.hard_swish, train=train,
                name="features_0", dtype=self.dtype, **_V3_BN)
    level = 1
    for i, (k, exp, out, se, act, stride) in enumerate(self.setting, start=1):
      if stride == 2:
        self.sow("intermediates", f"stage{level}", x)
        level += 1
      x = remat(InvertedResidualV3, self.remat)(k, adjust(exp), adjust(out), se, act, stride, self.dtype,
                             name=f"features_{i}")(x, train)
    x = conv_bn(x, 6 * x.shape[-1], 1, act=nn.hard_swish, train=train,
                name=f"features_{len(self.setting) + 1}", dtype=self.dtype, **_V3_BN)
    self.sow("intermediates", f"stage{level}", x)
    # The head's hidden layer acts on pooled features, so it is a Dense (classifier_0), and
    # its output is the pre-logits (as timm's num_classes=0).
    x = jnp.mean(x, axis=(1, 2))
    x = nn.hard_swish(nn.Dense(adjust(self.last_channel), dtype=self.dtype,
                               kernel_init=nn.initializers.normal(0.01), name="classifier_0")(x))
    return ClassifierHead(self.num_classes, self.dropout, self.dtype, nn.initializers.normal(0.01),
                          name_fc="classifier_3")(x, train)


@register_model(default_image_size=224)
def mobilenet_v3_large(**kw):
  """torchvision: 5,483,032 parameters."""
  return MobileNetV3(**{"setting": _V3_LARGE, "last_channel": 1280, **kw})


@register_model(default_image_size=224)
def mobilenet_v3_small(**kw):
  """torchvision: 2,542,856 parameters."""
  return MobileNetV3(**{"setting": _V3_SMALL, "last_channel": 1024, **kw})

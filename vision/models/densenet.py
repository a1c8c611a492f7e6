"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks"), torchvision layout.

Stem conv0 7x7/2 + norm0 + ReLU + 3x3/2 max pool; dense blocks of
BN-ReLU-1x1 conv (bn_size * growth_rate) - BN-ReLU-3x3 conv (growth_rate) whose
output is concatenated to the input; transitions BN-ReLU-1x1 conv (halving the
channels) - 2x2 average pool; norm5 + ReLU + global pool + classifier.
Parameter counts equal torchvision's (densenet121 7,978,856).

Parameter names follow torchvision's state_dict with '.' -> '_' at the module
level: features_conv0, features_norm0, features_denseblock{i}_denselayer{j}
(norm1, conv1, norm2, conv2), features_transition{i} (norm, conv),
features_norm5, and the head's 'classifier'. Dense block outputs are sown as
'intermediates/stage{1..4}' (the last after norm5 + ReLU).
Departures: the classifier bias uses PyTorch's default uniform init
(torchvision zeroes it); torchvision's memory_efficient checkpointing is not
offered; `remat=True` recomputes each dense layer in the backward pass instead (layers.remat).
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import BatchNorm, ClassifierHead, remat
from vision.models.registry import register_model

# torchvision: nn.init.kaiming_normal_(conv.weight), i.e. fan_in, ReLU gain.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features, kernel, stride=1, dtype=jnp.float32, name=None):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
                 dtype=dtype, kernel_init=_conv_init, name=name)


class DenseLayer(nn.Module):
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    y = _conv(self.bn_size * self.growth_rate, 1, dtype=self.dtype, name="conv1")(nn.relu(norm(name="norm1")(x)))
    y = _conv(self.growth_rate, 3, dtype=self.dtype, name="conv2")(nn.relu(norm(name="norm2")(y)))
    if self.drop_rate:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="norm")(x))
    x = _conv(self.features, 1, dtype=self.dtype, name="conv")(x)
    return nn.avg_pool(x, (2, 2), (2, 2))


class DenseNet(nn.Module):
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0
  num_classes: int = 1000
  remat: bool = False  # recompute each block's activations in the backward pass (layers.remat)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = _conv(self.num_init_features, 7, 2, dtype=self.dtype, name="features_conv0")(x)
    x = nn.relu(norm(name="features_norm0")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, num_layers in enumerate(self.block_config):
      for j in range(num_layers):
        x = remat(DenseLayer, self.remat)(self.growth_rate, self.bn_size, self.drop_rate, self.dtype,
                       name=f"features_denseblock{i + 1}_denselayer{j + 1}")(x, train)
      if i == len(self.block_config) - 1:
        x = nn.relu(norm(name="features_norm5")(x))
      else:
        self.sow("intermediates", f"stage{i + 1}", x)
        x = Transition(x.shape[-1] // 2, self.dtype, name=f"features_transition{i + 1}")(x, train)
    self.sow("intermediates", f"stage{len(self.block_config)}", x)
    return ClassifierHead(self.num_classes, dtype=self.dtype, name_fc="classifier")(x, train)


def _variant(name, growth_rate, block_config, num_init_features):
  def factory(**kw):
    return DenseNet(**{"growth_rate": growth_rate, "block_config": block_config,
                       "num_init_features": num_init_features, **kw})
  factory.__name__ = name
  factory.__doc__ = f"{name}: growth {growth_rate}, blocks {block_config}, stem {num_init_features}"
  register_model(factory, default_image_size=224)


_variant("densenet121", 32, (6, 12, 24, 16), 64)
_variant("densenet161", 48, (6, 12, 36, 24), 96)
_variant("densenet169", 32, (6, 12, 32, 32), 64)
_variant("densenet201", 32, (6, 12, 48, 32), 64)

"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks"), torchvision layout.

Configurations A/B/D/E = vgg11/13/16/19: 3x3 convs (padding 1) with ReLU, 2x2/2
max pools, adaptive average pool to 7x7, then the classifier Linear(25088, 4096)
-> ReLU -> Dropout -> Linear(4096, 4096) -> ReLU -> Dropout -> Linear. The _bn
variants put BatchNorm between each conv and its ReLU (not in the paper; from
torchvision). Parameter counts equal torchvision's (vgg16 138,357,544).

The tree mirrors torchvision's Sequential indices (features_{i} for convs and
BN, classifier_{0,3,6}); fc6 flattens in NCHW order like torch.flatten so
weight import is a rename plus a transpose. Init is torchvision's: kaiming
normal (fan_out) convs, N(0, 0.01) linears, zero biases. The outputs of
each pooling stage are sown as 'intermediates/stage{1..5}'.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vision.models.alexnet import adaptive_avg_pool, flatten_nchw
from vision.models.layers import BatchNorm, conv_kernel_init
from vision.models.registry import register_model

_CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
  cfg: Sequence
  batch_norm: bool = False
  num_classes: int = 1000
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    i, stage = 0, 0
    for v in self.cfg:
      if v == "M":
        x, i, stage = nn.max_pool(x, (2, 2), (2, 2)), i + 1, stage + 1
        self.sow("intermediates", f"stage{stage}", x)
        continue
      x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, kernel_init=conv_kernel_init,
                  name=f"features_{i}")(x)
      if self.batch_norm:
        x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"features_{i + 1}")(x)
      x, i = nn.relu(x), i + (3 if self.batch_norm else 2)
    x = flatten_nchw(adaptive_avg_pool(x, 7))

    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01))
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    x = drop(nn.relu(dense(4096, name="classifier_0")(x)))
    x = nn.relu(dense(4096, name="classifier_3")(x))
    self.sow("intermediates", "pre_logits", x)
    if self.num_classes == 0:
      return x
    return dense(self.num_classes, name="classifier_6")(drop(x))


def _variant(name, cfg, batch_norm):
  def factory(**kw):
    return VGG(cfg=cfg, batch_norm=batch_norm, **kw)
  factory.__name__ = name
  factory.__doc__ = f"{name}: torchvision VGG {'with' if batch_norm else 'without'} BatchNorm"
  register_model(factory, default_image_size=224)


for _name, _cfg in _CFGS.items():
  _variant(_name, _cfg, False)
  _variant(_name + "_bn", _cfg, True)

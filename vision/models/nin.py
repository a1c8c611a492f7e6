"""Network in Network (Lin, Chen & Yan, ICLR 2014), the CIFAR-10 model.

Layout source: the authors' Caffe model-zoo definition (cifar10_nin.prototxt,
linked from the paper's Caffe release), whose layer names we keep:

  conv1 192@5x5 -> cccp1 160@1x1 -> cccp2 96@1x1 -> 3x3/2 max pool -> dropout 0.5
  conv2 192@5x5 -> cccp3 192@1x1 -> cccp4 192@1x1 -> 3x3/2 avg pool -> dropout 0.5
  conv3 192@3x3 -> cccp5 192@1x1 -> cccp6 10@1x1 -> global average pool

every conv followed by ReLU, including cccp6 (the prototxt's relu_cccp6: the
"confidence maps" are non-negative and global average pooling makes them the
logits, with no fully-connected layer). Pools use Caffe's ceil rounding, so
32x32 -> 16x16 -> 8x8 and the average pool divides by the in-image pixels only.
966,986 parameters at 10 classes:
  conv1 14,592  cccp1 30,880  cccp2 15,456  conv2 460,992  cccp3 37,056
  cccp4 37,056  conv3 331,968  cccp5 37,056  cccp6 1,930 (192*10+10)
and 1,158,056 at 1000 classes. num_classes=0 drops cccp6 and returns the
average-pooled cccp5 maps (192 features), which are also sown as 'pre_logits'.
Departure: He-normal init (fan_out) with zero biases instead of the prototxt's
hand-tuned Gaussians (std 0.05/0.01), which needs no per-layer tuning.
"""
import flax.linen as nn
import jax.numpy as jnp

from vision.models.alexnet import ceil_mode_padding
from vision.models.layers import conv_kernel_init
from vision.models.registry import register_model


class NIN(nn.Module):
  num_classes: int = 10
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    def conv(y, features, kernel, name):
      p = kernel // 2
      return nn.relu(nn.Conv(features, (kernel, kernel), padding=((p, p), (p, p)), dtype=self.dtype,
                             kernel_init=conv_kernel_init, name=name)(y))

    x = x.astype(self.dtype)
    x = conv(conv(conv(x, 192, 5, "conv1"), 160, 1, "cccp1"), 96, 1, "cccp2")
    x = nn.max_pool(x, (3, 3), (2, 2), padding=ceil_mode_padding(x, 3, 2))
    self.sow("intermediates", "stage1", x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = conv(conv(conv(x, 192, 5, "conv2"), 192, 1, "cccp3"), 192, 1, "cccp4")
    x = nn.avg_pool(x, (3, 3), (2, 2), padding=ceil_mode_padding(x, 3, 2), count_include_pad=False)
    self.sow("intermediates", "stage2", x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = conv(conv(x, 192, 3, "conv3"), 192, 1, "cccp5")
    self.sow("intermediates", "stage3", x)
    self.sow("intermediates", "pre_logits", jnp.mean(x, axis=(1, 2)))
    if self.num_classes == 0:
      return jnp.mean(x, axis=(1, 2))
    return jnp.mean(conv(x, self.num_classes, 1, "cccp6"), axis=(1, 2))


@register_model(default_image_size=32)
def nin_cifar(**kw):
  """NIN for 32x32 CIFAR-10 (10 classes by default)."""
  return NIN(**kw)

"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

32x32 input: C1 conv 6@5x5 -> S2 2x2 average pool -> C3 conv 16@5x5 -> S4 pool
-> C5 conv 120@5x5 (1x1 output) -> F6 dense 84 -> output dense.
Departures from the paper, as in most modern re-implementations: C3 connects to
all six S2 maps (the paper used a sparse table, 1,516 weights instead of 2,416),
subsampling has no trainable coefficient, and the output is a plain linear
layer with softmax cross-entropy instead of Euclidean RBF units. Activation is
tanh by default (the paper's squashing function up to scale); relu is an option.
At 10 classes: 61,706 parameters.
"""
import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import torch_bias_init, torch_linear_init
from vision.models.registry import register_model


class LeNet5(nn.Module):
  num_classes: int = 10
  activation: str = "tanh"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = {"tanh": jnp.tanh, "relu": nn.relu}[self.activation]
    conv = lambda f, name, fan_in: nn.Conv(f, (5, 5), padding="VALID", dtype=self.dtype, name=name,
                                           kernel_init=torch_linear_init, bias_init=torch_bias_init(fan_in))
    x = act(conv(6, "c1", 25 * x.shape[-1])(x))
    self.sow("intermediates", "stage1", x)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = act(conv(16, "c3", 25 * 6)(x))
    self.sow("intermediates", "stage2", x)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = act(conv(120, "c5", 25 * 16)(x))
    x = x.reshape(x.shape[0], -1)
    x = act(nn.Dense(84, dtype=self.dtype, name="f6", kernel_init=torch_linear_init,
                     bias_init=torch_bias_init(120))(x))
    self.sow("intermediates", "pre_logits", x)
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, name="output", kernel_init=torch_linear_init,
                    bias_init=torch_bias_init(84))(x)


@register_model(default_image_size=32, in_channels=1)
def lenet5(**kw):
  return LeNet5(**kw)

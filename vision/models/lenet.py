"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

32x32 input: C1 conv 6@5x5 -> S2 2x2 subsampling -> C3 conv 16@5x5 -> S4
subsampling -> C5 conv 120@5x5 (1x1 output) -> F6 dense 84 -> output.

- lenet5: the usual modern re-implementation. C3 connects to all six S2 maps
  (2,416 weights), subsampling is a plain 2x2 average, activation tanh (relu
  optional), PyTorch's default init. 61,706 parameters at 10 classes.
- lenet5_paper: the paper's network as Section II.B describes it. C3 uses the
  sparse connection table (Table I: maps 0-5 see three contiguous S2 maps,
  6-11 four contiguous, 12-14 four discontinuous, 15 all six; 1,516 weights),
  S2/S4 add their four inputs, multiply by a trainable coefficient and add a
  trainable bias per map (12 and 32 weights), every layer but the output is
  followed by the squashing function f(a) = 1.7159 tanh(2a/3) (Appendix A),
  and weights start uniform in +-2.4 / fan-in (Appendix C). Its
  units, connections and weights equal the paper's counts layer by layer
  (tests/test_summary.py). 60,850 parameters at 10 classes.
  Departure: the output is a linear layer trained with softmax cross-entropy,
  not the paper's Euclidean RBF units with hand-designed 7x12 bitmaps.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vision.models.layers import torch_bias_init, torch_linear_init
from vision.models.registry import register_model

# Table I of the paper: the S2 maps each C3 map sees, grouped by how many (one grouped conv per group).
C3_TABLE = ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
            (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
            (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
            (0, 1, 2, 3, 4, 5))


def squash(a):
  """LeCun et al. 1998, Appendix A: A tanh(S a) with A = 1.7159, S = 2/3."""
  return 1.7159 * jnp.tanh(a * (2.0 / 3.0))


def _paper_init(fan_in):
  """Appendix C: uniform in [-2.4 / F, 2.4 / F], F the number of inputs of the unit."""
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -2.4 / fan_in, 2.4 / fan_in)


class Subsampling(nn.Module):
  """S2/S4: (sum of a 2x2 window) x coefficient + bias, one coefficient and bias per map.

  Written as a depthwise 2x2/2 convolution whose taps all equal the map's
  coefficient, so it counts as 4 multiply-adds + 1 bias per unit (the paper's
  5 connections) and owns 2 weights per map.
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    coefficient = self.param("coefficient", _paper_init(4), (c,))
    bias = self.param("bias", _paper_init(4), (c,))
    kernel = jnp.broadcast_to(coefficient, (2, 2, 1, c)).astype(self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c)
    return y + bias.astype(self.dtype)


class SparseC3(nn.Module):
  """C3 with Table I's connections: one grouped 5x5 conv per fan-in group (3, 4 and 6 input maps)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    outputs = []
    for g, k in enumerate((3, 4, 6)):
      maps = [m for m in C3_TABLE if len(m) == k]
      # Gather each output map's inputs side by side so that a grouped conv sees exactly them.
      gathered = x[..., [i for m in maps for i in m]]
      kernel = self.param(f"kernel_{k}", _paper_init(25 * k), (5, 5, k, len(maps)))
      outputs.append(jax.lax.conv_general_dilated(gathered, kernel.astype(self.dtype), (1, 1), "VALID",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                  feature_group_count=len(maps)))
    bias = self.param("bias", nn.initializers.zeros, (len(C3_TABLE),))
    return jnp.concatenate(outputs, axis=-1) + bias.astype(self.dtype)


class LeNet5(nn.Module):
  num_classes: int = 10
  activation: str = "tanh"  # 'tanh', 'relu' or 'squash' (the paper's 1.7159 tanh(2a/3))
  paper: bool = False  # the paper's sparse C3, trainable subsampling and init (see the module docstring)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = {"tanh": jnp.tanh, "relu": nn.relu, "squash": squash}[self.activation]
    x = x.astype(self.dtype)

    def conv(f, name, fan_in):
      kernel_init, bias_init = ((_paper_init(fan_in), nn.initializers.zeros) if self.paper
                                else (torch_linear_init, torch_bias_init(fan_in)))
      return nn.Conv(f, (5, 5), padding="VALID", dtype=self.dtype, name=name, kernel_init=kernel_init,
                     bias_init=bias_init)

    def dense(f, name, fan_in):
      kernel_init, bias_init = ((_paper_init(fan_in), nn.initializers.zeros) if self.paper
                                else (torch_linear_init, torch_bias_init(fan_in)))
      return nn.Dense(f, dtype=self.dtype, name=name, kernel_init=kernel_init, bias_init=bias_init)

    def pool(y, name):
      return act(Subsampling(self.dtype, name=name)(y)) if self.paper else nn.avg_pool(y, (2, 2), (2, 2))

    x = act(conv(6, "c1", 25 * x.shape[-1])(x))
    self.sow("intermediates", "stage1", x)
    x = pool(x, "s2")
    x = act(SparseC3(self.dtype, name="c3")(x) if self.paper else conv(16, "c3", 25 * 6)(x))
    self.sow("intermediates", "stage2", x)
    x = pool(x, "s4")
    x = act(conv(120, "c5", 25 * 16)(x))
    x = x.reshape(x.shape[0], -1)
    x = act(dense(84, "f6", 120)(x))
    self.sow("intermediates", "pre_logits", x)
    if self.num_classes == 0:
      return x
    return dense(self.num_classes, "output", 84)(x)


@register_model(default_image_size=32, in_channels=1)
def lenet5(**kw):
  """Modern LeNet-5: full C3, average pooling, tanh."""
  return LeNet5(**kw)


@register_model(default_image_size=32, in_channels=1)
def lenet5_paper(**kw):
  """LeCun et al. 1998's LeNet-5: sparse C3 (Table I), trainable subsampling, scaled tanh, its init."""
  return LeNet5(**{"paper": True, "activation": "squash", **kw})

"""Pieces shared by model families."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision's CNN init: conv weights kaiming-normal on fan_out (ReLU gain).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

# PyTorch BatchNorm2d defaults (momentum 0.1 there is 0.9 here, eps 1e-5).
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


def torch_bias_init(fan_in):
  """PyTorch's default bias init for conv/linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / jnp.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example.

  Survivors are scaled by 1/(1-rate) so the expectation is unchanged; identity
  at eval. Needs the 'dropout' rng in training.
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


def remat(block, enabled: bool = True):
  """`block` (a Module class), or with `enabled` its lifted jax.checkpoint (nn.remat).

  Rematerialisation: the block's activations are recomputed in the backward pass instead of kept from the
  forward, so only its input stays in memory between the two (about one more forward of compute). The
  parameter tree, the outputs and the gradients are the same (tests/test_remat.py). The block is called as
  block(x, train) with `train` positional: it is static (it picks BatchNorm's and dropout's mode).
  """
  return nn.remat(block, static_argnums=(2,)) if enabled else block


def drop_path_rates(max_rate: float, num_blocks: int):
  """Linear decay with depth (Huang et al. 2016): block i gets max_rate * i / (n - 1)."""
  if num_blocks <= 1:
    return [max_rate] * num_blocks
  return [max_rate * i / (num_blocks - 1) for i in range(num_blocks)]


class ClassifierHead(nn.Module):
  """Global average pool (if spatial), optional dropout, then Linear to num_classes.

  Sows 'pre_logits'; with num_classes == 0 returns the pooled features (timm).
  The head shares its parent's scope, so the linear layer sits at the top of the
  parameter tree as `name_fc` ('fc', 'classifier', ...), as in torchvision.
  """
  num_classes: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = torch_linear_init
  name_fc: str = "fc"

  def setup(self):
    nn.share_scope(self, self.parent)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim == 4:
      x = jnp.mean(x, axis=(1, 2))
    self.sow("intermediates", "pre_logits", x)
    if self.num_classes == 0:
      return x
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    fan_in = x.shape[-1]
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=self.kernel_init,
                    bias_init=torch_bias_init(fan_in), name=self.name_fc)(x)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): x * gate(fc2(act(fc1(mean_hw(x))))).

  The two "fc" layers are 1x1 convs with bias, named fc1/fc2 as in torchvision's
  SqueezeExcitation. `gate` is sigmoid by default (hard_sigmoid for MobileNetV3).
  """
  reduced_features: int
  activation: callable = nn.relu
  gate: callable = nn.sigmoid
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.activation(nn.Conv(self.reduced_features, (1, 1), dtype=self.dtype, name="fc1")(s))
    s = self.gate(nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="fc2")(s))
    return x * s

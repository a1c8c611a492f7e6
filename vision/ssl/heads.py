"""DINO's projection head (Caron et al. 2021; DINOv2 layers/dino_head.py).

MLP in -> hidden -> hidden -> bottleneck (GELU between, no BatchNorm), L2
normalisation, then a weight-normalised linear layer without bias to K
prototypes: W = g * v / ||v|| per prototype. Parameter names follow the
release's state_dict (mlp.0, mlp.2, mlp.4, last_layer.weight_g/weight_v) with
Dense kernels in our (in, out) layout, so weight_v is (bottleneck, K) and
weight_g (K,) (torch: (K, bottleneck) and (K, 1)).

Init as the release: MLP weights N(0, 0.02) (trunc_normal with bounds +-2,
i.e. 100 sigma), zero biases; weight_v keeps PyTorch's default Linear init
(the release's init_weights runs before last_layer exists) and g starts at 1.
"""
import flax.linen as nn
import jax.numpy as jnp

from vision.models.layers import torch_linear_init


class DINOHead(nn.Module):
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.normal(0.02)
    dims = [self.hidden_dim] * (self.num_layers - 1) + [self.bottleneck_dim]
    for i, dim in enumerate(dims):
      x = nn.Dense(dim, dtype=self.dtype, kernel_init=init, name=f"mlp_{2 * i}")(x)
      if i < len(dims) - 1:
        x = nn.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    # F.normalize(eps=1e-12) in float32: the bottleneck must be a unit vector for the prototypes' logits
    # to be cosine similarities (times g).
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return WeightNormLinear(self.out_dim, self.dtype, name="last_layer")(x)


class WeightNormLinear(nn.Module):
  """torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False)), dim=0: one norm per output unit."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    v = self.param("weight_v", torch_linear_init, (x.shape[-1], self.features))
    g = self.param("weight_g", nn.initializers.ones, (self.features,))
    w = v * (g / jnp.linalg.norm(v, axis=0))
    return jnp.asarray(x, self.dtype) @ w.astype(self.dtype)

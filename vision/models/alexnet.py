"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2013), one module driven by a layer spec.

- alexnet: torchvision's one-tower layout: convs 64-192-384-256-256, no LRN,
  3x3/2 max pools, adaptive average pool to 6x6, dropout *before* fc6 and fc7.
  61,100,840 parameters at 1000 classes (torchvision).
- alexnet_lrn: the paper's network as a single tower: convs 96-256-384-384-256
  with every connection dense (the paper split conv2/4/5 across two GPUs, i.e.
  groups=2; Caffe's grouped bvlc_alexnet has 60,965,224 parameters), local
  response normalisation after relu1 and relu2 (k=2, n=5, alpha=1e-4,
  beta=0.75), overlapping 3x3/2 max pools, dropout on the *outputs* of fc6 and
  fc7. 62,378,344 parameters at 1000 classes, counted layer by layer:
    conv1 96*3*11*11+96 = 34,944        conv2 256*96*5*5+256 = 614,656
    conv3 384*256*3*3+384 = 885,120     conv4 384*384*3*3+384 = 1,327,488
    conv5 256*384*3*3+256 = 884,992     fc6 256*6*6*4096+4096 = 37,752,832
    fc7 4096*4096+4096 = 16,781,312     fc8 4096*1000+1000 = 4,097,000
  conv1 is padded by 2 so a 224 input gives the paper's 55x55 maps (the
  paper's "224" only fits stride 4 unpadded at 227, as in Caffe).
- zfnet: Zeiler & Fergus Fig. 3: conv1 96@7x7/2 (110x110), 3x3/2 max pool (55),
  contrast norm, conv2 256@5x5/2 (26), 3x3/2 max pool (13), contrast norm,
  then dense conv3-5 as alexnet_lrn, 3x3/2 max pool (6), fc 4096-4096, dropout
  0.5 on fc6/fc7. The paper draws "contrast normalized across feature maps"
  after layers 1 and 2 but gives no constants; we use AlexNet's LRN (the
  network is AlexNet with a smaller first layer, and this norm is parameter
  free). Padding 1 on conv1 and pool1/pool2 reproduces the figure's map sizes.
  62,357,608 parameters: alexnet_lrn with conv1 = 96*3*7*7+96 = 14,208.

Departures common to alexnet_lrn/zfnet: PyTorch's default init (as torchvision's
AlexNet) instead of the papers' N(0, 0.01) with unit biases; an adaptive
average pool to 6x6 before fc6 (identity at 224) so any input size works;
ZFNet's filter-RMS renormalisation is a training-time constraint, not here.

The parameter tree mirrors a torch Sequential (features_{i}, classifier_{i});
fc6 flattens in NCHW order like torch.flatten so importing weights is a rename
plus a transpose. The pooling helpers here are shared with vgg/googlenet/nin.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision.models.layers import torch_bias_init, torch_linear_init
from vision.models.registry import register_model


def _adaptive_pool_matrix(in_size, out_size):
  # PyTorch's AdaptiveAvgPool2d: window i covers [floor(i*in/out), ceil((i+1)*in/out)).
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x, output_size):
  """nn.AdaptiveAvgPool2d on NHWC: exact PyTorch windows (overlapping / repeating) for any input size."""
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  if x.shape[1:3] == (oh, ow):
    return x
  mh = jnp.asarray(_adaptive_pool_matrix(x.shape[1], oh), x.dtype)
  mw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], ow), x.dtype)
  return jnp.einsum("oh,nhwc,pw->nopc", mh, x, mw)


def ceil_mode_padding(x, window, stride, padding=0):
  """Per-spatial-dim (lo, hi) padding that makes a VALID pool behave like PyTorch's ceil_mode=True."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * padding - window) // stride) + 1
    if (out - 1) * stride >= size + padding:  # PyTorch drops a last window starting in the padding
      out -= 1
    pads.append((padding, max(padding, (out - 1) * stride + window - size - padding)))
  return pads


def flatten_nchw(x):
  """torch.flatten(x, 1) order (C, H, W), so Linear weights import with a plain transpose."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
  """Krizhevsky et al. 2012 eq. (3): x / (k + alpha * sum of x^2 over `size` adjacent channels)^beta.

  alpha multiplies the plain sum, as in the paper; torch.nn.LocalResponseNorm
  divides alpha by `size`, so it matches with alpha * size.
  """
  sq = jnp.square(x.astype(jnp.float32))
  half = size // 2
  window_sum = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                     ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
  return (x / jnp.power(k + alpha * window_sum, beta).astype(x.dtype)).astype(x.dtype)


# Layer specs: (features, kernel, stride, padding) is conv + ReLU (two Sequential slots),
# "N" local response norm, ("M", padding) a 3x3/2 max pool.
_TORCHVISION = ((64, 11, 4, 2), ("M", 0), (192, 5, 1, 2), ("M", 0),
                (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), ("M", 0))
_KRIZHEVSKY = ((96, 11, 4, 2), "N", ("M", 0), (256, 5, 1, 2), "N", ("M", 0),
               (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), ("M", 0))
_ZEILER_FERGUS = ((96, 7, 2, 1), ("M", 1), "N", (256, 5, 2, 0), ("M", 1), "N",
                  (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), ("M", 0))


class AlexNet(nn.Module):
  layers: Sequence = _TORCHVISION
  num_classes: int = 1000
  dropout: float = 0.5
  dropout_before_fc: bool = True  # torchvision; False = the paper (dropout on fc6/fc7 outputs)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    i, stage = 0, 0
    for layer in self.layers:
      if layer == "N":
        x, i = local_response_norm(x), i + 1
      elif layer[0] == "M":
        p = layer[1]
        x, i, stage = nn.max_pool(x, (3, 3), (2, 2), padding=((p, p), (p, p))), i + 1, stage + 1
        self.sow("intermediates", f"stage{stage}", x)
      else:
        f, k, s, p = layer
        fan_in = k * k * x.shape[-1]
        x = nn.Conv(f, (k, k), (s, s), padding=((p, p), (p, p)), dtype=self.dtype,
                    kernel_init=torch_linear_init, bias_init=torch_bias_init(fan_in), name=f"features_{i}")(x)
        x, i = nn.relu(x), i + 2
    x = flatten_nchw(adaptive_avg_pool(x, 6))

    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    dense = lambda y, f, idx: nn.Dense(f, dtype=self.dtype, kernel_init=torch_linear_init,
                                       bias_init=torch_bias_init(y.shape[-1]), name=f"classifier_{idx}")(y)
    if self.dropout_before_fc:  # Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
      x = nn.relu(dense(drop(x), 4096, 1))
      x = nn.relu(dense(drop(x), 4096, 4))
      self.sow("intermediates", "pre_logits", x)
    else:  # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
      x = drop(nn.relu(dense(x, 4096, 0)))
      x = nn.relu(dense(x, 4096, 3))
      self.sow("intermediates", "pre_logits", x)
      x = drop(x) if self.num_classes else x
    if self.num_classes == 0:
      return x
    return dense(x, self.num_classes, 6)


@register_model(default_image_size=224)
def alexnet(**kw):
  """torchvision AlexNet (one-tower variant of Krizhevsky 2014 "One weird trick")."""
  return AlexNet(**kw)


@register_model(default_image_size=224)
def alexnet_lrn(**kw):
  """Krizhevsky et al. 2012 as a single dense tower with LRN and overlapping pooling."""
  return AlexNet(**{"layers": _KRIZHEVSKY, "dropout_before_fc": False, **kw})


@register_model(default_image_size=224)
def zfnet(**kw):
  """Zeiler & Fergus 2013, Fig. 3."""
  return AlexNet(**{"layers": _ZEILER_FERGUS, "dropout_before_fc": False, **kw})

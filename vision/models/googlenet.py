"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions"), torchvision variant.

As torchvision (not the paper): every conv is conv(no bias) + BatchNorm(eps 1e-3)
+ ReLU, there is no LRN, and the "5x5" branch uses a 3x3 conv (a known
torchvision quirk kept so its weights import). Max pools use ceil rounding as
torch's ceil_mode=True. 6,624,904 parameters at 1000 classes without the
auxiliary heads, 13,004,888 with them (torchvision googlenet(aux_logits=True)).

Auxiliary classifiers: aux1 (after inception4a) and aux2 (after inception4d)
always exist as parameters when `aux_logits` is True and num_classes > 0, so
checkpoints have one structure; they are only computed in training (and at
init). `__call__` always returns the main logits; in train mode the aux logits
are sown instead of returned, as a tuple (aux1, aux2):

  logits, state = model.apply(variables, x, train=True, rngs={"dropout": rng},
                              mutable=["batch_stats", "intermediates"])
  aux = state["intermediates"].get("aux_logits", ())
  loss = ce(logits, y) + 0.3 * sum(ce(a, y) for a in aux)   # the paper's weight

Eval/inference never pays for them and needs no special casing. Stage outputs
are sown as 'intermediates/stage{1..4}' (strides 4, 8, 16, 32). Init follows
torchvision: N(0, 0.01) conv/linear weights (its trunc_normal(a=-2, b=2) bounds
are absolute, so effectively untruncated). torchvision's `transform_input`
(re-normalising inputs for the ported Google weights) is left to the data side.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from vision.models.alexnet import adaptive_avg_pool, ceil_mode_padding, flatten_nchw
from vision.models.layers import BatchNorm, ClassifierHead, torch_bias_init
from vision.models.registry import register_model

_init = nn.initializers.normal(0.01)


def _max_pool_ceil(x, window, stride, padding=0):
  return nn.max_pool(x, (window, window), (stride, stride), padding=ceil_mode_padding(x, window, stride, padding))


class BasicConv2d(nn.Module):
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    p = self.padding
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), padding=((p, p), (p, p)),
                use_bias=False, dtype=self.dtype, kernel_init=_init, name="conv")(x)
    x = BatchNorm(use_running_average=not train, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class Inception(nn.Module):
  ch1x1: int
  ch3x3red: int
  ch3x3: int
  ch5x5red: int
  ch5x5: int
  pool_proj: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(self.ch1x1, 1, name="branch1")(x, train)
    b2 = conv(self.ch3x3red, 1, name="branch2_0")(x, train)
    b2 = conv(self.ch3x3, 3, padding=1, name="branch2_1")(b2, train)
    b3 = conv(self.ch5x5red, 1, name="branch3_0")(x, train)
    b3 = conv(self.ch5x5, 3, padding=1, name="branch3_1")(b3, train)  # 3x3, as torchvision
    b4 = conv(self.pool_proj, 1, name="branch4_1")(_max_pool_ceil(x, 3, 1, 1), train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  num_classes: int
  dropout: float = 0.7
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = BasicConv2d(128, 1, dtype=self.dtype, name="conv")(adaptive_avg_pool(x, 4), train)
    x = flatten_nchw(x)
    x = nn.relu(nn.Dense(1024, dtype=self.dtype, kernel_init=_init, bias_init=torch_bias_init(x.shape[-1]),
                         name="fc1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_init, bias_init=torch_bias_init(1024),
                    name="fc2")(x)


# (name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj); ("M", k) = kxk/2 ceil-mode max pool
# (torchvision's maxpool3 is 3x3, maxpool4 2x2).
_BLOCKS = (
    ("inception3a", 64, 96, 128, 16, 32, 32), ("inception3b", 128, 128, 192, 32, 96, 64), ("M", 3),
    ("inception4a", 192, 96, 208, 16, 48, 64), ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64), ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128), ("M", 2),
    ("inception5a", 256, 160, 320, 32, 128, 128), ("inception5b", 384, 192, 384, 48, 128, 128),
)
_AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}
_STAGE_AFTER = {"inception3b": "stage2", "inception4e": "stage3", "inception5b": "stage4"}


class GoogLeNet(nn.Module):
  num_classes: int = 1000
  aux_logits: bool = True
  dropout: float = 0.2
  dropout_aux: float = 0.7
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = _max_pool_ceil(conv(64, 7, 2, 3, name="conv1")(x, train), 3, 2)
    x = conv(192, 3, padding=1, name="conv3")(conv(64, 1, name="conv2")(x, train), train)
    self.sow("intermediates", "stage1", x)
    x = _max_pool_ceil(x, 3, 2)
    with_aux = self.aux_logits and self.num_classes > 0 and (train or self.is_initializing())
    for block in _BLOCKS:
      if block[0] == "M":
        x = _max_pool_ceil(x, block[1], 2)
        continue
      name, *channels = block
      x = Inception(*channels, dtype=self.dtype, name=name)(x, train)
      if name in _AUX_AFTER and with_aux:
        aux = InceptionAux(self.num_classes, self.dropout_aux, self.dtype, name=_AUX_AFTER[name])(x, train)
        if train:
          self.sow("intermediates", "aux_logits", aux)
      if name in _STAGE_AFTER:
        self.sow("intermediates", _STAGE_AFTER[name], x)
    return ClassifierHead(self.num_classes, dropout=self.dropout, dtype=self.dtype, kernel_init=_init,
                          name_fc="fc")(x, train)


@register_model(default_image_size=224)
def googlenet(**kw):
  """Inception v1 with BatchNorm (torchvision); aux heads sown in training."""
  return GoogLeNet(**kw)

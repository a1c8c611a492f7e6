"""Rematerialisation (`remat=True`, vision/models/layers.py:remat): same parameters, outputs and gradients,
far fewer bytes kept from the forward pass for the backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision.errors import UserError
from vision.models import create_model
from vision.models.convnext import ConvNeXt
from vision.models.densenet import DenseNet
from vision.models.efficientnet import EfficientNet
from vision.models.mobilenet import MobileNetV2, MobileNetV3
from vision.models.preact_resnet import PreActResNet
from vision.models.resnet import ResNet
from vision.models.swin import SwinTransformer
from vision.models.vit import VisionTransformer
from vision.tools import bench

# Tiny members of every family with blocks; each has what a lifted checkpoint must carry through: BatchNorm
# statistics (mutated in training), dropout / drop path rngs, layer scale, shifted-window masks, SE gates.
TINY = {
    "resnet": (lambda r: ResNet(stage_sizes=(1, 1), block="bottleneck", stem="cifar", drop_path_rate=0.2,
                                num_classes=4, remat=r), 16),
    "preact": (lambda r: PreActResNet(stage_sizes=(1, 1), widths=(8, 16), block="basic", stem="cifar",
                                      dropout_rate=0.2, num_classes=4, remat=r), 16),
    "vit": (lambda r: VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                                        init_values=1e-5, drop_path_rate=0.2, num_classes=4, remat=r), 16),
    "swin": (lambda r: SwinTransformer(depths=(2,), num_heads=(2,), embed_dim=8, window_size=2, dropout=0.1,
                                       num_classes=4, remat=r), 16),
    "convnext": (lambda r: ConvNeXt(depths=(1, 1), dims=(8, 16), num_classes=4, remat=r), 16),
    "densenet": (lambda r: DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, drop_rate=0.2,
                                    num_classes=4, remat=r), 32),
    "efficientnet": (lambda r: EfficientNet(width_mult=0.25, depth_mult=0.2, num_classes=4, remat=r), 32),
    "mobilenet_v2": (lambda r: MobileNetV2(width_mult=0.25, num_classes=4, remat=r), 32),
    "mobilenet_v3": (lambda r: MobileNetV3(width_mult=0.25, num_classes=4, remat=r), 32),
}


def _images(size, batch=2):
  return jax.random.normal(jax.random.key(1), (batch, size, size, 3))


@pytest.mark.parametrize("family", sorted(TINY))
def test_remat_keeps_the_parameter_tree(family):
  make, size = TINY[family]
  shapes = [jax.eval_shape(lambda: make(r).init(jax.random.key(0), _images(size), train=False)) for r in (False, True)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])  # same names: checkpoints and imports fit
  assert [x.shape for x in jax.tree.leaves(shapes[0])] == [x.shape for x in jax.tree.leaves(shapes[1])]


def _train_grads(model, variables, x):
  def loss(params):
    out, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(3)})
    return jnp.sum(out ** 2), updates
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])


@pytest.mark.parametrize("family", ["resnet", "vit", "swin", "densenet"])
def test_remat_gives_the_same_loss_gradients_and_batch_statistics(family):
  make, size = TINY[family]
  x = _images(size)
  variables = make(False).init(jax.random.key(0), x, train=False)
  (loss, updates), grads = _train_grads(make(False), variables, x)
  (loss_r, updates_r), grads_r = _train_grads(make(True), variables, x)
  # The same dropout / drop path draws (the rng is replayed in the recomputation), so equal up to rounding.
  np.testing.assert_allclose(loss_r, loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  assert jax.tree.structure(updates) == jax.tree.structure(updates_r)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(updates_r)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(make(True).apply(variables, x) - make(False).apply(variables, x)).max()) < 1e-5


def _saved(name, remat, batch=8):
  """Bytes the train step's loss keeps for the backward pass (bench --saved-only: jax.eval_shape, no compile)."""
  return bench.bench(name, batch, saved_only=True, remat=remat)["saved_for_backward_gb"] * 2**30


@pytest.mark.parametrize("name, weights_mb, at_most",
                         [("resnet50", 102.2, 0.30), ("vit_base_patch16_224", 346.4, 0.20)])
def test_remat_keeps_a_fraction_of_the_bytes_for_the_backward(name, weights_mb, at_most):
  # Measured at batch 8 (jax.eval_shape, nothing computed): resnet50 1,444 -> 378 MB, ViT-B/16 2,242 -> 404 MB;
  # what remains is mostly each block's input and the float32 weights the backward reads.
  at8, at16 = ({r: _saved(name, r, batch) for r in (False, True)} for batch in (8, 16))
  assert at8[True] < at_most * at8[False]
  assert at8[True] > weights_mb * 2**20  # the weights themselves are still read by the backward pass
  # Per image the activations kept shrink by >= 4x (the weights do not grow with the batch).
  per_image = {r: (at16[r] - at8[r]) / 8 for r in (False, True)}
  assert per_image[True] < per_image[False] / 4


def test_remat_is_refused_by_a_model_without_blocks():
  assert create_model("resnet50", remat=True).remat and not create_model("resnet50").remat
  with pytest.raises(UserError, match="does not take that argument"):
    create_model("lenet5", remat=True)

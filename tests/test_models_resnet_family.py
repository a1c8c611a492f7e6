"""Pre-activation ResNet, Wide ResNet (CIFAR), SE-ResNet/SE-ResNeXt, and resnet.py's torchvision counts."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision.models import abstract_variables, create_model, model_info, num_params
from vision.models.preact_resnet import PreActBottleneck, preact_resnet_cifar, wide_resnet_cifar
from vision.models.resnet import ResNet

# Exact parameter counts at 1000 classes.
IMAGENET_COUNTS = {
    "preact_resnet18": 11_687_720,  # timm.create_model('resnetv2_18') (timm 1.0.31)
    "preact_resnet50": 25_549_352,  # timm.create_model('resnetv2_50')
    "seresnet50": 28_088_024,  # timm seresnet50 (== legacy_seresnet50)
    "seresnext50_32x4d": 27_559_896,  # timm seresnext50_32x4d (== legacy_seresnext50_32x4d)
    "resnet18": 11_689_512,  # torchvision.models.resnet18 (0.29.1)
    "resnet50": 25_557_032,  # torchvision.models.resnet50
    "resnet152": 60_192_808,  # torchvision.models.resnet152
}
# CIFAR nets: the papers give only 1.7M (ResNet-164), 10.2M (ResNet-1001), 36.5M (WRN-28-10), all at
# 10 classes; the exact 10-class counts equal pytorchcv's preresnet164bn_cifar10,
# preresnet1001_cifar10 and wrn28_10_cifar10. The 1000-class count adds 990 * (features + 1).
CIFAR_COUNTS = {  # name: (count at 1000 classes, count at 10 classes, head features)
    "resnet164": (1_957_688, 1_703_258, 256),
    "resnet1001": (10_582_136, 10_327_706, 256),
    "wide_resnet28_10": (37_113_784, 36_479_194, 640),
}
PAPER_MILLIONS = {"resnet164": 1.7, "resnet1001": 10.2, "wide_resnet28_10": 36.5}


def _check_abstract(name, expected):
  info = model_info(name)
  model = create_model(name)
  x = jax.ShapeDtypeStruct((2, info.default_image_size, info.default_image_size, 3), jnp.float32)
  if name == "resnet1001":  # tracing 333 units takes seconds: get variables and output in one trace
    out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
  else:
    variables = abstract_variables(name)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert num_params(variables["params"]) == expected
  assert out.shape == (2, 1000) and out.dtype == jnp.float32
  return variables


@pytest.mark.parametrize("name", sorted(IMAGENET_COUNTS))
def test_imagenet_param_counts_and_shapes(name):
  assert model_info(name).default_image_size == 224
  _check_abstract(name, IMAGENET_COUNTS[name])


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_param_counts_and_shapes(name):
  count_1000, count_10, features = CIFAR_COUNTS[name]
  assert model_info(name).default_image_size == 32
  variables = _check_abstract(name, count_1000)
  assert variables["params"]["head_fc"]["kernel"].shape == (features, 1000)
  assert count_1000 - 990 * (features + 1) == count_10
  assert abs(count_10 / 1e6 - PAPER_MILLIONS[name]) < 0.15


def test_pre_logits_and_se_shapes():
  model = create_model("preact_resnet50", num_classes=0)
  x = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert num_params(variables["params"]) == 23_500_352  # timm resnetv2_50, num_classes=0
  assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (1, 2048)
  # Only stages 2-4 open with a stride; stage 1's first unit still projects 64 -> 256 channels.
  p = variables["params"]
  assert p["stages_0_blocks_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 256)
  assert "downsample_conv" not in p["stages_0_blocks_1"]
  se = abstract_variables("seresnext50_32x4d")["params"]["layer4_2"]["se"]
  assert se["fc1"]["kernel"].shape == (1, 1, 2048, 128) and se["fc2"]["kernel"].shape == (1, 1, 128, 2048)


@pytest.mark.parametrize("name", ["preact_resnet18", "seresnet50"])
def test_bfloat16_compute_float32_params(name):
  model = create_model(name, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 64, 64, 3))
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  assert out.dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def _numpy_variables(model, x):
  """He-normal kernels, zero biases, unit BN scales from numpy: XLA:CPU compiles model.init's many
  threefry calls more slowly than the whole forward+backward step."""
  rng = np.random.RandomState(0)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if ("scale" in name or "var" in name) else 0.0, np.float32)
  # numpy, not jnp, everywhere outside the compiled step: eager jnp ops compile once per new shape.
  return jax.device_put(jax.tree_util.tree_map_with_path(fill, shapes))


def _run_compiled(fn, *args):
  # XLA's lowest backend optimisation level halves CPU compile time, which dominates these tests.
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _forward_backward(model, x):
  """One jitted program: train outputs under two dropout rngs, grads, eval under two rngs."""
  variables = _numpy_variables(model, x)

  def run(variables):
    def loss(params, seed):
      out, state = model.apply({**variables, "params": params}, x, train=True,
                               rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats", "intermediates"])
      return -jnp.mean(jax.nn.log_softmax(out)[:, 0]), (out, state)
    (_, (train_a, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"], 1)
    _, (train_b, _) = loss(variables["params"], 2)
    evals = [model.apply(variables, x, rngs={"dropout": jax.random.key(s)}) for s in (1, 2)]
    return train_a, train_b, evals, state, grads

  train_a, train_b, (eval_a, eval_b), state, grads = jax.device_get(_run_compiled(run, variables))
  chex.assert_shape(train_a, (x.shape[0], 10))
  chex.assert_tree_all_finite((train_a, eval_a, grads))
  assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))
  # Train mode normalises with batch statistics and updates the running ones; eval ignores the rng.
  assert not np.allclose(eval_a, train_a, atol=1e-4)
  assert not np.allclose(jax.tree.leaves(state["batch_stats"])[0], jax.tree.leaves(variables["batch_stats"])[0])
  np.testing.assert_array_equal(eval_a, eval_b)
  stages = {k: v[0].shape for k, v in state["intermediates"].items() if k.startswith("stage")}
  return variables, stages, not np.allclose(train_a, train_b)


X32 = np.random.RandomState(42).normal(size=(2, 32, 32, 3)).astype(np.float32)


def test_preact_bottleneck_cifar_forward_backward_and_drop_path():
  # resnet164's code path at n=1 (depth 11). No dropout here, so only drop path uses the rng.
  model = preact_resnet_cifar(11, num_classes=10, drop_path_rate=0.5)
  variables, stages, rng_matters = _forward_backward(model, X32)
  assert stages == {"stage1": (2, 32, 32, 64), "stage2": (2, 16, 16, 128), "stage3": (2, 8, 8, 256)}
  assert rng_matters


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_preact_bottleneck_stride_placement(stride_in_1x1):
  # resnet164/1001 stride the first 1x1 conv, as KaimingHe/resnet-1k-layers; timm's resnetv2 the 3x3.
  block = PreActBottleneck(features=16, stride=2, stride_in_1x1=stride_in_1x1)
  x = jnp.zeros((1, 8, 8, 4))
  out, state = jax.eval_shape(lambda: block.init_with_output(jax.random.key(0), x, capture_intermediates=True))
  inter = state["intermediates"]
  assert out.shape == (1, 4, 4, 16) and inter["downsample_conv"]["__call__"][0].shape == (1, 4, 4, 16)
  assert inter["conv1"]["__call__"][0].shape == ((1, 4, 4, 4) if stride_in_1x1 else (1, 8, 8, 4))
  assert inter["conv2"]["__call__"][0].shape == (1, 4, 4, 4)


def test_wide_resnet_basic_forward_backward_and_dropout():
  # WRN-10-2: wide_resnet28_10's class at the smallest depth. Dropout only, no drop path.
  model = wide_resnet_cifar(10, 2, num_classes=10, dropout_rate=0.3)
  _, stages, rng_matters = _forward_backward(model, X32)
  assert stages == {"stage1": (2, 32, 32, 32), "stage2": (2, 16, 16, 64), "stage3": (2, 8, 8, 128)}
  assert rng_matters


def test_se_resnext_forward_backward_and_drop_path():
  # Two one-unit stages keep the compile short; the full nets are covered by eval_shape above.
  model = ResNet(stage_sizes=(1, 1), block="bottleneck", se_reduction=16, groups=4, width_per_group=8,
                 num_classes=10, drop_path_rate=0.5)
  variables, stages, rng_matters = _forward_backward(model, X32)
  assert stages == {"stage1": (2, 8, 8, 256), "stage2": (2, 4, 4, 512)}
  assert variables["params"]["layer1_0"]["conv2"]["kernel"].shape == (3, 3, 8, 32)  # 4 groups of 8
  assert rng_matters


def test_resnet18_drop_path_changes_train_outputs():
  model = create_model("resnet18", num_classes=10, drop_path_rate=0.5)
  variables = _numpy_variables(model, X32)

  def outputs(variables):
    train = [model.apply(variables, X32, train=True, rngs={"dropout": jax.random.key(s)}, mutable=["batch_stats"])[0]
             for s in (1, 2)]
    return train, model.apply(variables, X32)
  (train_a, train_b), eval_out = _run_compiled(outputs, variables)
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_out, atol=1e-4)

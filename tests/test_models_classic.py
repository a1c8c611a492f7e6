"""Classic CNNs: AlexNet/ZFNet, VGG, NIN, GoogLeNet, DenseNet.

Parameter counts at 1000 classes: torchvision 0.29 counts are
sum(p.numel() for p in torchvision.models.<name>().parameters()); the others
are derived layer by layer in the family docstrings. Outputs were also checked
against torchvision on the command line (weights copied by rename + transpose,
max |diff| ~1e-6 relative at odd input sizes); that check needs torch, so it is
not repeated here.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision.models import abstract_variables, create_model, model_info, num_params
from vision.models.alexnet import _adaptive_pool_matrix, adaptive_avg_pool, ceil_mode_padding, local_response_norm

PARAM_COUNTS = {
    "alexnet": 61_100_840,  # torchvision
    "alexnet_lrn": 62_378_344,  # hand count in alexnet.py (Krizhevsky 2012, one dense tower)
    "zfnet": 62_357_608,  # hand count in alexnet.py (Zeiler & Fergus 2013 Fig. 3)
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,  # torchvision
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "nin_cifar": 1_158_056,  # hand count in nin.py (966,986 at its default 10 classes)
    "googlenet": 13_004_888,  # torchvision googlenet(aux_logits=True); 6,624,904 without aux1/aux2
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,  # torchvision
    "densenet161": 28_681_000,
}
PRE_LOGITS = {"alexnet": 4096, "vgg11": 4096, "nin_cifar": 192, "googlenet": 1024, "densenet121": 1024}


# Spatial size of each sown stage at the default resolution.
STAGES = {
    "alexnet": [27, 13, 6],
    "alexnet_lrn": [27, 13, 6],  # the paper's 55 -> 27 -> 13 -> 6 maps
    "zfnet": [55, 13, 6],  # Zeiler & Fergus Fig. 3: 110 -> 55 -> 26 -> 13 -> 6
    "vgg11": [112, 56, 28, 14, 7],
    "nin_cifar": [16, 8, 8],  # Caffe ceil-mode pools: 32 -> 16 -> 8
    "googlenet": [56, 28, 14, 7],
    "densenet121": [56, 28, 14, 7],
}


def _abstract_init(model, x):
  """(output, variables incl. sown intermediates) from one no-compute trace."""
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, mutable=True), x)


@functools.lru_cache(maxsize=None)
def _abstract_at_1000_classes(name):
  size = model_info(name).default_image_size
  return _abstract_init(create_model(name, num_classes=1000), jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_output_shape_and_stages(name):
  out, variables = _abstract_at_1000_classes(name)
  assert num_params(variables["params"]) == PARAM_COUNTS[name]
  assert out.shape == (2, 1000)
  if name in STAGES:
    inter = variables["intermediates"]
    assert [inter[f"stage{i + 1}"][0].shape[1] for i in range(len(STAGES[name]))] == STAGES[name]


def test_nin_cifar_defaults_to_ten_classes():
  assert model_info("nin_cifar").default_image_size == 32
  assert num_params(abstract_variables("nin_cifar")["params"]) == 966_986


def test_googlenet_aux_heads_are_parameters_but_not_in_the_count_without_aux():
  params = _abstract_at_1000_classes("googlenet")[1]["params"]
  assert num_params({k: v for k, v in params.items() if k not in ("aux1", "aux2")}) == 6_624_904
  assert num_params(params["aux1"]) == 3_188_968 and num_params(params["aux2"]) == 3_191_016  # torchvision
  assert num_params(abstract_variables("googlenet", aux_logits=False)["params"]) == 6_624_904
  assert "aux1" not in abstract_variables("googlenet", num_classes=0)["params"]
  # eval never computes them: nothing sown, so inference needs no special casing
  variables = {k: v for k, v in _abstract_at_1000_classes("googlenet")[1].items() if k != "intermediates"}
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  _, state = jax.eval_shape(lambda v, x: create_model("googlenet").apply(v, x, mutable=["intermediates"]), variables, x)
  assert "aux_logits" not in state["intermediates"] and "stage4" in state["intermediates"]


@pytest.mark.parametrize("name", sorted(PRE_LOGITS))
def test_num_classes_zero_returns_pre_logits(name):
  size = model_info(name).default_image_size
  x = jax.ShapeDtypeStruct((3, size, size, 3), jnp.float32)
  out, variables = _abstract_init(create_model(name, num_classes=0), x)
  assert out.shape == (3, PRE_LOGITS[name])
  assert variables["intermediates"]["pre_logits"][0].shape == (3, PRE_LOGITS[name])


def test_googlenet_ceil_mode_stages_at_an_odd_size():
  # torchvision googlenet at 80px (printed on the command line); floor rounding would give [19, 9, 4, 2]
  x = jax.ShapeDtypeStruct((1, 80, 80, 3), jnp.float32)
  _, variables = _abstract_init(create_model("googlenet"), x)
  assert [variables["intermediates"][f"stage{i}"][0].shape[1] for i in (1, 2, 3, 4)] == [20, 10, 5, 3]


def test_first_layers_follow_the_papers():
  assert abstract_variables("alexnet_lrn")["params"]["features_0"]["kernel"].shape == (11, 11, 3, 96)
  assert abstract_variables("zfnet")["params"]["features_0"]["kernel"].shape == (7, 7, 3, 96)
  # single tower: conv2 sees all 96 conv1 maps (the 2012 two-GPU net saw 48)
  assert abstract_variables("alexnet_lrn")["params"]["features_4"]["kernel"].shape == (5, 5, 96, 256)


def test_adaptive_avg_pool_uses_pytorch_windows():
  # out 3 from 5: windows [floor(i*5/3), ceil((i+1)*5/3)) = [0,2), [1,4), [3,5)
  np.testing.assert_allclose(_adaptive_pool_matrix(5, 3) @ np.arange(5.0), [0.5, 2.0, 3.5])
  # upsampling 2 -> 3 repeats the middle input: [0,1), [0,2), [1,2)
  np.testing.assert_allclose(_adaptive_pool_matrix(2, 3) @ np.array([1.0, 3.0]), [1.0, 2.0, 3.0])
  y = jax.random.normal(jax.random.key(0), (2, 7, 5, 4))
  assert adaptive_avg_pool(y, (7, 5)) is y
  chex.assert_trees_all_close(adaptive_avg_pool(y, 1), y.mean(axis=(1, 2), keepdims=True), atol=1e-6)


def test_ceil_mode_padding_matches_pytorch_output_sizes():
  # torch.nn.MaxPool2d(k, s, p, ceil_mode=True) output sizes
  # (checked on the command line against torch); (5, 2, 2, 1) drops a window that would start in the padding
  for size, k, s, p, want in [(112, 3, 2, 0, 56), (56, 3, 2, 0, 28), (14, 2, 2, 0, 7), (13, 2, 2, 0, 7),
                              (5, 3, 2, 1, 3), (6, 3, 3, 1, 3), (32, 3, 2, 0, 16), (5, 2, 2, 1, 3), (7, 3, 2, 1, 4)]:
    x = jnp.zeros((1, size, size, 1))
    assert jax.eval_shape(lambda x: jax.lax.reduce_window(
        x, 0.0, jax.lax.max, (1, k, k, 1), (1, s, s, 1), [(0, 0), *ceil_mode_padding(x, k, s, p), (0, 0)]),
        x).shape[1] == want, (size, k, s, p)


def test_local_response_norm_matches_the_paper_formula():
  a = np.random.RandomState(0).randn(1, 2, 2, 7).astype(np.float32) * 30
  b = np.asarray(local_response_norm(jnp.asarray(a)))
  for i in range(7):  # Krizhevsky et al. 2012, section 3.3, k=2, n=5, alpha=1e-4, beta=0.75
    s = np.sum(a[..., max(0, i - 2):min(6, i + 2) + 1] ** 2, axis=-1)
    np.testing.assert_allclose(b[..., i], a[..., i] / (2 + 1e-4 * s) ** 0.75, rtol=1e-5)


# XLA:CPU's fusion emitters and LLVM passes cost most of these tests' time (densenet121's grad takes
# ~66 CPU-s to compile by default, ~13 with these); the programs are tiny, so runtime does not matter.
_FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}


def _he_uniform_variables(shapes):
  """numpy variables with the module's shapes: compiling `init` (its per-parameter RNG) costs more
  than the train step itself on CPU, and so would one jnp.ones per shape. Real init is covered by
  test_init_and_bfloat16_compute_keep_float32_params."""
  # A tiled random block: drawing VGG's 133M numbers would cost seconds and adds nothing here.
  block = np.random.default_rng(0).uniform(-1, 1, 4099).astype(np.float32)

  def fill(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      w = np.resize(block, s.shape)
      w *= np.sqrt(6.0 / np.prod(s.shape[:-1]))
      return w
    return (np.ones if leaf in ("scale", "var") else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, {k: shapes[k] for k in ("params", "batch_stats") if k in shapes})


def _train_step_checks(name, size, batch, has_batch_norm, aux=False, **kw):
  model = create_model(name, **kw)
  x = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
  # Parameter and BN-statistic shapes do not depend on the input size (adaptive pools).
  shapes = (_abstract_at_1000_classes(name)[1] if not kw and model.num_classes == 1000
            else jax.eval_shape(model.init, jax.random.key(0), x))
  variables = _he_uniform_variables(shapes)
  labels = jnp.arange(batch) % 10

  def loss_fn(params, rng):
    logits, state = model.apply({**variables, "params": params}, x, train=True, rngs={"dropout": rng},
                                mutable=["batch_stats", "intermediates"])
    ce = lambda z: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], axis=1))
    loss = ce(logits) + 0.3 * sum(ce(a) for a in state["intermediates"].get("aux_logits", ()))
    return loss, (logits, state)

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def step(variables):
    out = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"], jax.random.key(2))
    return out, model.apply(variables, x)

  ((loss, (train_out, state)), grads), eval_out = step(variables)
  chex.assert_shape([train_out, eval_out], (batch, model.num_classes))
  chex.assert_tree_all_finite((loss, grads, eval_out))
  assert float(jnp.abs(eval_out - train_out).max()) > 1e-6  # dropout / batch statistics act in training
  assert len(state["intermediates"].get("aux_logits", ())) == (2 if aux else 0)
  if has_batch_norm:  # running statistics move in training
    old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(state["batch_stats"])
    assert any(float(jnp.abs(a - b).max()) > 0 for a, b in zip(old, new))
  return grads


def test_alexnet_train_step_and_dropout():
  grads = _train_step_checks("alexnet", 64, 2, has_batch_norm=False)
  assert float(jnp.abs(grads["features_0"]["kernel"]).max()) > 0


def test_vgg11_train_step():
  grads = _train_step_checks("vgg11", 32, 2, has_batch_norm=False)
  assert float(jnp.abs(grads["features_0"]["kernel"]).max()) > 0


def test_nin_cifar_train_step():
  grads = _train_step_checks("nin_cifar", 32, 2, has_batch_norm=False)
  assert float(jnp.abs(grads["conv1"]["kernel"]).max()) > 0


def test_googlenet_train_step_sows_aux_logits_only_in_training():
  grads = _train_step_checks("googlenet", 64, 2, has_batch_norm=True, aux=True)
  assert float(jnp.abs(grads["aux1"]["fc2"]["kernel"]).max()) > 0  # the 0.3-weighted aux loss trains them
  assert float(jnp.abs(grads["aux2"]["fc2"]["kernel"]).max()) > 0


def test_densenet_train_step():
  # densenet121's modules (stem, growth 32, bn_size 4, transitions, norm5) at two layers per block:
  # the full 58-layer grad costs ~70 CPU-s of XLA compile (~18 with _FAST_COMPILE, tracing included).
  grads = _train_step_checks("densenet121", 32, 2, has_batch_norm=True, block_config=(2, 2, 2, 2))
  assert set(grads) >= {"features_denseblock4_denselayer2", "features_transition3", "features_norm5"}
  assert float(jnp.abs(grads["features_conv0"]["kernel"]).max()) > 0


def test_init_and_bfloat16_compute_keep_float32_params():
  model = create_model("nin_cifar", dtype=jnp.bfloat16)
  x = jnp.ones((1, 32, 32, 3))
  variables = jax.jit(model.init, compiler_options=_FAST_COMPILE)(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  # He-normal (fan_out) conv init: std sqrt(2 / (5 * 5 * 192)) for conv1
  np.testing.assert_allclose(float(jnp.std(variables["params"]["conv1"]["kernel"])), np.sqrt(2 / 4800), rtol=0.1)
  out = jax.jit(model.apply, compiler_options=_FAST_COMPILE)(variables, x)
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))

"""Swin Transformer v1: exact sizes, the shift mask by hand, one real step, parity with torchvision."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import drop_path_rates
from vision.models import abstract_variables, create_model, list_models, model_info, num_params
from vision.models.swin import relative_position_index, shift_mask

# Parameters at 1000 classes: torchvision 0.29.1's sum(p.numel() for p in m.parameters()) of
# torchvision.models.swin_{t,s,b}() built on the meta device (also its weights' meta "num_params");
# timm 1.0.31's swin_{tiny,small,base}_patch4_window7_224 have the same counts.
PARAMS = {"swin_t": 28_288_354, "swin_s": 49_606_258, "swin_b": 87_768_224}
ALIASES = {"swin_tiny_patch4_window7_224": "swin_t", "swin_small_patch4_window7_224": "swin_s",
           "swin_base_patch4_window7_224": "swin_b"}
_FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}


@functools.cache
def _abstract(name):
  return abstract_variables(name, batch=2)


def test_registered_names():
  assert set(list_models("swin*")) == set(PARAMS) | set(ALIASES)
  for alias, name in ALIASES.items():
    assert model_info(alias).factory is model_info(name).factory
  # torchvision's stochastic depth defaults.
  assert [create_model(n).drop_path_rate for n in PARAMS] == [0.2, 0.3, 0.5]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name):
  params = _abstract(name)["params"]
  assert num_params(params) == PARAMS[name]
  # Names mirror torchvision's state_dict: patch merging has no bias, the bias table is ((2*7-1)^2, heads).
  assert set(params["features_2"]) == {"norm", "reduction"} and set(params["features_2"]["reduction"]) == {"kernel"}
  heads = {"swin_b": 32}.get(name, 24)
  assert params["features_7_1"]["attn"]["relative_position_bias_table"].shape == (169, heads)
  assert set(params["features_7_1"]) == {"norm1", "attn", "norm2", "mlp_0", "mlp_3"}


def test_stage_features_and_pre_logits():
  model = create_model("swin_t")
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), _abstract("swin_t"),
                              jnp.zeros((2, 224, 224, 3)))
  assert out.shape == (2, 1000) and out.dtype == jnp.float32
  inter = state["intermediates"]
  for i, (hw, c) in enumerate([(56, 96), (28, 192), (14, 384), (7, 768)], start=1):
    assert inter[f"stage{i}"][0].shape == (2, hw, hw, c), i
  assert "stage5" not in inter and inter["pre_logits"][0].shape == (2, 768)
  # num_classes=0 drops exactly the head and returns the pooled features.
  headless = create_model("swin_t", num_classes=0)
  variables = jax.eval_shape(lambda: headless.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert num_params(variables["params"]) == PARAMS["swin_t"] - (768 * 1000 + 1000)
  assert jax.eval_shape(lambda v: headless.apply(v, jnp.zeros((1, 64, 96, 3))), variables).shape == (1, 768)


def test_shift_mask_by_hand():
  # 4x4 map rolled by -1 with 2x2 windows. Per axis the regions are rows/cols {0, 1}, {2}, {3}:
  # window 0 is one region, window 1 mixes columns 2|3, window 2 rows 2|3, window 3 all four.
  allowed = np.array([
      np.ones((4, 4)),
      [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]],
      [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]],
      np.eye(4)])
  np.testing.assert_array_equal(shift_mask(4, 4, 2, (1, 1)), np.where(allowed == 1, 0.0, -100.0))
  # Shifted along one axis only (the other fits in one window): only the column split remains.
  np.testing.assert_array_equal(shift_mask(2, 4, 2, (0, 1)), np.where(allowed[:2] == 1, 0.0, -100.0))
  # Relative position index of a 2x2 window: (dh + 1) * 3 + (dw + 1) into the 3x3 table.
  np.testing.assert_array_equal(relative_position_index(2),
                                [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])


def test_bfloat16_compute_keeps_float32_params():
  model = create_model("swin_t", dtype=jnp.bfloat16, attn_implementation="xla")
  x = jnp.zeros((1, 96, 96, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.eval_shape(lambda v: model.apply(v, x), variables).dtype == jnp.bfloat16


def _host_init(abstract):
  """Random params made with numpy (an eager or jitted `init` costs ~10 s of compiles on 2 CPU cores)."""
  rng = np.random.default_rng(0)

  def make(path, leaf):
    if path[-1].key == "scale":
      return np.ones(leaf.shape, np.float32)
    std = 0.02 if path[-1].key != "kernel" else np.sqrt(1 / np.prod(leaf.shape[:-1]))
    return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, abstract)


def test_forward_backward_tiny():
  # Window 7 at 56px: stage 1 (14x14) shifts, stage 2 (7x7) has no shift, stages 3-4 (4x4, 2x2) are padded.
  model = create_model("swin_t", embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.5)
  x = np.random.default_rng(1).standard_normal((2, 56, 56, 3)).astype(np.float32)
  with drop_path_rates() as rates:
    params = _host_init(jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"])
  # torchvision: stochastic_depth_prob * block_id / (total_blocks - 1), on both branches of a block.
  np.testing.assert_allclose(rates, np.repeat(np.linspace(0, 0.5, 6), 2))

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def run(params, x):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(2)})
      return -jnp.mean(jax.nn.log_softmax(logits)[:, 3]), logits
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, logits, grads, model.apply({"params": params}, x)

  loss, train_logits, grads, eval_logits = run(params, x)
  chex.assert_shape((train_logits, eval_logits), (2, 1000))
  chex.assert_tree_all_finite((loss, train_logits, grads, eval_logits))
  assert not np.allclose(train_logits, eval_logits, atol=1e-4)  # only drop path differs
  assert float(jnp.abs(grads["features_0_0"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["features_1_1"]["attn"]["relative_position_bias_table"]).sum()) > 0


def _copy_torch_weights(torch_model):
  """torchvision state_dict -> our params: '.' -> '/', weight -> kernel (transposed) or scale."""
  params = {}
  for key, value in torch_model.state_dict().items():
    if key.endswith("relative_position_index"):
      continue
    value = value.numpy()
    *path, leaf = key.split(".")
    if leaf == "weight":
      leaf = {4: "kernel", 2: "kernel", 1: "scale"}[value.ndim]
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    scope = params
    for name in _scopes(path):
      scope = scope.setdefault(name, {})
    scope[leaf] = jnp.asarray(value)
  return params


def _scopes(path):
  # features.1.0.attn.qkv -> features_1_0 / attn / qkv; features.2.norm -> features_2 / norm;
  # mlp.0 -> mlp_0: numeric parts join the name before them.
  out = []
  for part in path:
    if part.isdigit():
      out[-1] += f"_{part}"
    else:
      out.append(part)
  return out


@pytest.mark.parametrize("case", ["swin_t_224", "small_200x100"])
def test_matches_torchvision(case):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  if case == "swin_t_224":
    ours, theirs, shape = create_model("swin_t"), torchvision.models.swin_t(), (224, 224)
  else:
    # Odd and non-square: 50x25 -> 25x13 -> 13x7 -> 7x4 tokens: padded windows, odd patch merging,
    # stage 3 shifted along H only, stage 4 not shifted.
    ours = create_model("swin_t", embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    theirs = torchvision.models.SwinTransformer([4, 4], 32, [2, 2, 2, 2], [1, 2, 4, 8], [7, 7])
    shape = (200, 100)
  # Random biases, norm affines and bias tables (torchvision starts them at 0 / 1 / ~0.02).
  with torch.no_grad():
    for name, p in theirs.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
      elif name.endswith("relative_position_bias_table"):
        p.normal_(0.0, 0.5)
  theirs.eval()
  x = np.random.default_rng(0).standard_normal((2, *shape, 3)).astype(np.float32)
  with torch.no_grad():
    ref = theirs(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  params = _copy_torch_weights(theirs)
  abstract = jax.eval_shape(lambda: ours.init(jax.random.key(0), x))["params"]
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, abstract)
  out = jax.jit(lambda p, x: ours.apply({"params": p}, x), compiler_options=_FAST_COMPILE)(params, x)
  assert np.abs(np.asarray(out) - ref).max() / np.abs(ref).max() < 1e-4

"""MobileNet v1/v2/v3, EfficientNet B0-B7, ConvNeXt: exact sizes, scaling rules, one real step per family."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import drop_path_rates
from vision.models import abstract_variables, create_model, list_models, model_info, num_params
from vision.models.efficientnet import round_filters, round_repeats
from vision.models.mobilenet import _V3_SMALL, make_divisible

# Parameters at 1000 classes. torchvision 0.29.1: sum(p.numel() for p in m.parameters()) of
# torchvision.models.<name>(). MobileNet v1 is not in torchvision: timm 1.0.31's mobilenetv1_100
# has the same 4,231,976; the smaller widths are our own count, checked against the paper below.
PARAMS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v1_075": 2_585_560,
    "mobilenet_v1_050": 1_331_592,
    "mobilenet_v1_025": 470_072,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}


def test_every_variant_is_registered():
  registered = set(list_models("mobilenet_v*") + list_models("efficientnet_b*") + list_models("convnext_*"))
  assert registered == set(PARAMS)


# Per-stage features (spatial size, channels) sown at 224px, and the pre-logits width.
STAGES = {
    "mobilenet_v1": ([(112, 64), (56, 128), (28, 256), (14, 512), (7, 1024)], 1024),
    "mobilenet_v2": ([(112, 16), (56, 24), (28, 32), (14, 96), (7, 1280)], 1280),
    "mobilenet_v3_small": ([(112, 16), (56, 16), (28, 24), (14, 48), (7, 576)], 1024),
    "mobilenet_v3_large": ([(112, 16), (56, 24), (28, 40), (14, 112), (7, 960)], 1280),
    "efficientnet_b0": ([(112, 16), (56, 24), (28, 40), (14, 112), (7, 1280)], 1280),
    "convnext_tiny": ([(56, 96), (28, 192), (14, 384), (7, 768)], 768),
}


@functools.cache
def _abstract(name):
  """abstract_variables(name) (default resolution, batch 2) and the logits' ShapeDtypeStruct.

  The logits are read off the same trace (the root module's __call__ inside init) rather than
  a second jax.eval_shape(model.apply): tracing every EfficientNet twice would by itself take
  half of this file's 60 s budget on 2 CPU cores.
  """
  logits = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and not isinstance(context.module.parent, nn.Module):
      logits.append(jax.ShapeDtypeStruct(out.shape, out.dtype))
    return out

  with nn.intercept_methods(record):
    variables = abstract_variables(name, batch=2)
  (out,) = logits
  return variables, out


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_and_output_shape(name):
  variables, logits = _abstract(name)
  assert num_params(variables["params"]) == PARAMS[name]
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_features_and_pre_logits(name):
  stages, pre_logits = STAGES[name]
  model = create_model(name)
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]), _abstract(name)[0],
                              jnp.zeros((2, 224, 224, 3)))
  assert out.shape == (2, 1000)
  inter = state["intermediates"]
  for i, (hw, c) in enumerate(stages, start=1):
    assert inter[f"stage{i}"][0].shape == (2, hw, hw, c), i
  assert f"stage{len(stages) + 1}" not in inter
  assert inter["pre_logits"][0].shape == (2, pre_logits)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "convnext_tiny"])  # the two unusual heads
def test_headless(name):
  # num_classes=0 drops exactly the final Linear and returns the pre-logits.
  pre_logits = STAGES[name][1]
  model = create_model(name, num_classes=0)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert num_params(variables["params"]) == PARAMS[name] - (pre_logits * 1000 + 1000)
  assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (1, pre_logits)


def test_mobilenet_v1_matches_paper():
  # Howard et al. 2017, Tables 6/7: 4.2M, 2.6M, 1.3M, 0.5M parameters for alpha 1, .75, .5, .25.
  for name, paper in [("mobilenet_v1", 4.2), ("mobilenet_v1_075", 2.6), ("mobilenet_v1_050", 1.3),
                      ("mobilenet_v1_025", 0.5)]:
    assert round(PARAMS[name] / 1e6, 1) == paper
    assert model_info(name).extra["width_multiplier"] == {4.2: 1.0, 2.6: 0.75, 1.3: 0.5, 0.5: 0.25}[paper]
  # The paper counts no BatchNorm: without the 2 x 10,944 BN parameters we get 4,210,088.
  bn = sum(num_params(v) for k, v in _abstract("mobilenet_v1")[0]["params"].items() if k.endswith(("_1", "_4")))
  assert bn == 2 * 10_944
  assert PARAMS["mobilenet_v1"] - bn == 4_210_088


def test_make_divisible_and_scaling_rules():
  assert make_divisible(17.6) == 16  # rounds to nearest multiple of 8
  assert make_divisible(10) == 16  # 8 would lose more than 10%
  assert make_divisible(3) == 8  # floor at the divisor
  assert round_filters(32, 1.1) == 32 and round_filters(320, 1.4) == 448 and round_filters(1280, 2.0) == 2560
  assert round_repeats(1, 1.1) == 2 and round_repeats(4, 3.1) == 13
  # B0..B7 have 16, 23, 23, 26, 32, 39, 45, 55 MBConv blocks (torchvision).
  for i, blocks in enumerate([16, 23, 23, 26, 32, 39, 45, 55]):
    params = _abstract(f"efficientnet_b{i}")[0]["params"]
    assert sum(any(c.startswith("block_") for c in v) for v in params.values()) == blocks


def test_efficientnet_registry_records_compound_scaling():
  table = {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3), 3: (1.2, 1.4, 300, 0.3),
           4: (1.4, 1.8, 380, 0.4), 5: (1.6, 2.2, 456, 0.4), 6: (1.8, 2.6, 528, 0.5), 7: (2.0, 3.1, 600, 0.5)}
  for i, (w, d, res, drop) in table.items():
    info = model_info(f"efficientnet_b{i}")
    assert (info.extra["width_mult"], info.extra["depth_mult"], info.default_image_size) == (w, d, res)
    assert create_model(info.name).dropout == drop
  # torchvision ported B5-B7 from TF and keeps TF's BatchNorm eps.
  assert create_model("efficientnet_b4").bn_eps == 1e-5 and create_model("efficientnet_b5").bn_eps == 1e-3


def test_bfloat16_compute_keeps_float32_params():
  model = create_model("mobilenet_v3_small", setting=_V3_SMALL[:4], dtype=jnp.bfloat16)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.eval_shape(lambda v: model.apply(v, x), variables).dtype == jnp.bfloat16


def _host_init(abstract, layer_scale=0.5):
  """Random variables made on the host from the abstract tree.

  jax.jit(model.init) spends most of its compile time on one RNG program per leaf, which
  would dominate this file's runtime on 2 CPU cores; init itself is covered by eval_shape.
  Norm scales 1, biases 0, BN stats (0, 1), kernels He-normal on fan-in; layer_scale is
  enlarged from its 1e-6 init so that dropping a ConvNeXt branch visibly moves the logits.
  """
  rng = np.random.default_rng(0)

  def make(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    if name == "layer_scale":
      return np.full(leaf.shape, layer_scale, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, abstract)


# XLA:CPU compile time, not compute, is what the small real runs below cost. Without LLVM
# optimisation and with the classic (non-MLIR) fusion emitters it drops about 4x.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _run_compiled(fn, *args):
  lowered = jax.jit(fn).lower(*args)
  try:
    compiled = lowered.compile(_FAST_COMPILE)
  except jax.errors.JaxRuntimeError:  # an XLA that no longer knows one of the options
    compiled = lowered.compile()
  return compiled(*args)


def _train_and_eval(model, size, batch_norm):
  """One real forward + backward in train mode and a forward in eval mode, in one program.

  Returns the gradients and the DropPath rates met while building the model, in call order.
  """
  x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
  labels = np.array([3, 7])
  with drop_path_rates() as rates:
    variables = _host_init(jax.eval_shape(lambda: model.init(jax.random.key(0), x)))
  state = {k: v for k, v in variables.items() if k != "params"}

  def run(params, state, x):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, **state}, x, train=True, mutable=list(state),
                                      rngs={"dropout": jax.random.key(2)})
      loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
      return loss, (logits, new_state)
    (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, logits, new_state, grads, model.apply({"params": params, **state}, x, train=False)

  args = (variables["params"], state, x)
  loss, train_logits, new_state, grads, eval_logits = _run_compiled(run, *args)
  chex.assert_shape((train_logits, eval_logits), (2, 1000))
  chex.assert_tree_all_finite((loss, train_logits, eval_logits, grads))
  assert float(jnp.abs(grads["features_0_0"]["kernel"]).sum()) > 0  # gradient reaches the stem
  # Batch statistics (BN) or dropped branches/features (dropout, drop path) change the output.
  assert not np.allclose(train_logits, eval_logits, atol=1e-4)
  if batch_norm:
    # Every BN layer updated its running variance (a dead channel may keep mean 0).
    variances = [v for p, v in jax.tree_util.tree_leaves_with_path(new_state["batch_stats"])
                 if p[-1].key == "var"]
    assert variances and all(not np.allclose(v, 1.0) for v in variances)
  else:
    assert not state
  return grads, rates


# The real forward+backward runs use each family's smallest variant cut to a few blocks: XLA:CPU
# compiles about a second per block, so the full nets (covered by eval_shape above) would
# blow this file's 60 s budget. Every block kind, stride and residual case is still present.

def test_forward_backward_mobilenet_v3_small():
  # First 4 blocks: no-expansion SE block, plain ReLU blocks (one residual), hard-swish SE 5x5.
  grads, _ = _train_and_eval(create_model("mobilenet_v3_small", setting=_V3_SMALL[:4]), 32, batch_norm=True)
  # The hard-sigmoid SE gate is on the backward path.
  assert float(jnp.abs(grads["features_1"]["block_1"]["fc1"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["features_4"]["block_2"]["fc2"]["kernel"]).sum()) > 0


def test_forward_backward_efficientnet_b0():
  # depth_mult 0.3 keeps one block per stage, two in stage 6 (8 blocks, one residual).
  grads, rates = _train_and_eval(create_model("efficientnet_b0", depth_mult=0.3), 32, batch_norm=True)
  assert set(grads["features_6_1"]) == {"block_0_0", "block_0_1", "block_1_0", "block_1_1", "block_2",
                                        "block_3_0", "block_3_1"}
  assert float(jnp.abs(grads["features_1_0"]["block_1"]["fc1"]["kernel"]).sum()) > 0
  # Stochastic depth as torchvision: 0.2 * block_index / num_blocks, only where there is a residual.
  np.testing.assert_allclose(rates, [0.2 * 6 / 8])


def test_forward_backward_convnext_tiny():
  assert create_model("convnext_tiny").layer_scale == 1e-6  # torchvision's init
  assert create_model("convnext_tiny").drop_path_rate == 0.1
  # No BatchNorm and no head dropout: only drop path separates train from eval, so raise it
  # (and _host_init raises the layer scale, else a dropped branch would move logits by ~1e-6).
  model = create_model("convnext_tiny", depths=(1, 1, 2, 1), drop_path_rate=0.5)
  grads, rates = _train_and_eval(model, 32, batch_norm=False)
  assert grads["features_1_0"]["layer_scale"].shape == (96,)
  assert grads["features_6_1"]["kernel"].shape == (2, 2, 384, 768)  # last downsample
  # Drop path as torchvision: linear from 0 to the max over all blocks.
  np.testing.assert_allclose(rates, np.linspace(0, 0.5, 5))


def test_forward_mobilenet_v1():
  # v1 has no torchvision reference; a real forward at least (it matched timm's mobilenetv1_100
  # to 1e-6 on the command line, weights loaded by position).
  model = create_model("mobilenet_v1_025")
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  variables = _host_init(jax.eval_shape(lambda: model.init(jax.random.key(0), x)))
  logits = _run_compiled(lambda v, x: model.apply(v, x), variables, x)
  chex.assert_shape(logits, (2, 1000))
  chex.assert_tree_all_finite(logits)
  assert not np.allclose(logits[0], logits[1])

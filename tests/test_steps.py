"""Losses, schedules, optimizers and the sharded train step (8 simulated CPU devices)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision.models import create_model
from vision.models.resnet import ResNet
from vision.train import mesh as mesh_lib
from vision.train import optim, steps
from vision.train.config import default_config


def test_cross_entropy_with_label_smoothing_hand_computed():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  # softmax denominators: e^2 + e^0 + e^-1; targets with smoothing 0.1 over 3 classes.
  log_z = math.log(math.exp(2) + 1 + math.exp(-1))
  log_p = [2 - log_z, 0 - log_z, -1 - log_z]
  targets = [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]
  expected = -sum(t * lp for t, lp in zip(targets, log_p))
  got = steps.cross_entropy(logits, jnp.array([0]), 3, label_smoothing=0.1)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  np.testing.assert_allclose(steps.cross_entropy(logits, jnp.array([0]), 3), [-log_p[0]], rtol=1e-6)


def test_warmup_cosine_and_step_schedules():
  o = default_config().optim
  o.lr, o.warmup_epochs, o.schedule = 0.4, 2.0, "cosine"
  s = optim.lr_schedule(o, steps_per_epoch=10, total_steps=100)
  np.testing.assert_allclose([s(0), s(10), s(20), s(60), s(100)],
                             [0.0, 0.2, 0.4, 0.4 * 0.5 * (1 + math.cos(math.pi * 40 / 80)), 0.0], atol=1e-6)
  o.schedule, o.warmup_epochs, o.step_epochs, o.step_factor = "step", 0.0, (3.0, 6.0), 0.1
  s = optim.lr_schedule(o, steps_per_epoch=10, total_steps=100)
  np.testing.assert_allclose([s(0), s(29), s(30), s(59), s(60), s(99)],
                             [0.4, 0.4, 0.04, 0.04, 0.004, 0.004], rtol=1e-5)


def test_weight_decay_skips_norms_and_biases():
  model = ResNet(stage_sizes=(1,), block="basic", num_classes=10, stem="cifar")
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  mask = optim.decay_mask(params)
  decayed = sorted(jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m)
  assert decayed == ["['conv1']['kernel']", "['fc']['kernel']", "['layer1_0']['conv1']['kernel']",
                     "['layer1_0']['conv2']['kernel']"]
  # SGD with decay 0.5 and lr 1 on zero gradients shrinks kernels only.
  o = default_config().optim
  o.weight_decay, o.momentum, o.lr = 0.5, 0.0, 1.0
  tx = optim.make_optimizer(o, 1.0)
  p = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
  np.testing.assert_allclose(updates["kernel"], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(updates["bias"], np.zeros(2))
  tokens = {"pos_embed": jnp.ones((1, 5, 4)), "cls_token": jnp.ones((1, 1, 4)), "blocks_0": {
      "attn": {"qkv": {"kernel": jnp.ones((4, 12))}, "relative_position_bias_table": jnp.ones((9, 2))}}}
  decayed = [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_flatten_with_path(optim.decay_mask(tokens))[0] if m]
  assert decayed == ["['blocks_0']['attn']['qkv']['kernel']"]


def _setup(model, batch_size=16, size=16, channels=3, accum=1, fsdp=False, devices=None, min_size=2**18):
  o = default_config().optim
  o.lr, o.weight_decay = 0.1, 1e-4
  tx = optim.make_optimizer(o, optim.lr_schedule(o, 10, 100))
  mesh = mesh_lib.make_mesh(devices)
  init = lambda rng: steps.init_state(model, tx, rng, (1, size, size, channels))
  abstract = jax.eval_shape(init, jax.random.key(0))
  shard = mesh_lib.state_shardings(abstract, mesh, fsdp, min_size)
  state = jax.jit(init, out_shardings=shard)(jax.random.key(0))
  bsh = mesh_lib.batch_sharding(mesh)
  step = jax.jit(steps.make_train_step(model, tx, 10, 0.1, accum, batch_sharding=bsh),
                 in_shardings=(shard, bsh), out_shardings=(shard, None))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(batch_size, size, size, channels)).astype(np.float32),
           "label": rng.integers(0, 10, batch_size).astype(np.int32)}
  return state, step, mesh_lib.to_global(batch, bsh)


def test_data_parallel_and_fsdp_match_one_device():
  model = ResNet(stage_sizes=(1, 1), block="basic", num_classes=10, stem="cifar")
  results = {}
  for name, devices, fsdp in [("one", jax.devices()[:1], False), ("dp", jax.devices(), False),
                              ("fsdp", jax.devices(), True)]:
    state, step, batch = _setup(model, fsdp=fsdp, devices=devices, min_size=1024)
    if name == "fsdp":  # big leaves really are split 8 ways, params and momentum alike
      kernel = state.params["layer2_0"]["conv2"]["kernel"]
      assert np.prod(kernel.sharding.shard_shape(kernel.shape)) == kernel.size // 8
      trace = state.opt_state[1][0].trace["layer2_0"]["conv2"]["kernel"]
      assert trace.sharding.shard_shape(trace.shape) == kernel.sharding.shard_shape(kernel.shape)
    state, metrics = step(state, batch)
    results[name] = (jax.device_get(metrics), jax.device_get(state))
  assert len(jax.devices()) == 8
  ref_metrics, ref_state = results["one"]
  for name in ("dp", "fsdp"):
    metrics, state = results[name]
    # Measured: after one step the params agree to 1.5e-8 (float32 rounding of values ~0.1; updates are
    # ~5e-4..7e-3, so that is <= 4e-5 of an update). BatchNorm statistics taken per device (2 examples each)
    # instead of over the global batch would be off by orders of magnitude more.
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    chex.assert_trees_all_close(state.params, ref_state.params, rtol=0, atol=1e-6)
    chex.assert_trees_all_close(state.batch_stats, ref_state.batch_stats, rtol=1e-5, atol=1e-6)


def _bytes_on(tree, device):
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == device)


def test_fsdp_keeps_an_eighth_of_params_and_optimizer_state_per_device():
  """Per-device bytes under FSDP: 1/8 of every leaf of >= fsdp_min_size elements, all of the small ones."""
  model = ResNet(stage_sizes=(1, 1), block="basic", num_classes=10, stem="cifar")
  dev = jax.devices()[0]
  dp_state, _, _ = _setup(model, devices=jax.devices(), min_size=1024)
  state, step, batch = _setup(model, fsdp=True, devices=jax.devices(), min_size=1024)
  state, _ = step(state, batch)  # the step's outputs keep the layout
  for name in ("params", "opt_state"):
    tree, dp_tree = getattr(state, name), getattr(dp_state, name)
    leaves = jax.tree.leaves(tree)
    total = sum(x.nbytes for x in leaves)
    big = sum(x.nbytes for x in leaves if x.size >= 1024)
    assert big > 0.99 * total  # the small leaves (BatchNorm scales, biases, counts) are ~0.2% of the bytes
    assert _bytes_on(tree, dev) == big // 8 + (total - big)
    assert _bytes_on(dp_tree, dev) == total  # data parallel: a full copy on every device
    assert _bytes_on(tree, dev) < 0.13 * total


def test_gradient_accumulation_matches_full_batch():
  model = create_model("lenet5", num_classes=10)  # no BatchNorm: micro-batches are exactly equivalent
  one = jax.devices()[:1]
  full_state, full_step, batch = _setup(model, size=32, channels=1, accum=1, devices=one)
  acc_state, acc_step, _ = _setup(model, size=32, channels=1, accum=4, devices=one)
  full_state, full_metrics = full_step(full_state, batch)
  acc_state, acc_metrics = acc_step(acc_state, batch)
  np.testing.assert_allclose(acc_metrics["loss"], full_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(acc_metrics["top1"], full_metrics["top1"])
  chex.assert_trees_all_close(acc_state.params, full_state.params, rtol=1e-5, atol=1e-7)
  assert int(acc_state.step) == 1


def test_bfloat16_compute_keeps_float32_params():
  model = create_model("lenet5", num_classes=10, dtype=jnp.bfloat16)
  state, step, batch = _setup(model, size=32, channels=1, devices=jax.devices()[:1])
  state, metrics = step(state, batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"])


def test_eval_step_masks_padding():
  model = create_model("lenet5", num_classes=10)
  state, _, _ = _setup(model, size=32, channels=1, devices=jax.devices()[:1])
  eval_step = jax.jit(steps.make_eval_step(model, 10))
  rng = np.random.default_rng(1)
  batch = {"image": rng.normal(size=(8, 32, 32, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32), "mask": np.array([1] * 5 + [0] * 3, np.float32)}
  out = jax.device_get(eval_step(steps.model_variables(state), batch))
  logits = model.apply({"params": state.params}, batch["image"])
  pred = np.argmax(logits, -1)
  assert out["count"] == 5
  assert out["top1_hits"] == np.sum(pred[:5] == batch["label"][:5])
  assert out["confusion"].sum() == 5 and out["confusion"][batch["label"][0], pred[0]] >= 1
  expected_loss = -np.sum(jax.nn.log_softmax(logits)[np.arange(5), batch["label"][:5]])
  np.testing.assert_allclose(out["loss_sum"], expected_loss, rtol=1e-5)


def test_eval_step_and_features_normalise_uint8_batches():
  """Evaluation with uint8 batches (data.uint8_batches) equals evaluation of the same batch normalised on the
  host: the eval step's sums and the frozen features."""
  from vision.evaluators import features as features_lib
  model = create_model("lenet5", num_classes=10)
  state, _, _ = _setup(model, size=32, channels=1, devices=jax.devices()[:1])
  variables = steps.model_variables(state)
  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
  mean, std = (0.45,), (0.3,)
  on_host = ((pixels / 255.0 - mean[0]) / std[0]).astype(np.float32)
  batch = {"label": rng.integers(0, 10, 8).astype(np.int32), "mask": np.ones(8, np.float32)}
  eval_step = jax.jit(steps.make_eval_step(model, 10, normalize=(mean, std)))
  a = jax.device_get(eval_step(variables, {**batch, "image": pixels}))
  b = jax.device_get(eval_step(variables, {**batch, "image": on_host}))
  np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-6)
  np.testing.assert_array_equal(a["confusion"], b["confusion"])
  fn = features_lib.feature_fn(create_model("lenet5", num_classes=0), normalize=(mean, std))
  np.testing.assert_allclose(jax.jit(fn)(variables, pixels)["pooled"], jax.jit(fn)(variables, on_host)["pooled"],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,fsdp,expected", [((3, 3, 64, 128), True, (None, None, None, "data")),
                                                 ((1000,), True, ()), ((3, 3, 64, 128), False, ())])
def test_fsdp_leaf_spec(shape, fsdp, expected):
  spec = mesh_lib.leaf_spec(shape, 8, fsdp, min_size=2**12)
  assert tuple(spec) == expected


def test_gradient_clipping_bounds_the_update():
  o = default_config().optim
  o.grad_clip_norm, o.momentum, o.weight_decay = 1.0, 0.0, 0.0
  tx = optim.make_optimizer(o, 0.5)
  p = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
  g = {"a": jnp.full(3, 10.0), "b": jnp.full((2, 2), -10.0)}  # global norm sqrt(700)
  updates, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(float(optax_global_norm(updates)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates["a"], -0.5 * 10.0 / np.sqrt(700.0) * np.ones(3), rtol=1e-6)


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_uint8_batch_is_normalised_inside_the_step():
  """A uint8 batch (config.data.uint8_batches) trains exactly as the same batch normalised (and erased) on the
  host."""
  model = create_model("lenet5", num_classes=10)
  tx = optim.make_optimizer(default_config().optim, 0.1)
  state = steps.init_state(model, tx, jax.random.key(0), (1, 32, 32, 1))
  pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int32)
  mean, std = (0.45,), (0.3,)
  on_host = ((pixels / 255.0 - mean[0]) / std[0]).astype(np.float32)
  # Random erasing's rectangles (top, left, height, width, noise) ride along; the step erases them.
  boxes = np.zeros((8, 1, 5), np.int32)
  boxes[:3, 0] = [[2, 3, 10, 7, 0], [0, 0, 32, 32, 0], [5, 9, 1, 1, 0]]
  for i, (top, left, h, w, _) in enumerate(boxes[:, 0]):
    on_host[i, top:top + h, left:left + w] = 0.0
  step = jax.jit(steps.make_train_step(model, tx, 10, normalize=(mean, std)))
  a, ma = step(state, {"image": pixels, "label": labels, "erase": boxes})
  b, mb = step(state, {"image": on_host, "label": labels})
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)

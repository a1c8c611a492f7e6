"""DINOv2 schedules, optimizer, train state and step; full-size configs by eval_shape; resume and non-finite stop."""
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from vision.data import masking
from vision.errors import TrainingError
from vision.models import num_params
from vision.ssl import loop, optim, schedules, steps
from vision.train import checkpoint as ckpt_lib
from vision.train import mesh as mesh_lib
from vision.train.config import default_config

sys.path.insert(0, os.path.join(ROOT, "configs"))


def release_cosine(base, final, total, warmup=0, start=0.0):
  """dinov2/utils/utils.py CosineScheduler, as a numpy array over total steps."""
  warm = np.linspace(start, base, warmup)
  iters = np.arange(total - warmup)
  return np.concatenate([warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))])


def test_schedules_follow_the_release():
  c = default_config()
  c.optim.lr, c.optim.end_lr_factor, c.optim.warmup_epochs, c.optim.weight_decay = 0.004, 1e-6 / 0.004, 2.0, 0.04
  c.ssl.warmup_teacher_temp_epochs = 3.0
  s = schedules.make_schedules(c, steps_per_epoch=10, total_steps=100)
  t = np.arange(100)
  np.testing.assert_allclose(jax.vmap(s.lr)(t), release_cosine(0.004, 1e-6, 100, 20), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(jax.vmap(s.weight_decay)(t), release_cosine(0.04, 0.4, 100), rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(s.momentum)(t), release_cosine(0.992, 1.0, 100), rtol=1e-6)
  # Teacher temperature: linear 0.04 -> 0.07 over 3 epochs (its last warmup step is 0.07), then 0.07.
  temp = jax.vmap(s.teacher_temp)(np.arange(40))
  np.testing.assert_allclose(temp[:30], np.linspace(0.04, 0.07, 30), rtol=1e-5)
  np.testing.assert_allclose(temp[30:], 0.07, rtol=1e-6)
  # By hand: lr peaks at the end of warmup; momentum halfway is 1 - 0.008 / 2; wd at half is 0.22; past the end:
  # the final values.
  np.testing.assert_allclose([s.lr(19), s.momentum(50), s.weight_decay(50), s.momentum(100), s.lr(150)],
                             [0.004, 0.996, 0.22, 1.0, 1e-6], rtol=1e-5)
  assert s.freeze_last_layer_steps == 10


def _toy_params():
  z = lambda *shape: jnp.zeros(shape)
  block = lambda: {"norm1": {"scale": z(4), "bias": z(4)}, "attn": {"qkv": {"kernel": z(4, 12), "bias": z(12)}},
                   "ls1": {"gamma": z(4)}}
  return {"backbone": {"patch_embed": {"proj": {"kernel": z(2, 2, 3, 4), "bias": z(4)}}, "cls_token": z(1, 1, 4),
                       "pos_embed": z(1, 5, 4), "mask_token": z(1, 4), "blocks_0": block(), "blocks_1": block(),
                       "norm": {"scale": z(4), "bias": z(4)}},
          "dino_head": {"mlp_0": {"kernel": z(4, 8), "bias": z(8)},
                        "last_layer": {"weight_v": z(8, 6), "weight_g": z(6)}}}


def test_parameter_groups_layer_decay_weight_decay_and_frozen_prototypes():
  flat = lambda tree: ckpt_lib.flat_paths(tree)
  mult = flat(optim.lr_multipliers(_toy_params(), 0.9, 0.2))
  # depth 2: tokens and patch embedding are layer 0 (0.9^3), block i layer i+1 (0.9^(2-i)), the rest 1.
  assert mult["backbone/patch_embed/proj/kernel"] == pytest.approx(0.9 ** 3 * 0.2)
  assert mult["backbone/cls_token"] == mult["backbone/pos_embed"] == mult["backbone/mask_token"] == \
      pytest.approx(0.9 ** 3)
  assert mult["backbone/blocks_0/attn/qkv/kernel"] == pytest.approx(0.81)
  assert mult["backbone/blocks_1/ls1/gamma"] == pytest.approx(0.9)
  assert mult["backbone/norm/scale"] == mult["dino_head/mlp_0/kernel"] == mult["dino_head/last_layer/weight_v"] == 1.0
  decayed = sorted(k for k, v in flat(optim.decay_mask(_toy_params())).items() if v)
  # The release decays everything but biases, norms and layer scales (tokens and weight_g included).
  assert decayed == ["backbone/blocks_0/attn/qkv/kernel", "backbone/blocks_1/attn/qkv/kernel", "backbone/cls_token",
                     "backbone/mask_token", "backbone/patch_embed/proj/kernel", "backbone/pos_embed",
                     "dino_head/last_layer/weight_g", "dino_head/last_layer/weight_v", "dino_head/mlp_0/kernel"]
  # AdamW's first step is lr x (sign(g) + wd x p); the prototypes stay put while frozen (2 steps here).
  c = default_config()
  sched = schedules.Schedules(lr=lambda t: 0.1, weight_decay=lambda t: 0.5, momentum=None, teacher_temp=None,
                              freeze_last_layer_steps=2)
  params = jax.tree.map(lambda x: jnp.ones_like(x), _toy_params())
  tx = optim.make_optimizer(c, sched)
  grads = jax.tree.map(lambda x: -jnp.ones_like(x), params)
  opt_state, update = tx.init(params), jax.jit(tx.update)
  for step in range(3):
    updates, opt_state = update(grads, opt_state, params)
    u = flat(updates)
    np.testing.assert_allclose(u["backbone/blocks_1/attn/qkv/kernel"], -0.1 * 0.9 * (-1 + 0.5), rtol=1e-4)
    np.testing.assert_allclose(u["backbone/blocks_1/attn/qkv/bias"], -0.1 * 0.9 * -1, rtol=1e-4)
    np.testing.assert_allclose(u["dino_head/last_layer/weight_v"], 0.0 if step < 2 else -0.1 * (-1 + 0.5), rtol=1e-4)


def test_clipping_is_per_student_module():
  clip = optim.clip_per_submodule(3.0)
  grads = {"backbone": {"a": jnp.full((4,), 3.0)}, "dino_head": {"b": jnp.array([1.0, 0.0])}}  # norms 6 and 1
  out, _ = clip.update(grads, clip.init(grads))
  np.testing.assert_allclose(out["backbone"]["a"], np.full(4, 1.5), rtol=1e-6)  # scaled to norm 3
  np.testing.assert_allclose(out["dino_head"]["b"], [1.0, 0.0])  # under the threshold: untouched


# Full-size configs: parameter counts by eval_shape (no memory, no compile).
# Backbones: timm's vit_{small,base,large}_patch14_dinov2 at img_size=224 (pos_embed 1 + 16 x 16) have
# 21,628,800 / 85,724,928 / 303,227,904 parameters (timm 1.0.31); ours adds the mask token (D).
# DINO head (shared with iBOT) by hand: D x 2048 + 2048 + 2048 x 2048 + 2048 + 2048 x 256 + 256 (MLP)
#   + 256 x 65536 + 65536 (weight_v, weight_g) = 2048 D + 4,722,944 + 16,842,752.
@pytest.mark.parametrize("model,dim,timm_count", [("vits14", 384, 21_628_800), ("vitb14", 768, 85_724_928),
                                                  ("vitl14", 1024, 303_227_904)])
def test_full_size_configs_build_their_train_state(model, dim, timm_count):
  import dinov2_vits14_imagenet
  config = dinov2_vits14_imagenet.get_config(f"model={model}")
  nets = loop.build_networks(config)
  sched = schedules.make_schedules(config, 1251, 125_100)
  tx = optim.make_optimizer(config, sched)
  state = jax.eval_shape(lambda r: steps.init_state(nets, tx, r, 224, 3), jax.random.key(0))
  head = 2048 * dim + 4_722_944 + 16_842_752
  assert num_params(state.params["backbone"]) == timm_count + dim
  assert num_params(state.params["dino_head"]) == head
  assert num_params(state.teacher) == num_params(state.params) == timm_count + dim + head
  assert state.centers["dino"].shape == state.centers["ibot"].shape == (1, 65536)
  assert state.params["backbone"]["pos_embed"].shape == (1, 257, dim)
  # Adam's two moments per parameter; nothing else of that size.
  assert num_params(state.opt_state) == 2 * num_params(state.params) + 3  # + the 3 step counters
  assert config.optim.lr == pytest.approx(0.004) and config.model.dtype == "bfloat16"


def _tiny_config(data_dir=None):
  c = default_config()
  c.task = "dinov2"
  c.model.name = "vit_small_patch14_dinov2"
  c.model.kwargs.update(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, init_values=0.1)
  c.data.name, c.data.channels, c.data.flip = "digits", 3, False
  c.data.data_dir = data_dir or ""
  c.data.image_size, c.data.eval_crop, c.data.cache, c.data.shuffle_buffer = 16, "resize", True, 256
  c.data.mean, c.data.std = (0.5,) * 3, (0.5,) * 3
  s = c.ssl
  s.global_crop_size, s.local_crop_size, s.local_crops = 16, 8, 2
  s.prototypes, s.head_hidden_dim, s.head_bottleneck_dim = 32, 32, 16
  c.optim.name, c.optim.lr, c.optim.warmup_epochs = "adamw", 1e-3, 0.0
  c.train.batch_size, c.train.eval_batch_size = 8, 360
  return c


def _tiny_batch(c, seed=0, groups=1):
  rng = np.random.default_rng(seed)
  b, s = c.train.batch_size, c.ssl
  return {"global_crops": rng.normal(size=(b, 2, 16, 16, 3)).astype(np.float32),
          "local_crops": rng.normal(size=(b, s.local_crops, 8, 8, 3)).astype(np.float32),
          "masks": masking.batch_masks(seed, 0, 0, b, groups, 2, (4, 4), s.mask_probability, tuple(s.mask_ratio))}


def test_one_step_teacher_gets_no_gradient_and_moves_by_ema():
  c = _tiny_config()
  nets = loop.build_networks(c)
  sched = schedules.make_schedules(c, steps_per_epoch=1, total_steps=10)
  tx = optim.make_optimizer(c, sched)
  state = steps.init_state(nets, tx, jax.random.key(0), 16, 3)
  upper = masking.upper_bound(2 * 8, 16, 0.5, (0.1, 0.5))
  step = steps.make_train_step(nets, tx, sched, c.ssl, num_groups=2, mask_upper_bound=upper)
  batch = _tiny_batch(c, groups=2)

  def loss_of(student, teacher):
    return step(state.replace(params=student, teacher=teacher), batch)[1]["loss"]
  (new_state, metrics), (g_student, g_teacher) = jax.jit(
      lambda st: (step(st, batch), jax.grad(loss_of, argnums=(0, 1))(st.params, st.teacher)))(state)
  # The teacher is reached only through stop_gradient: exactly zero gradient; the student's is not.
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_teacher))
  assert float(optax_norm(g_student)) > 1e-3
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # EMA: teacher' = m teacher + (1 - m) student' with m = 0.992 at step 0 (teacher = student at init).
  m = 0.992
  chex.assert_trees_all_close(new_state.teacher,
                              jax.tree.map(lambda t, p: m * t + (1 - m) * p, state.teacher, new_state.params),
                              rtol=1e-6, atol=1e-7)
  # The prototypes are frozen during the first epoch (1 step here); the rest moved.
  chex.assert_trees_all_equal(new_state.params["dino_head"]["last_layer"], state.params["dino_head"]["last_layer"])
  assert float(jnp.abs(new_state.params["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"] -
                       state.params["backbone"]["blocks_0"]["attn"]["qkv"]["kernel"]).max()) > 0
  # The DINO center: 0.9 x 0 + 0.1 x the batch mean of the teacher's class-token logits, computed here directly.
  glob = batch["global_crops"].reshape(16, 16, 16, 3)
  cls = nets.backbone.apply({"params": state.teacher["backbone"]}, glob, method="forward_features")["x_norm_clstoken"]
  logits = nets.dino_head.apply({"params": state.teacher["dino_head"]}, cls)
  np.testing.assert_allclose(new_state.centers["dino"], 0.1 * np.mean(logits, 0, keepdims=True), rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(new_state.centers["ibot"]).max()) > 0
  assert metrics["teacher_temp"] == pytest.approx(0.04) and int(new_state.step) == 1


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_resume_after_a_crash_equals_an_uninterrupted_run_and_nan_names_the_step(tmp_path, data_dir):
  c = _tiny_config(data_dir)
  c.train.num_steps, c.train.checkpoint_every, c.train.log_every, c.train.eval_every = 4, 2, 1, 0
  c.train.async_checkpointing = False
  exp = loop.SSLExperiment(c, jax.devices()[:1])  # one compiled step for the three runs
  loop.train_and_evaluate(c, str(tmp_path / "straight"), experiment=exp)
  # Second run: the batch of step 3 holds a NaN -> stop there, naming the step and the checkpoint of step 2.
  real = exp.train_batches

  def poisoned(start):
    for i, batch in enumerate(real(start)):
      yield dict(batch, global_crops=batch["global_crops"] * jnp.nan) if start + i == 2 else batch
  exp.train_batches = poisoned
  with pytest.raises(TrainingError, match=r"non-finite training loss at step 3; last good checkpoint: step 2 in "):
    loop.train_and_evaluate(c, str(tmp_path / "crashed"), experiment=exp)
  assert ckpt_lib.Checkpointer(str(tmp_path / "crashed"), read_only=True).all_steps() == [2]
  exp.train_batches = real
  loop.train_and_evaluate(c, str(tmp_path / "crashed"), experiment=exp)  # the same command again: resumes at 2
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  a = ckpt_lib.Checkpointer(str(tmp_path / "straight"), read_only=True).restore_arrays(4, mesh)
  b = ckpt_lib.Checkpointer(str(tmp_path / "crashed"), read_only=True).restore_arrays(4, mesh)
  flat_b = ckpt_lib.flat_paths(b)
  for key, leaf in ckpt_lib.flat_paths(a).items():  # student, teacher, centers, optimizer, rng, step
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_b[key]), err_msg=key)
  assert {"params", "teacher", "centers", "opt_state"} <= {k.split("/")[0] for k in flat_b}

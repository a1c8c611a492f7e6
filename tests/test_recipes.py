"""Training recipes: parameter groups (layer decay, backbone lr, freezing), LARS/LAMB, model EMA, Mixup/CutMix in
the step, class subsets, FixRes eval size, head replacement, few-shot evaluation."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from vision.evaluators import transfer
from vision.models import create_model
from vision.train import checkpoint as ckpt_lib
from vision.train import optim, steps
from vision.train.config import default_config

sys.path.insert(0, os.path.join(ROOT, "configs"))


def _abstract_params(name, num_classes=10, size=32, channels=3, **kw):
  model = create_model(name, num_classes=num_classes, **kw)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)),
                                           train=False))["params"]


def test_layer_ids_follow_the_architecture():
  ids, top = optim.layer_ids(_abstract_params("vit_tiny_patch16_224", size=224))
  assert top == 13 and ids["patch_embed"] == ids["pos_embed"] == ids["cls_token"] == 0
  assert [ids[f"blocks_{i}"] for i in range(12)] == list(range(1, 13)) and ids["head"] == ids["norm"] == 13
  ids, top = optim.layer_ids(_abstract_params("resnet18"))
  assert top == 9 and ids["conv1"] == ids["bn1"] == 0 and ids["layer1_0"] == 1 and ids["layer4_1"] == 8
  assert ids["fc"] == 9


def test_head_mask_finds_the_classifier_of_any_model():
  for name, head in (("resnet18", {"fc"}), ("vgg11", {"classifier_6"}), ("lenet5", {"output"}),
                     ("vit_tiny_patch16_224", {"head"})):
    size = 224 if name.startswith(("vit", "vgg")) else 32
    a = _abstract_params(name, 10, size, 1 if name == "lenet5" else 3)
    b = _abstract_params(name, 11, size, 1 if name == "lenet5" else 3)
    found = {k.split("/")[0] for k, v in ckpt_lib.flat_paths(optim.head_mask(a, b)).items() if v}
    assert found == head, name


def _sgd(**kw):
  o = default_config().optim
  o.name, o.momentum, o.weight_decay = "sgd", 0.0, 0.0
  for k, v in kw.items():
    o[k] = v
  return o


def test_layer_decay_and_backbone_multiplier_scale_each_update():
  params = jax.tree.map(lambda a: jnp.ones(a.shape), _abstract_params("vit_tiny_patch16_224", size=224))
  head = optim.head_mask(params, _abstract_params("vit_tiny_patch16_224", 11, size=224))
  tx = optim.make_optimizer(_sgd(layer_decay=0.5, backbone_lr_mult=0.1), 1.0, params, head)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = ckpt_lib.flat_paths(updates)
  np.testing.assert_allclose(flat["head/kernel"][0, 0], -1.0)  # the classifier: lr x 1
  np.testing.assert_allclose(flat["norm/scale"][0], -0.1)  # top layer, but backbone: x 0.1
  np.testing.assert_allclose(flat["blocks_11/mlp/fc1/kernel"][0, 0], -0.1 * 0.5)
  np.testing.assert_allclose(flat["blocks_0/mlp/fc1/kernel"][0, 0], -0.1 * 0.5 ** 12, rtol=1e-6)
  np.testing.assert_allclose(flat["patch_embed/proj/kernel"][0, 0, 0, 0], -0.1 * 0.5 ** 13, rtol=1e-6)


def test_frozen_params_and_statistics_stay_bit_identical_through_training_steps():
  model = create_model("resnet18", num_classes=10, stem="cifar")
  o = default_config().optim
  o.name, o.lr, o.weight_decay = "sgd", 0.1, 1e-2  # decay would move frozen weights too, if it reached them
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False))
  freeze = r"^(conv1|bn1|layer1_)"
  o.layer_decay = 0.5  # with freezing: the multipliers apply to the trained leaves, the frozen stay at 0
  tx = optim.make_optimizer(o, o.lr, abstract["params"], None, freeze)
  state = steps.init_state(model, tx, jax.random.key(0), (1, 16, 16, 3))
  step = jax.jit(steps.make_train_step(model, tx, 10, frozen_stats=optim.frozen_mask(abstract["batch_stats"], freeze)))
  batch = {"image": jax.random.normal(jax.random.key(1), (8, 16, 16, 3)), "label": jnp.arange(8) % 10}
  new = state
  for _ in range(3):
    new, _ = step(new, batch)
  before, after = ckpt_lib.flat_paths(steps.model_variables(state)), ckpt_lib.flat_paths(steps.model_variables(new))
  frozen = [k for k in before if k.split("/")[1].startswith(("conv1", "bn1", "layer1_"))]
  moved = [k for k in before if k not in frozen and not np.array_equal(before[k], after[k])]
  assert len(frozen) > 10 and len(moved) > 30
  for key in frozen:
    np.testing.assert_array_equal(before[key], after[key], err_msg=key)
  assert not any("layer1_" in k for k in ckpt_lib.flat_paths(new.opt_state))  # no optimizer state for them


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_adapt_weights_but_not_biases(name):
  o = default_config().optim
  o.name, o.weight_decay, o.momentum = name, 0.0, 0.0
  params = {"dense": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)}}
  tx = optim.make_optimizer(o, 1.0, params)
  grads = {"dense": {"kernel": jnp.full((4, 3), 0.5), "bias": jnp.full((3,), 0.5)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  if name == "lars":  # kernel: -lr x trust (0.001 x |w| / |g|) x g; bias: plain -lr x g
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.001 * (2.0 / 0.5) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], -0.5, rtol=1e-6)
  else:  # LAMB: the Adam direction (+-1 at step 1) scaled by |w| / |direction| = 2 per layer
    np.testing.assert_allclose(np.abs(updates["dense"]["kernel"]), 2.0, rtol=1e-3)
    np.testing.assert_allclose(np.abs(updates["dense"]["bias"]), 2.0, rtol=1e-3)


def test_ema_update_decay_every_and_warmup_by_hand():
  state = steps.TrainState(step=jnp.asarray(0), params={"w": jnp.asarray(1.0)}, batch_stats={"m": jnp.asarray(2.0)},
                           opt_state=None, rng=None, ema={"params": {"w": jnp.asarray(0.0)},
                                                          "batch_stats": {"m": jnp.asarray(0.0)}})
  # Within warmup: a copy of the params and statistics.
  ema = steps.ema_update(state, 0.9, ema_every=1, ema_warmup_steps=1)
  assert float(ema["params"]["w"]) == 1.0 and float(ema["batch_stats"]["m"]) == 2.0
  ema = steps.ema_update(state, 0.9)
  np.testing.assert_allclose(float(ema["params"]["w"]), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(ema["batch_stats"]["m"]), 0.2, rtol=1e-6)
  # Every 2 steps: step 1 keeps the EMA, step 2 updates it.
  assert float(steps.ema_update(state, 0.9, ema_every=2)["params"]["w"]) == 0.0
  np.testing.assert_allclose(float(steps.ema_update(state.replace(step=jnp.asarray(1)), 0.9, 2)["params"]["w"]), 0.1, rtol=1e-6)


def test_mixup_in_the_step_uses_soft_targets():
  """The step's loss equals cross-entropy against mixing.mix's targets for the step's own key."""
  from vision.data import mixing
  model = create_model("lenet5", num_classes=10)
  o = _sgd()
  tx = optim.make_optimizer(o, 0.0)
  state = steps.init_state(model, tx, jax.random.key(0), (1, 32, 32, 1))
  mix = dict(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0)
  step = jax.jit(steps.make_train_step(model, tx, 10, label_smoothing=0.1, mix=mix))
  batch = {"image": jax.random.normal(jax.random.key(2), (6, 32, 32, 1)), "label": jnp.arange(6)}
  _, metrics = step(state, batch)
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  images, targets = mixing.mix(jax.random.fold_in(rng, 2**20), batch["image"], batch["label"], 10,
                               label_smoothing=0.1, **mix)
  np.testing.assert_allclose(np.sum(targets, -1), 1.0, rtol=1e-6)
  logits = model.apply({"params": state.params}, images, train=True, rngs={"dropout": rng})
  expected = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)


def test_few_shot_ridge_on_separable_features():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 4
  y = np.repeat(np.arange(4), 60)
  x = centres[y] + rng.normal(size=(240, 16))
  out = transfer.few_shot(x[::2], y[::2], x[1::2], y[1::2], 4, shots=(1, 5), seeds=2)
  assert set(out) == {"1", "5"} and len(out["5"]["per_seed"]) == 2
  assert out["5"]["top1"] > 0.95 and out["1"]["top1"] > 0.6
  w = transfer._ridge(x[:10], np.eye(4)[y[:10]], 1.0)  # dual form (16 > 10) equals the primal solution
  np.testing.assert_allclose(w, np.linalg.solve(x[:10].T @ x[:10] + np.eye(16), x[:10].T @ np.eye(4)[y[:10]]),
                             rtol=1e-6, atol=1e-9)


def test_class_subset_and_eval_size(data_dir):
  import lenet_digits
  from vision.data import pipeline
  c = lenet_digits.get_config()
  c.data.data_dir = data_dir
  c.data.classes = (7, 2)
  num_classes, names, n = pipeline.dataset_facts(c.data)
  assert (num_classes, names) == (2, ["7", "2"]) and 250 < n < 310  # ~180 images per class, 80% in train
  c.data.eval_image_size = 40
  batches, num = pipeline.eval_batches(c.data, "test", 64)
  seen = [b for _, b in zip(range(num), batches)]
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in seen])
  assert seen[0]["image"].shape == (64, 40, 40, 1) and set(labels) == {0, 1} and 60 < len(labels) < 80
  c.data.classes = (3, 12)
  from vision.errors import UserError
  with pytest.raises(UserError, match=r"\[12\] are not labels of digits"):
    pipeline.dataset_facts(c.data)


def test_recipe_run_logs_ema_and_calibration_and_new_head(tmp_path, data_dir):
  """A short digits run with Mixup/CutMix, random erasing (in the step: uint8 batches), EMA, layer decay and
  freezing; then init_from with a new head."""
  import lenet_digits
  from vision.train.loop import restore_for_eval, train_and_evaluate
  from vision.train.writers import read_metrics
  c = lenet_digits.get_config()
  c.data.data_dir = data_dir
  c.train.update(num_steps=44, eval_every=44, checkpoint_every=44, log_every=22, mixup_alpha=0.2,
                 cutmix_alpha=1.0, ema_decay=0.9, ema_every=2, ema_warmup_epochs=0.5, freeze="^c1/")
  c.optim.layer_decay = 0.8
  c.data.augment = "erasing(p=0.5,mode=pixel)"
  first = str(tmp_path / "first")
  results = train_and_evaluate(c, first)
  assert 0.0 <= results["ema"]["top1"] <= 1.0 and results["ema"]["top1"] != results["top1"]
  last = [m for m in read_metrics(first) if "eval/top1" in m][-1]
  assert {"eval/ema_top1", "eval/ema_loss", "eval/macro_f1", "eval/ece"} <= set(last)
  exp, ema_vars, _ = restore_for_eval(c, first, ema=True)
  _, raw_vars, _ = restore_for_eval(c, first)
  assert not np.array_equal(ema_vars["params"]["f6"]["kernel"], raw_vars["params"]["f6"]["kernel"])
  np.testing.assert_allclose(exp.evaluate(ema_vars)["top1"], results["ema"]["top1"])
  # Fine-tune from it with a fresh classifier although the number of classes is the same.
  c2 = lenet_digits.get_config()
  c2.data.data_dir = data_dir
  c2.train.update(num_steps=1, init_from=first, init_new_head=True, ema_decay=0.9)
  from vision.train.loop import Experiment
  exp2 = Experiment(c2)
  state = exp2.init_state()
  np.testing.assert_array_equal(state.params["f6"]["kernel"], raw_vars["params"]["f6"]["kernel"])
  assert not np.array_equal(state.params["output"]["kernel"], raw_vars["params"]["output"]["kernel"])
  np.testing.assert_array_equal(state.ema["params"]["f6"]["kernel"], raw_vars["params"]["f6"]["kernel"])
  batch = {"image": np.zeros((64, 32, 32, 1), np.float32), "label": np.zeros(64, np.int32)}
  state, metrics = exp2.train_step(state, batch)  # the EMA has buffers of its own: donation works
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_published_recipe_configs_say_what_torchvision_trains():
  import resnet50_imagenet
  import vit_b16_imagenet
  from vision.train.config import validate
  c = resnet50_imagenet.get_config("recipe=v2")
  validate(c, 8)
  assert (c.train.batch_size, c.optim.lr, c.train.num_epochs, c.optim.weight_decay) == (1024, 0.5, 600.0, 2e-5)
  assert (c.train.mixup_alpha, c.train.cutmix_alpha, c.train.label_smoothing) == (0.2, 1.0, 0.1)
  assert (c.data.augment, c.data.repeated_augment) == ("trivialaugment+erasing(p=0.1)", 4)
  assert (c.data.image_size, c.data.eval_image_size, round(c.data.eval_image_size / c.data.crop_pct)) == (176, 224, 232)
  assert c.data.interpolation == "bilinear"
  assert c.train.ema_every == 32 and abs(c.train.ema_decay - (1 - 2e-5 * 1024 * 32 / 600)) < 1e-12
  v = vit_b16_imagenet.get_config("recipe=torchvision,batch=4096")
  validate(v, 8)
  assert v.data.interpolation == "bilinear" and vit_b16_imagenet.get_config().data.interpolation == "bicubic"  # DeiT
  assert (v.optim.lr, v.optim.weight_decay, v.train.label_smoothing, v.optim.warmup_epochs) == (3e-3, 0.3, 0.11, 30.0)
  assert (v.train.mixup_alpha, v.train.cutmix_alpha, v.data.repeated_augment) == (0.2, 1.0, 3)
  assert v.data.augment == "randaugment(n=2,m=9)" and v.optim.decay_norm_and_bias and v.optim.grad_clip_norm == 1.0


def test_imagenet_configs_evaluate_with_their_recipes_transform():
  """(shorter side before the 224 crop, filter): torchvision's swin_t weights, the TF EfficientNet reference
  (size + 32), ConvNeXt's and DINOv2's repositories (256, bicubic)."""
  import convnext_tiny_imagenet
  import dinov2_vits14_imagenet
  import efficientnet_b0_imagenet
  import swin_t_imagenet
  from vision.data.preprocess import resize_size
  expected = {swin_t_imagenet: (232, "bicubic"), efficientnet_b0_imagenet: (256, "bicubic"),
              convnext_tiny_imagenet: (256, "bicubic"), dinov2_vits14_imagenet: (256, "bicubic")}
  for module, want in expected.items():
    d = module.get_config().data
    assert (resize_size(d.image_size, d.crop_pct), d.interpolation) == want, module.__name__
  d = efficientnet_b0_imagenet.get_config("model=efficientnet_b3").data
  assert (d.image_size, resize_size(d.image_size, d.crop_pct)) == (300, 332)

"""Every config file loads, validates, and builds its model (shapes only); recipe numbers are what the docs say."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from vision import UserError
from vision.models import create_model, num_params
from vision.train import config as config_lib
from vision.train import optim

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_and_builds(path):
  c = load(path)
  config_lib.validate(c, num_devices=1)
  assert config_lib.unknown_keys(c) == []
  model = create_model(c.model.name, num_classes=NUM_CLASSES[c.data.name], **dict(c.model.kwargs))
  x = jnp.zeros((1, c.data.image_size, c.data.image_size, c.data.channels))
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))  # one trace
  assert out.shape == (1, NUM_CLASSES[c.data.name]) and num_params(variables["params"]) > 0


def test_recipe_numbers():
  c = load(os.path.join(ROOT, "configs", "resnet50_imagenet.py"), "batch=1024,schedule=step")
  assert (c.optim.lr, c.optim.weight_decay, c.train.num_epochs, c.optim.schedule) == (0.4, 1e-4, 90.0, "step")
  assert not c.optim.decay_norm_and_bias and c.optim.momentum == 0.9
  c = load(os.path.join(ROOT, "configs", "efficientnet_b0_imagenet.py"), "model=efficientnet_b3")
  assert c.data.image_size == 300  # the variant's own resolution from the registry
  c = load(os.path.join(ROOT, "configs", "wrn28_10_cifar10.py"))
  assert c.model.kwargs.dropout_rate == 0.3 and c.optim.step_factor == 0.2
  with pytest.raises(UserError, match=r"unknown config argument 'bach=12' \(did you mean: batch\?\)"):
    load(os.path.join(ROOT, "configs", "resnet50_imagenet.py"), "bach=12")


def test_exponential_schedule_and_tf_rmsprop():
  o = config_lib.default_config().optim
  o.lr, o.schedule, o.decay_epochs, o.decay_rate = 1.0, "exponential", 2.4, 0.97
  s = optim.lr_schedule(o, steps_per_epoch=10, total_steps=100)
  np.testing.assert_allclose([s(0), s(23), s(24), s(48)], [1.0, 1.0, 0.97, 0.97**2], rtol=1e-6)
  o.name, o.momentum, o.eps, o.weight_decay = "rmsprop", 0.0, 1e-3, 0.0
  tx = optim.make_optimizer(o, 0.1)
  p = {"w": jnp.ones(())}
  g = {"w": jnp.full((), 2.0)}
  updates, _ = tx.update(g, tx.init(p), p)
  # TF RMSProp: ms = 0.9 * 1 + 0.1 * g^2 (starts at 1); update = -lr * g / sqrt(ms + eps)
  np.testing.assert_allclose(updates["w"], -0.1 * 2.0 / np.sqrt(0.9 + 0.1 * 4 + 1e-3), rtol=1e-6)

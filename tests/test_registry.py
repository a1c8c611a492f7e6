"""The registry and the spine's models: names, errors, exact torchvision parameter counts."""
import chex
import jax
import jax.numpy as jnp
import pytest

from vision import UserError
from vision.models import abstract_variables, create_model, list_models, model_info, num_params
from vision.models.resnet import ResNet

# torchvision.models.<name>(num_classes=1000): sum(p.numel() for p in m.parameters()).
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}


@pytest.mark.parametrize("name,count", sorted(TORCHVISION_COUNTS.items()))
def test_resnet_parameter_counts_equal_torchvision(name, count):
  variables = abstract_variables(name)
  assert num_params(variables["params"]) == count
  model = create_model(name)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3))), variables)
  assert out.shape == (2, 1000)


def test_lenet5_parameter_count_and_shapes():
  # C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850 (full C3 connections).
  variables = abstract_variables("lenet5", num_classes=10)
  assert num_params(variables["params"]) == 61_706
  model = create_model("lenet5", num_classes=10)
  x = jnp.ones((3, 32, 32, 1))
  logits, inter = model.apply(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables), x,
                              mutable=["intermediates"])
  chex.assert_shape(logits, (3, 10))
  chex.assert_shape(inter["intermediates"]["pre_logits"][0], (3, 84))
  chex.assert_shape(inter["intermediates"]["stage1"][0], (3, 28, 28, 6))


def test_list_models_patterns():
  assert {"resnet18", "resnet50", "resnet152"} <= set(list_models("resnet*"))
  assert list_models("lenet*") == ["lenet5", "lenet5_paper"]
  assert list_models() == sorted(list_models())
  assert model_info("lenet5").default_image_size == 32


def test_unknown_model_names_close_matches():
  with pytest.raises(UserError, match=r"unknown model 'resnet5'.*resnet50"):
    create_model("resnet5")


def test_unknown_model_argument_is_a_user_error():
  with pytest.raises(UserError, match="does not take"):
    create_model("resnet18", no_such_field=1)


def test_num_classes_zero_returns_pre_logits():
  variables = abstract_variables("resnet50", num_classes=0)
  model = create_model("resnet50", num_classes=0)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3))), variables)
  assert out.shape == (2, 2048)
  assert "fc" not in variables["params"]
  assert num_params(variables["params"]) == TORCHVISION_COUNTS["resnet50"] - (2048 * 1000 + 1000)


def test_resnet_train_and_eval_modes_differ_through_batchnorm():
  model = ResNet(stage_sizes=(1, 1), block="basic", num_classes=10, stem="cifar")
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  eval_out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  train_out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert not jnp.allclose(eval_out, train_out)
  before = variables["batch_stats"]["bn1"]["mean"]
  assert not jnp.allclose(before, updates["batch_stats"]["bn1"]["mean"])
  chex.assert_tree_all_finite(train_out)

"""One registry for every architecture: `create_model(name, **kw)`, `list_models(pattern)`.

A family file registers a factory per variant:

    @register_model(default_image_size=224)
    def resnet50(**kw):
      return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", **kw)

Names follow timm/torchvision spelling. Every model takes `num_classes`
(0 removes the head and returns pre-logits, as in timm) and `dtype` (the
compute dtype; parameters stay float32).
"""
import dataclasses
import fnmatch
from typing import Callable

from vision.errors import UserError, close_matches


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  name: str
  factory: Callable
  default_image_size: int
  in_channels: int = 3
  # Extra facts a family wants recorded (e.g. EfficientNet's scaling coefficients).
  extra: dict = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(fn=None, *, default_image_size=224, in_channels=3, name=None, **extra):
  """Decorator that registers a model factory under its function name."""
  def wrap(f):
    key = name or f.__name__
    if key in _REGISTRY:
      raise ValueError(f"model {key!r} registered twice")
    _REGISTRY[key] = ModelInfo(key, f, default_image_size, in_channels, dict(extra))
    return f
  return wrap(fn) if fn is not None else wrap


def _ensure_families_imported():
  import vision.models  # noqa: F401  (importing the package registers every family)


def model_info(name: str) -> ModelInfo:
  _ensure_families_imported()
  if name not in _REGISTRY:
    raise UserError(
        f"unknown model {name!r}{close_matches(name, _REGISTRY)}; "
        "see vision.models.list_models() for the registered names")
  return _REGISTRY[name]


def create_model(name: str, **kwargs):
  """Builds the registered model `name`; kwargs override the module's fields."""
  info = model_info(name)
  try:
    return info.factory(**kwargs)
  except TypeError as e:
    if "unexpected keyword" not in str(e):
      raise
    raise UserError(f"model {name!r} does not take that argument: {e}; "
                    "remove it from config.model") from None


def list_models(pattern: str = "*") -> list[str]:
  """Sorted registered names matching a shell-style pattern ('resnet*', 'vit_*')."""
  _ensure_families_imported()
  return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def abstract_variables(name: str, image_size: int | None = None, batch: int = 1, **kwargs):
  """Shapes of the model's variables via `jax.eval_shape` (no compute, no memory)."""
  import jax
  import jax.numpy as jnp
  info = model_info(name)
  size = image_size or info.default_image_size
  model = create_model(name, **kwargs)
  x = jnp.zeros((batch, size, size, info.in_channels), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def num_params(tree) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  import jax
  import numpy as np
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))

"""Looking inside a trained classifier: class probabilities, sown layers, Grad-CAM, first-layer filters.

Pure JAX/Flax (no plotting, no TensorFlow); vision.tools.plots draws what these return.

Layers are the values a model sows into its 'intermediates' collection
(stage1..stageN, pre_logits, ...), named by their path ('stage3', or
'block/stage3' when sown by a submodule). They need no per-family code.

Grad-CAM (Selvaraju et al. 2017) needs the gradient of a class logit with
respect to such a layer's activations A, but a sown value is a copy handed
out, not a point where the forward pass can be perturbed, and flax's
`perturb` would have to be called inside every model. So the eval forward
pass is traced once to a jaxpr; the sown value is one of its outputs, i.e. a
variable the rest of the graph consumes. Re-running that jaxpr with a zero
`delta` added to the variable where it is produced makes logit_c a function of
delta whose gradient at 0 is exactly d logit_c / dA (the same trick as
`perturb`, applied to the traced graph instead of the source). Then
weights_k = mean over (h, w) of the gradient, cam = relu(sum_k weights_k A_k),
upsampled bilinearly to the input size and scaled to [0, 1].
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex

from vision.errors import UserError


def _usable(variables):
  return {k: v for k, v in variables.items() if v}


def probabilities_fn(model):
  """jitted (variables, images [B,H,W,C]) -> softmax probabilities [B, classes] (float32), eval mode."""
  return jax.jit(lambda variables, images: jax.nn.softmax(
      model.apply(_usable(variables), images, train=False).astype(jnp.float32)))


def _forward(model):
  def forward(variables, images):
    logits, state = model.apply(_usable(variables), images, train=False, mutable=["intermediates"])
    return logits, state.get("intermediates", {})
  return forward


def _layer_names(intermediates) -> dict:
  """{'stage1': (path in the pytree, index in the sown tuple)}; a value sown k > 1 times gets '#i' suffixes."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
  names = {}
  for path, values in flat.items():
    base = "/".join(path)
    for i in range(len(values)):
      names[base if len(values) == 1 else f"{base}#{i}"] = (path, i)
  return names


def sown_layers(model, variables, images) -> dict:
  """{layer name: activations} of an eval forward pass of `images`."""
  _, intermediates = jax.jit(_forward(model))(variables, images)
  return {name: flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))[path][i]
          for name, (path, i) in _layer_names(intermediates).items()}


def spatial_layer_names(model, variables, image_shape) -> list[str]:
  """Names of the sown layers that are feature maps [B, H, W, C] (what feature maps and Grad-CAM need)."""
  _, intermediates = jax.eval_shape(_forward(model), variables, jax.ShapeDtypeStruct(image_shape, jnp.float32))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
  return [name for name, (path, i) in _layer_names(intermediates).items() if len(flat[path][i].shape) == 4]


def check_spatial_layer(model, variables, image_shape, layer: str | None) -> str | None:
  """`layer`, or the deepest spatial layer when None (None if the model sows none); UserError naming the
  choices when `layer` is not one."""
  names = spatial_layer_names(model, variables, image_shape)
  if layer is None:
    stages = [n for n in names if n.split("/")[-1].startswith("stage")]
    return (stages or names or [None])[-1]
  if not names:
    raise UserError(f"--layer={layer!r}: the model sows no feature maps [B, H, W, C] in 'intermediates'")
  if layer not in names:
    raise UserError(f"--layer={layer!r} is not a sown feature map of this model; choose one of {names}")
  return layer


def _perturbed(closed, target):
  """A function (delta, *inputs) -> outputs of the jaxpr `closed` with delta added to variable `target`."""
  jaxpr = closed.jaxpr

  def run(delta, *args):
    env = {}

    def read(v):
      return v.val if isinstance(v, jex.Literal) else env[v]

    def write(v, value):
      env[v] = value + delta if v is target else value

    for v, value in zip(jaxpr.constvars, closed.consts):
      write(v, value)
    for v, value in zip(jaxpr.invars, args):
      write(v, value)
    for eqn in jaxpr.eqns:  # as jax.core.eval_jaxpr does
      with eqn.ctx.manager:
        out = eqn.primitive.bind(*map(read, eqn.invars), **eqn.primitive.get_bind_params(eqn.params))
      for v, value in zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]):
        write(v, value)
    return [read(v) for v in jaxpr.outvars]
  return run


def grad_cam(model, variables, image, layer: str, class_index: int | None = None):
  """Grad-CAM of one preprocessed image [H, W, C] for `class_index` (default: the predicted class).

  Returns (cam [H, W] in [0, 1], the class used, probabilities [classes], the layer's activations [h, w, k]).
  """
  images = jnp.asarray(image, jnp.float32)[None]
  closed, shapes = jax.make_jaxpr(_forward(model), return_shape=True)(variables, images)
  names = _layer_names(shapes[1])
  path, i = names[layer]
  # Outputs are flattened as (logits, intermediates): find the leaf of this layer among them.
  leaf_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
  want = (jax.tree_util.SequenceKey(1), *map(jax.tree_util.DictKey, path), jax.tree_util.SequenceKey(i))
  target = closed.jaxpr.outvars[leaf_paths.index(want)]
  if isinstance(target, jex.Literal) or not any(target is v for e in closed.jaxpr.eqns for v in e.invars):
    raise UserError(f"layer {layer!r} does not feed the logits; choose another --layer")
  run = _perturbed(closed, target)
  inputs = jax.tree.leaves((variables, images))
  num_classes = shapes[0].shape[-1]
  if class_index is not None and not 0 <= class_index < num_classes:
    raise UserError(f"--class_index={class_index} is out of range; the model has {num_classes} classes")

  @jax.jit
  def compute(inputs, class_index):
    def logit(delta):
      outs = run(delta, *inputs)
      logits = outs[0][0].astype(jnp.float32)
      # -1: the predicted class (the forward pass is the same whichever logit is differentiated).
      c = jnp.where(class_index < 0, jnp.argmax(logits), class_index)
      return logits[c], (outs, c)
    zeros = jnp.zeros(target.aval.shape, target.aval.dtype)
    grads, (outs, c) = jax.grad(logit, has_aux=True)(zeros)
    acts = outs[leaf_paths.index(want)][0].astype(jnp.float32)
    weights = jnp.mean(grads[0].astype(jnp.float32), axis=(0, 1))
    cam = jax.nn.relu(jnp.einsum("hwk,k->hw", acts, weights))
    cam = jax.image.resize(cam, images.shape[1:3], "bilinear")
    cam = cam / jnp.maximum(jnp.max(cam), 1e-12)
    return cam, c, jax.nn.softmax(outs[0][0].astype(jnp.float32)), acts

  cam, used, probs, acts = jax.device_get(compute(inputs, -1 if class_index is None else class_index))
  return np.asarray(cam), int(used), np.asarray(probs), np.asarray(acts)


def first_conv_kernel(model, variables, image_shape):
  """(module path, kernel [kh, kw, cin, cout]) of the first nn.Conv the forward pass calls, or None."""
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    if not seen and isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      seen.append(context.module.scope.path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(_usable(v), x, train=False), variables,
                   jax.ShapeDtypeStruct(image_shape, jnp.float32))
  if not seen:
    return None
  node = variables["params"]
  for key in seen[0]:
    node = node[key]
  return "/".join(seen[0]), np.asarray(jax.device_get(node["kernel"]), np.float32)

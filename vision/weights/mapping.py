"""PyTorch state_dicts (torchvision, timm, the DINOv2 release) onto our parameter trees.

Our trees mirror the reference state_dicts by construction, so one rule maps
almost everything: join our path with '_' after renaming the leaf (kernel and
scale -> weight, mean -> running_mean, var -> running_var), and it equals the
torch key with '.' replaced by '_' ('layer1_0/conv1/kernel' <-> 'layer1.0.conv1.weight').
Where a layout differs, a short per-(library, family) list of regex renames
bridges it (ResNet's downsample.0/1, torchvision's ViT, timm's MobileNet v1).
Tensors change layout by kind: conv kernels OIHW -> HWIO, linear weights
(out, in) -> (in, out), a (C, 1, 1) layer scale -> (C,), position embeddings
resampled to our grid
(antialiased bicubic, as timm does when it loads a checkpoint at another size). Anything left over on either side
is refused, naming the first offending key and both shapes.
"""
import dataclasses
import math
import re

import numpy as np

from vision.errors import UserError, close_matches
from vision.models import registry

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
# Buffers that are derived, not learned: never needed, never an error to find.
IGNORED_KEYS = re.compile(r"(num_batches_tracked|relative_position_index|relative_coords_table|attn_mask)$")

_DOWNSAMPLE = ((r"_downsample_conv_", "_downsample_0_"), (r"_downsample_bn_", "_downsample_1_"))
_TV_VIT_BLOCK = r"encoder_layers_encoder_layer_\1_"
_TV_VIT = (
    (r"^cls_token$", "class_token"), (r"^pos_embed$", "encoder_pos_embedding"), (r"^patch_embed_proj_", "conv_proj_"),
    (r"^blocks_(\d+)_norm1_", _TV_VIT_BLOCK + "ln_1_"), (r"^blocks_(\d+)_norm2_", _TV_VIT_BLOCK + "ln_2_"),
    (r"^blocks_(\d+)_attn_qkv_(weight|bias)$", _TV_VIT_BLOCK + r"self_attention_in_proj_\2"),
    (r"^blocks_(\d+)_attn_proj_", _TV_VIT_BLOCK + "self_attention_out_proj_"),
    (r"^blocks_(\d+)_mlp_fc1_", _TV_VIT_BLOCK + "mlp_0_"), (r"^blocks_(\d+)_mlp_fc2_", _TV_VIT_BLOCK + "mlp_3_"),
    (r"^norm_", "encoder_ln_"), (r"^head_", "heads_head_"),
)
# The DINOv2 release names registers 'register_tokens' and its SwiGLU layers w12 / w3 (timm: fc1 / fc2).
_DINOV2 = ((r"^reg_token$", "register_tokens"),)
_DINOV2_SWIGLU = ((r"_mlp_fc1_", "_mlp_w12_"), (r"_mlp_fc2_", "_mlp_w3_"))
# timm's mobilenetv1_100 groups the 13 separable layers by stage (1, 2, 2, 6, 2).
_V1_STAGE = [(0, 0)] + [(s, j) for s, n in enumerate((1, 2, 2, 6, 2)) for j in range(n)]
_V1_PARTS = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}


def _timm_mobilenet_v1(key):
  if key.startswith("features_0_"):
    return re.sub(r"^features_0_0_", "conv_stem_", re.sub(r"^features_0_1_", "bn1_", key))
  m = re.match(r"^features_(\d+)_(\d)_(.*)$", key)
  if not m:
    return key
  s, j = _V1_STAGE[int(m.group(1))]
  return f"blocks_{s}_{j}_{_V1_PARTS[m.group(2)]}_{m.group(3)}"


# (library, our model family = the vision.models module) -> renames applied to our joined key.
RENAMES = {
    ("torchvision", "resnet"): _DOWNSAMPLE, ("timm", "resnet"): _DOWNSAMPLE, ("timm", "senet"): _DOWNSAMPLE,
    ("torchvision", "vit"): _TV_VIT, ("dinov2", "vit"): _DINOV2,
    ("timm", "mobilenet"): (_timm_mobilenet_v1,),
}
# Which of our families each library's checkpoints can fill (the layouts checked by tests/test_weights.py).
FAMILIES = {
    "torchvision": ("resnet", "alexnet", "vgg", "googlenet", "densenet", "mobilenet", "efficientnet", "convnext",
                    "vit", "swin"),
    "timm": ("resnet", "senet", "preact_resnet", "densenet", "mobilenet", "vit"),
    "dinov2": ("vit",),
}
# Library model names that differ from ours (the rest are spelled the same).
NAMES = {
    "timm": {"resnetv2_18": "preact_resnet18", "resnetv2_50": "preact_resnet50", "mobilenetv1_100": "mobilenet_v1"},
    "dinov2": {f"dinov2_vit{s}14{r}": f"vit_{size}_patch14_{'reg4_' if r else ''}dinov2"
               for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")) for r in ("", "_reg")},
}
# torchvision names v1 differently from timm and has no MobileNet v1; timm's v2/v3 layouts are not torchvision's.
_ONLY = {("torchvision", "mobilenet"): r"^mobilenet_v[23]", ("timm", "mobilenet"): r"^mobilenet_v1$"}


@dataclasses.dataclass(frozen=True)
class Source:
  library: str  # 'torchvision', 'timm' or 'dinov2'
  name: str  # the library's model name
  model: str  # our registry name
  family: str  # our vision.models module


def family_of(model: str) -> str:
  return registry.model_info(model).factory.__module__.rsplit(".", 1)[-1]


def parse_source(spec: str) -> Source:
  """'timm:resnet50.a1_in1k' -> Source('timm', 'resnet50', 'resnet50', 'resnet')."""
  library, sep, name = spec.partition(":")
  if not sep or library not in FAMILIES:
    raise UserError(f"--source {spec!r} must be LIBRARY:MODEL with LIBRARY one of {', '.join(FAMILIES)} "
                    "(e.g. timm:resnet50, torchvision:vit_b_16, dinov2:dinov2_vits14)")
  name = name.split(".")[0] if library == "timm" else name  # timm's pretrained tag: resnet50.a1_in1k
  model = NAMES.get(library, {}).get(name, name)
  known = registry.list_models()
  if model not in known:
    raise UserError(f"{library} model {name!r} has no counterpart here{close_matches(model, known)}; "
                    "see vision.models.list_models()")
  family = family_of(model)
  only = _ONLY.get((library, family))
  if family not in FAMILIES[library] or (only and not re.match(only, model)):
    others = [lib for lib, fams in FAMILIES.items() if family in fams and lib != library]
    raise UserError(f"{library}'s {name} uses a layout this importer does not map"
                    f"{'; try ' + ' or '.join(f'{o}:{name}' for o in others) if others else ''}")
  return Source(library, name, model, family)


def torch_key(path: str, source: Source) -> str:
  """Our 'a/b/kernel' -> the reference key with '.' as '_' ('a_b_weight', after the family's renames)."""
  *modules, leaf = path.split("/")
  key = "_".join(modules + [LEAF_NAMES.get(leaf, leaf)])
  for rule in RENAMES.get((source.library, source.family), ()):
    key = rule(key) if callable(rule) else re.sub(rule[0], rule[1], key)
  if source.library == "dinov2" and "giant" in source.model:
    for pattern, repl in _DINOV2_SWIGLU:
      key = re.sub(pattern, repl, key)
  return key


def _torch_layout(shape, leaf):
  """The shape a tensor of ours has in PyTorch's layout (for messages)."""
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if leaf == "kernel" and len(shape) == 2 else tuple(shape)


def _prefix_tokens(have: int, want: int) -> int:
  for p in range(0, 9):
    if all(n > p and math.isqrt(n - p) ** 2 == n - p for n in (have, want)):
      return p
  return -1


def to_ours(path: str, array: np.ndarray, shape):
  """One tensor from PyTorch's layout into ours; None when it cannot have `shape`."""
  leaf = path.rsplit("/", 1)[-1]
  shape = tuple(shape)
  if leaf == "kernel" and array.ndim == 4 and len(shape) == 2 and array.shape[2:] == (1, 1):
    array = array[:, :, 0, 0].T  # a 1x1 conv classifier (timm's ResNetV2) as our Dense
  elif leaf == "kernel" and array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO (depthwise: (C, 1, kh, kw) -> (kh, kw, 1, C))
  elif leaf == "kernel" and array.ndim == 2:
    array = array.T
  elif leaf == "pos_embed" and array.ndim == 3 and array.shape[1] != shape[1] and array.shape[2] == shape[2]:
    prefix = _prefix_tokens(array.shape[1], shape[1])
    if prefix >= 0:  # another resolution: resample the grid as timm's checkpoint_filter_fn (antialiased bicubic)
      from vision.models.vit import resample_pos_embed
      grid = math.isqrt(shape[1] - prefix)
      array = np.asarray(resample_pos_embed(array, (grid, grid), prefix, antialias=True))
  if array.shape != shape and leaf != "kernel" and array.size == math.prod(shape):
    array = array.reshape(shape)  # e.g. torchvision ConvNeXt's (C, 1, 1) layer scale
  return np.ascontiguousarray(array) if array.shape == shape else None


def adapt_pretrained(key: str, array: np.ndarray, shape):
  """A pretrained leaf of ours for a model at another resolution (ViT position embeddings), or None."""
  return to_ours(key, array, shape) if key.endswith("pos_embed") else None


def _flat(tree) -> dict:
  import flax
  return flax.traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def _dinov2_release(state_dict, abstract):
  """The release adds position embedding 0 to the class token at run time; with registers our tree (as timm's)
  has position embeddings for the patches only, so the class token absorbs it here."""
  pos = state_dict.get("pos_embed")
  want = abstract.get("params", {}).get("pos_embed")
  if "register_tokens" in state_dict and pos is not None and want is not None and pos.shape[1] == want.shape[1] + 1:
    state_dict = dict(state_dict, cls_token=state_dict["cls_token"] + pos[:, :1], pos_embed=pos[:, 1:])
  return state_dict


# Whole-checkpoint fixes applied before the tensor-by-tensor mapping.
_PREPARE = {("dinov2", "vit"): _dinov2_release}


def convert(state_dict: dict, source: Source, abstract: dict) -> dict:
  """{'params', 'batch_stats'} as numpy trees shaped like `abstract` (jax.eval_shape of init).

  Every leaf of ours must find its tensor and every tensor of the checkpoint
  (derived buffers aside) its leaf; the first that does not ends it with a
  UserError naming the key and both shapes.
  """
  import flax
  what = f"{source.library}:{source.name}"
  state_dict = _PREPARE.get((source.library, source.family), lambda sd, _: sd)(state_dict, abstract)
  by_joined = {k.replace(".", "_"): k for k in state_dict if not IGNORED_KEYS.search(k)}
  used, out = set(), {}
  for collection in ("params", "batch_stats"):
    converted = {}
    for path, want in _flat(abstract.get(collection)).items():
      joined = torch_key(path, source)
      key = by_joined.get(joined)
      if key is None:
        raise UserError(f"the {what} checkpoint has no tensor for {collection}/{path} of {source.model} (expected "
                        f"a key like {joined!r} with '.' for '_'{close_matches(joined, by_joined)}); is it a "
                        f"{source.name} checkpoint?")
      array = to_ours(path, state_dict[key], want.shape)
      if array is None:
        raise UserError(f"checkpoint tensor {key!r} has shape {tuple(state_dict[key].shape)} but {source.model}'s "
                        f"{collection}/{path} needs {_torch_layout(want.shape, path.rsplit('/', 1)[-1])} (in "
                        f"PyTorch's layout); is it a {source.name} checkpoint with these settings?")
      converted[path] = array.astype(want.dtype)
      used.add(joined)
    if converted:
      out[collection] = flax.traverse_util.unflatten_dict(converted, sep="/")
  extra = [k for joined, k in by_joined.items() if joined not in used]
  if extra:
    k = extra[0]
    raise UserError(f"checkpoint tensor {k!r} {tuple(state_dict[k].shape)} has no place in {source.model} "
                    f"({len(extra)} unused in all); is it a {what} checkpoint?")
  return out


def _abstract(model, image_size=None, **kw):
  return registry.abstract_variables(model, image_size, **kw)


def model_kwargs(source: Source, state_dict: dict, image_size: int | None = None) -> dict:
  """create_model arguments that make our model hold exactly what the checkpoint holds.

  num_classes comes from the checkpoint's classifier (0 when it has none, as
  backbones); the head leaves are found as those whose shape depends on
  num_classes. GoogLeNet's auxiliary heads and DINOv2's mask token follow the
  checkpoint; `image_size` sets a ViT's position-embedding grid.
  """
  kw = {}
  if source.family == "googlenet":
    kw["aux_logits"] = any(k.startswith("aux1.") for k in state_dict)
  if source.family == "vit":
    kw["use_mask_token"] = "mask_token" in state_dict
    if image_size:
      kw["img_size"] = image_size
  a, b = (_flat(_abstract(source.model, None, num_classes=n, **kw)["params"]) for n in (1000, 7))
  heads = [p for p in a if p.endswith("kernel") and (p not in b or a[p].shape != b[p].shape)]
  by_joined = {k.replace(".", "_"): k for k in state_dict}
  key = by_joined.get(torch_key(heads[0], source)) if heads else None
  kw["num_classes"] = int(state_dict[key].shape[0]) if key is not None else 0
  return kw

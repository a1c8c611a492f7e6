"""Vision Transformers (timm layout, DINOv2 backbones): exact sizes, token layout, masking, resampling, parity.

Parameter counts: sum(p.numel() for p in m.parameters()) with torch 2.14.1 on the meta device, of
`timm.create_model(name, num_classes=1000)` and `(name, num_classes=0)` (timm 1.0.31), and of
`torchvision.models.<name>()` (torchvision 0.29.1). timm's own defaults are num_classes=0 for the
DINOv2 backbones, vit_large_patch32_224 and vit_huge_patch14_224 (their in21k / LVD-142M weights
are headless); ours is 1000 everywhere. The tests that need torch / timm skip without them.
"""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import drop_path_rates
from vision.models import create_model, list_models, model_info, num_params
from vision.models.vit import _bicubic_matrix, resample_pos_embed

# name: (params at 1000 classes, params at num_classes=0), timm 1.0.31.
PARAMS = {
    "vit_tiny_patch16_224": (5_717_416, 5_524_416),
    "vit_small_patch16_224": (22_050_664, 21_665_664),
    "vit_small_patch32_224": (22_878_952, 22_493_952),
    "vit_base_patch16_224": (86_567_656, 85_798_656),
    "vit_base_patch32_224": (88_224_232, 87_455_232),
    "vit_base_patch8_224": (86_576_872, 85_807_872),
    "vit_large_patch16_224": (304_326_632, 303_301_632),
    "vit_large_patch32_224": (306_535_400, 305_510_400),
    "vit_huge_patch14_224": (632_045_800, 630_764_800),
    "vit_small_patch14_dinov2": (22_441_192, 22_056_192),
    "vit_base_patch14_dinov2": (87_348_712, 86_579_712),
    "vit_large_patch14_dinov2": (305_392_616, 304_367_616),
    "vit_giant_patch14_dinov2": (1_138_016_232, 1_136_479_232),
    "vit_small_patch14_reg4_dinov2": (22_442_344, 22_057_344),
    "vit_base_patch14_reg4_dinov2": (87_351_016, 86_582_016),
    "vit_large_patch14_reg4_dinov2": (305_395_688, 304_370_688),
    "vit_giant_patch14_reg4_dinov2": (1_138_020_840, 1_136_483_840),
}
# torchvision name: (timm name, torchvision 0.29.1 count at 1000 classes).
ALIASES = {
    "vit_b_16": ("vit_base_patch16_224", 86_567_656),
    "vit_b_32": ("vit_base_patch32_224", 88_224_232),
    "vit_l_16": ("vit_large_patch16_224", 304_326_632),
    "vit_l_32": ("vit_large_patch32_224", 306_535_400),
    "vit_h_14": ("vit_huge_patch14_224", 632_045_800),
}
# name: (width, patch grid side at the default size, register tokens).
TOKENS = {
    "vit_tiny_patch16_224": (192, 14, 0), "vit_small_patch16_224": (384, 14, 0), "vit_small_patch32_224": (384, 7, 0),
    "vit_base_patch16_224": (768, 14, 0), "vit_base_patch32_224": (768, 7, 0), "vit_base_patch8_224": (768, 28, 0),
    "vit_large_patch16_224": (1024, 14, 0), "vit_large_patch32_224": (1024, 7, 0),
    "vit_huge_patch14_224": (1280, 16, 0),
    **{f"vit_{s}_patch14_{r}dinov2": (d, 37, 4 if r else 0)
       for s, d in [("small", 384), ("base", 768), ("large", 1024), ("giant", 1536)] for r in ("", "reg4_")},
}

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                 "xla_llvm_disable_expensive_passes": True}


def _jit(fn):
  return jax.jit(fn, compiler_options=_FAST_COMPILE)


@functools.cache
def _abstract(name):
  """Variables, logits and forward_features output (as ShapeDtypeStructs) of one init trace, batch 2.

  __call__ runs forward_features; the interceptor records its output, so no second trace of the
  40-block giants is needed.
  """
  feats = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "forward_features":
      feats.append(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out))
    return out

  size = model_info(name).default_image_size
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  with nn.intercept_methods(record):
    logits, variables = jax.eval_shape(lambda x: create_model(name).init_with_output(jax.random.key(0), x), x)
  (f,) = feats
  return variables, logits, f


def test_every_variant_is_registered():
  assert set(list_models("vit_*")) == set(PARAMS) | set(ALIASES)
  for name in PARAMS:
    assert model_info(name).default_image_size == (518 if "dinov2" in name else 224)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_output_and_feature_shapes(name):
  variables, logits, f = _abstract(name)
  params = variables["params"]
  with_head, headless = PARAMS[name]
  assert num_params(params) == with_head
  assert num_params({k: v for k, v in params.items() if k != "head"}) == headless
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  d, g, r = TOKENS[name]
  assert f["x_norm_clstoken"].shape == (2, d)
  assert f["x_norm_regtokens"].shape == (2, r, d)
  assert f["x_norm_patchtokens"].shape == (2, g * g, d)
  assert f["x_prenorm"].shape == (2, 1 + r + g * g, d)
  # timm's layout: DINOv2 with registers has no position embedding for the class / register tokens.
  assert params["pos_embed"].shape == (1, g * g + (0 if r else 1), d)
  assert ("reg_token" in params) == bool(r) and set(params) >= {"patch_embed", "cls_token", "norm", "head"}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_torchvision_names_are_aliases(alias):
  name, torchvision_count = ALIASES[alias]
  info = model_info(alias)
  assert info.factory is model_info(name).factory and info.extra["alias_of"] == name
  assert info.default_image_size == 224 and PARAMS[name][0] == torchvision_count


def test_headless_returns_pre_logits():
  # timm builds the DINOv2 backbones headless by default; num_classes=0 drops exactly the head.
  model = create_model("vit_small_patch14_reg4_dinov2", num_classes=0)
  x = jax.ShapeDtypeStruct((3, 56, 56, 3), jnp.float32)  # 4x4 patches: pos_embed resampled from 37x37
  out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, mutable=True), x)
  assert num_params(variables["params"]) == PARAMS["vit_small_patch14_reg4_dinov2"][1] == 22_057_344
  assert out.shape == (3, 384) and variables["intermediates"]["pre_logits"][0].shape == (3, 384)


def test_giant_layout_mirrors_timm_names():
  p = _abstract("vit_giant_patch14_reg4_dinov2")[0]["params"]
  blk = p["blocks_39"]
  assert "blocks_40" not in p
  assert p["patch_embed"]["proj"]["kernel"].shape == (14, 14, 3, 1536)
  assert p["cls_token"].shape == (1, 1, 1536) and p["reg_token"].shape == (1, 4, 1536)
  assert blk["attn"]["qkv"]["kernel"].shape == (1536, 3 * 1536) and blk["attn"]["qkv"]["bias"].shape == (4608,)
  assert blk["ls1"]["gamma"].shape == blk["ls2"]["gamma"].shape == (1536,)
  # SwiGLUPacked: fc1 packs 2 x 4096, fc2 reads the gated 4096.
  assert blk["mlp"]["fc1"]["kernel"].shape == (1536, 8192) and blk["mlp"]["fc2"]["kernel"].shape == (4096, 1536)
  assert set(blk) == {"norm1", "attn", "ls1", "norm2", "mlp", "ls2"} and set(blk["norm1"]) == {"scale", "bias"}
  assert "ls1" not in _abstract("vit_base_patch16_224")[0]["params"]["blocks_0"]  # no layer scale in plain ViT


def test_attn_implementation_reaches_every_attention():
  seen = []

  def record(next_fun, args, kwargs, context):
    if type(context.module).__name__ == "Attention":
      seen.append(context.module.implementation)
    return next_fun(*args, **kwargs)

  model = create_model("vit_tiny_patch16_224", depth=3, attn_implementation="xla")
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert seen == ["xla"] * 3


# ---------------------------------------------------------------- position-embedding resampling

def test_bicubic_weights_by_hand():
  # 4 -> 2 (align_corners=False): source 2i + 0.5, t = 0.5, Keys a=-0.75: taps
  # W(1.5) = -0.09375 and W(0.5) = 0.59375; the left tap at -1 clamps onto 0.
  np.testing.assert_allclose(_bicubic_matrix(4, 2), [[0.5, 0.59375, -0.09375, 0], [0, -0.09375, 0.59375, 0.5]])
  for args in [(37, 16), (5, 7), (16, 7, False, 0.1), (37, 16, True), (5, 9, True)]:
    np.testing.assert_allclose(_bicubic_matrix(*args).sum(axis=1), 1.0, rtol=1e-6)  # constants stay constant
  pe = np.random.default_rng(0).standard_normal((1, 1 + 25, 4)).astype(np.float32)
  assert resample_pos_embed(pe, 5) is pe
  out = resample_pos_embed(pe, (3, 7), num_prefix_tokens=1)
  assert out.shape == (1, 1 + 21, 4) and np.array_equal(out[:, 0], pe[:, 0])


@pytest.mark.parametrize("old,new,antialias,offset", [
    ((37, 37), (16, 16), False, 0.0),  # DINOv2's 518px grid to 224px
    ((5, 5), (7, 7), False, 0.0),
    ((14, 14), (23, 9), False, 0.0),
    ((14, 14), (23, 9), True, 0.0),  # timm's dynamic_img_size default
    ((37, 37), (16, 16), True, 0.0),
    ((16, 16), (7, 7), False, 0.1),  # DINOv2's interpolate_offset (torch's scale_factor path)
])
def test_resample_pos_embed_matches_torch(old, new, antialias, offset):
  torch = pytest.importorskip("torch")
  pe = np.random.default_rng(0).standard_normal((1, 1 + old[0] * old[1], 8)).astype(np.float32)
  grid = torch.from_numpy(pe[:, 1:]).reshape(1, *old, 8).permute(0, 3, 1, 2)
  size = dict(scale_factor=tuple((n + offset) / o for n, o in zip(new, old))) if offset else dict(size=new)
  ref = torch.nn.functional.interpolate(grid, mode="bicubic", align_corners=False, antialias=antialias, **size)
  ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 8).numpy()
  out = np.asarray(resample_pos_embed(pe, new, 1, antialias=antialias, offset=offset))
  np.testing.assert_array_equal(out[:, :1], pe[:, :1])
  assert np.abs(out[:, 1:] - ref).max() < 5e-6 * np.abs(ref).max()


# ---------------------------------------------------------------- small real runs

_SMALL = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, num_classes=10)


def _variables(model, x):
  """Random variables made on the host from the abstract tree (jit(model.init) would cost more to
  compile than the programs under test; real init is test_init_follows_timm): kernels N(0, 1/fan_in),
  norms (1, 0), biases 0, layer scale 0.5 (so a dropped branch shows), tokens and pos_embed N(0, 0.02)."""
  rng = np.random.default_rng(0)

  def make(path, leaf):
    name = path[-1].key
    if name in ("scale", "bias", "gamma"):
      return np.full(leaf.shape, {"scale": 1.0, "bias": 0.0, "gamma": 0.5}[name], np.float32)
    std = np.sqrt(1 / np.prod(leaf.shape[:-1])) if name == "kernel" else 0.02
    return (rng.standard_normal(leaf.shape) * std).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, jax.eval_shape(lambda: model.init(jax.random.key(0), x)))


def _images(n, size=32, seed=1):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def test_init_follows_timm():
  # The giant DINOv2 block kinds (SwiGLU, layer scale 1e-5) with registers and a mask token.
  model = create_model("vit_giant_patch14_reg4_dinov2", embed_dim=48, num_heads=2, depth=1, patch_size=8, img_size=64,
                       use_mask_token=True)
  p = _jit(lambda x: model.init(jax.random.key(0), x))(jnp.zeros((1, 64, 64, 3)))["params"]
  blk = p["blocks_0"]
  stds = [np.std(p["pos_embed"]), np.std(blk["attn"]["qkv"]["kernel"]), np.std(p["head"]["kernel"])]
  np.testing.assert_allclose(stds, 0.02, rtol=0.1)  # trunc_normal_(std=.02) within +-2: effectively N(0, 0.02)
  assert np.abs(p["cls_token"]).max() < 1e-5 and np.abs(p["reg_token"]).max() < 1e-5  # normal_(std=1e-6)
  np.testing.assert_array_equal(blk["ls1"]["gamma"], np.float32(1e-5))
  np.testing.assert_array_equal(p["mask_token"], 0.0)
  np.testing.assert_array_equal(blk["attn"]["qkv"]["bias"], 0.0)
  np.testing.assert_array_equal(blk["norm1"]["scale"], 1.0)
  # timm GluMlp.init_weights: hidden int(48 * 2.66667 * 2) = 256; the ungated half starts at weights ~0, bias 1.
  fc1 = blk["mlp"]["fc1"]
  assert fc1["kernel"].shape == (48, 256) and np.abs(fc1["kernel"][:, 128:]).max() < 1e-5
  np.testing.assert_array_equal(fc1["bias"], np.repeat([0.0, 1.0], 128))
  assert np.std(fc1["kernel"][:, :128]) > 0.015


def test_mask_token_replaces_patch_embeddings():
  model = create_model("vit_small_patch14_reg4_dinov2", **_SMALL, use_mask_token=True)
  a, b = _images(2)
  variables = _variables(model, a[None])
  assert variables["params"]["mask_token"].shape == (1, 32)
  assert "mask_token" not in jax.eval_shape(lambda: create_model("vit_small_patch14_reg4_dinov2", **_SMALL).init(
      jax.random.key(0), a[None]))["params"]
  # Make the mask token equal to b's embedding of patch 5 (row 1, column 1): masking patch 5 of `a`
  # must then equal pasting b's pixels there.
  emb = model.apply(variables, b[None], method=lambda m, x: m.patch_embed(x))
  params = {**variables["params"], "mask_token": emb[:, 1, 1]}
  pasted = a.copy()
  pasted[8:16, 8:16] = b[8:16, 8:16]
  masks = np.zeros((2, 16), bool)
  masks[0, 5] = True

  def run(params):
    ff = lambda x, m=None: model.apply({"params": params}, x, method="forward_features", masks=m)
    return ff(np.stack([a, a]), masks), ff(np.stack([pasted, a])), ff(np.stack([a, a]), np.zeros_like(masks))

  masked, reference, unmasked = _jit(run)(params)
  chex.assert_trees_all_close(masked, reference, atol=1e-5)
  chex.assert_trees_all_close(unmasked["x_prenorm"][1], masked["x_prenorm"][1], atol=1e-6)  # row 1 unmasked
  assert not np.allclose(masked["x_prenorm"][0], masked["x_prenorm"][1], atol=1e-3)
  with pytest.raises(ValueError, match="use_mask_token"):
    create_model("vit_small_patch14_reg4_dinov2", **_SMALL).apply(variables, a[None], method="forward_features",
                                                                  masks=masks[:1])


def test_registers_gap_and_intermediate_layers():
  # Registers without no_embed_class: timm's pos_embed then covers class + register tokens too.
  model = create_model("vit_tiny_patch16_224", **{**_SMALL, "depth": 3}, reg_tokens=2, global_pool="avg")
  x = _images(2)
  variables = _variables(model, x)
  params = variables["params"]
  assert params["pos_embed"].shape == (1, 1 + 2 + 16, 32) and params["reg_token"].shape == (1, 2, 32)
  assert "fc_norm" in params and "norm" not in params  # timm: avg pooling moves the final norm after the pool

  def run(v, x):
    logits, state = model.apply(v, x, mutable=["intermediates"])
    f = model.apply(v, x, method="forward_features")
    raw = model.apply(v, x, method="get_intermediate_layers", n=(0, -1), norm=False)
    fc_norm = model.apply(v, jnp.mean(f["x_prenorm"][:, 3:], axis=1), method=lambda m, y: m.fc_norm(y))
    return logits, state["intermediates"]["pre_logits"][0], f, raw, fc_norm

  logits, pre_logits, f, raw, fc_norm = _jit(run)(variables, x)
  chex.assert_shape(logits, (2, 10))
  chex.assert_trees_all_close(pre_logits, fc_norm, atol=1e-6)  # mean over patch tokens only (no cls/registers)
  chex.assert_shape([f["x_norm_regtokens"], f["x_norm_patchtokens"]], [(2, 2, 32), (2, 16, 32)])
  assert len(raw) == 2 and raw[0].shape == (2, 19, 32) and not np.allclose(raw[0], raw[1], atol=1e-3)
  chex.assert_trees_all_close(raw[1], f["x_prenorm"], atol=1e-6)  # the last block; no final norm with avg pooling

  # Token pooling: the last normed intermediate is forward_features' normed sequence.
  model = create_model("vit_small_patch14_reg4_dinov2", **_SMALL)
  variables = _variables(model, x)
  f, layers = _jit(lambda v, x: (model.apply(v, x, method="forward_features"),
                                 model.apply(v, x, method="get_intermediate_layers", n=2)))(variables, x)
  assert len(layers) == 2 and all(y.shape == (2, 21, 32) for y in layers)
  last = layers[1]
  tokens = jnp.concatenate([f["x_norm_clstoken"][:, None], f["x_norm_regtokens"], f["x_norm_patchtokens"]], 1)
  chex.assert_trees_all_close(last, tokens, atol=1e-6)
  np.testing.assert_allclose(np.std(np.asarray(last), axis=-1), 1.0, rtol=1e-2)  # LayerNorm scale 1, bias 0


def test_forward_backward_drop_path_and_bfloat16():
  # Registers, layer scale (0.5 from _variables), an input size other than img_size.
  model = create_model("vit_small_patch14_reg4_dinov2", **_SMALL, drop_path_rate=0.5)
  model_bf16 = model.clone(dtype=jnp.bfloat16)
  x = _images(2, size=48)  # 6x6 patches: pos_embed resampled from 4x4
  labels = np.array([3, 7])
  with drop_path_rates() as rates:
    variables = _variables(model, x)
  np.testing.assert_allclose(rates, [0, 0, 0.5, 0.5])  # timm: linear in the block index, two branches each

  def run(params):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(2)})
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)), logits
    (loss, train_logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, train_logits, grads, model.apply({"params": params}, x), model_bf16.apply({"params": params}, x)

  loss, train_logits, grads, eval_logits, bf16_logits = _jit(run)(variables["params"])
  chex.assert_tree_all_finite((loss, train_logits, grads, eval_logits, bf16_logits))
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)  # drop path acts in training only
  for leaf in ("cls_token", "reg_token", "pos_embed"):
    assert float(jnp.abs(grads[leaf]).sum()) > 0, leaf
  assert float(jnp.abs(grads["patch_embed"]["proj"]["kernel"]).sum()) > 0
  assert bf16_logits.dtype == jnp.bfloat16
  # Softmax and LayerNorm statistics run in float32: bf16 logits stay within bf16 rounding of float32.
  assert float(jnp.abs(bf16_logits.astype(jnp.float32) - eval_logits).max()) < 0.05 * float(jnp.abs(eval_logits).max())
  abstract = jax.eval_shape(lambda: model_bf16.init(jax.random.key(0), x))
  assert {p.dtype for p in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------- parity with timm

def _timm_to_flax(torch_model, abstract):
  """timm state_dict -> our tree by the naming rule: '.' -> '_', weight -> kernel / scale, transposed."""
  sd = {k.replace(".", "_"): v.detach().numpy() for k, v in torch_model.state_dict().items()}

  def take(path, leaf):
    names = [p.key for p in path]
    v = sd.pop("_".join(names[:-1] + [{"kernel": "weight", "scale": "weight"}.get(names[-1], names[-1])]))
    if names[-1] == "kernel":
      v = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
    assert v.shape == leaf.shape, (names, v.shape, leaf.shape)
    return v

  tree = jax.tree_util.tree_map_with_path(take, abstract)
  assert not sd, f"timm keys without a counterpart: {sorted(sd)}"
  return tree


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_giant_patch14_reg4_dinov2", "vit_huge_patch14_224"])
def test_tree_names_and_shapes_equal_timm_state_dict(name):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  with torch.device("meta"):
    tm = timm.create_model(name, num_classes=1000)
  abstract = _abstract(name)[0]["params"]
  sd = {k: v for k, v in tm.state_dict().items()}
  shapes = {k: tuple(v.shape) for k, v in sd.items()}
  ours = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    names = [p.key for p in path]
    key = "_".join(names[:-1] + [{"kernel": "weight", "scale": "weight"}.get(names[-1], names[-1])])
    shape = leaf.shape
    if names[-1] == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    ours[key] = shape
  assert ours == {k.replace(".", "_"): v for k, v in shapes.items()}


# (timm name, timm kwargs (also ours), our extra kwargs, native size, other size)
_PARITY = [
    ("vit_tiny_patch16_224", dict(depth=3), {}, 224, 160),
    ("vit_small_patch14_reg4_dinov2", dict(embed_dim=192, num_heads=3, depth=2, img_size=70, num_classes=10,
                                           global_pool="avg"), {}, 70, 98),
    ("vit_giant_patch14_dinov2", dict(embed_dim=192, num_heads=3, depth=2, img_size=70, num_classes=10), {}, 70, 112),
]


@pytest.mark.parametrize("name,kwargs,ours,size,other", _PARITY, ids=[p[0] for p in _PARITY])
def test_matches_timm(name, kwargs, ours, size, other):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  tm = timm.create_model(name, dynamic_img_size=True, **kwargs).eval()
  with torch.no_grad():  # make biases, norms, layer scales and prefix tokens matter
    for k, p in tm.named_parameters():
      if k.endswith("bias") or "gamma" in k or "token" in k:
        p.normal_(0, 0.1)
      elif "norm" in k:
        p.normal_(1, 0.1)
  # timm's dynamic_img_size resamples with torch's antialiased bicubic.
  model = create_model(name, **kwargs, **ours, interpolate_antialias=True)
  xs = [_images(2, s, seed=s) for s in (size, other)]
  params = _timm_to_flax(tm, jax.eval_shape(lambda: model.init(jax.random.key(0), xs[0]))["params"])
  ours_out = _jit(lambda p, *xs: [(model.apply({"params": p}, x),
                                   model.apply({"params": p}, x, method="forward_features")) for x in xs])(params, *xs)
  for x, (logits, f) in zip(xs, ours_out):
    with torch.no_grad():
      tokens = tm.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
      ref_logits = tm.forward_head(tokens).numpy()
    ref_tokens = tokens.numpy()
    n = tm.num_prefix_tokens
    rel = lambda a, b: float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())
    assert rel(logits, ref_logits) < 1e-4, x.shape
    assert rel(f["x_norm_clstoken"], ref_tokens[:, 0]) < 1e-4
    assert rel(f["x_norm_regtokens"], ref_tokens[:, 1:n]) < 1e-4 if n > 1 else f["x_norm_regtokens"].shape[1] == 0
    assert rel(f["x_norm_patchtokens"], ref_tokens[:, n:]) < 1e-4


def test_configs_follow_their_recipes():
  import importlib.util
  import os

  from conftest import ROOT

  def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)

  c = load("vit_b16_imagenet")  # DeiT: 5e-4 x 1024/512, cosine to 1e-5, 5 warmup epochs
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.train.num_epochs) == ("adamw", 1e-3, 0.05, 300.0)
  assert c.optim.warmup_epochs == 5.0 and np.isclose(c.optim.lr * c.optim.end_lr_factor, 2e-5)
  assert c.optim.grad_clip_norm == 1.0 and c.train.label_smoothing == 0.1 and c.model.dtype == "bfloat16"
  assert c.model.kwargs.drop_path_rate == 0.1 and not c.optim.decay_norm_and_bias
  c = load("vit_b16_imagenet", "recipe=torchvision,batch=4096")
  assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs, c.train.label_smoothing) == (3e-3, 0.3, 30.0, 0.11)
  c = load("vit_s16_cifar10")
  assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs, c.train.num_epochs) == (1e-3, 0.05, 10.0, 100.0)
  model = create_model(c.model.name, num_classes=10, **dict(c.model.kwargs))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
  assert params["pos_embed"].shape == (1, 1 + 8 * 8, 384) and params["patch_embed"]["proj"]["kernel"].shape[:2] == (4, 4)

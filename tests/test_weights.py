"""Weight import: randomly initialised torchvision/timm models, converted, compute what the reference computes.

Each case builds the reference model with random weights, makes every
parameter and buffer matter (BatchNorm statistics, zero biases, 1e-6 layer
scales and the like are randomised, so a wrong or transposed mapping cannot
hide), converts its state_dict, and compares eval-mode outputs in float32 at the
model's native resolution: max |ours - ref| / max |ref| < 1e-4.
Needs the [torch] extra (torch, torchvision, timm); skipped without it.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from vision.errors import UserError
from vision.models import create_model, registry
from vision.weights import convert, load_state_dict, model_kwargs, parse_source, read_safetensors

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

TOLERANCE = 1e-4


def _randomize(module, seed=0):
  """Every floating tensor of the state_dict becomes informative (in place: state_dict shares storage)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if not t.is_floating_point():
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif name.endswith("running_mean"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.2)
      elif t.numel() == 1 or float(t.std()) == 0 or float(t.abs().max()) < 1e-3:
        t.add_(torch.randn(t.shape, generator=g) * 0.2)  # ones, zeros, 1e-6 layer scales, tiny tokens
  return module.eval()


def _state_dict(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _apply(model, variables, x_nchw, method=None):
  x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False, method=method))
  return fn(variables, x)


def _relative_error(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _check(spec, reference, size, batch=2, seed=0, overrides=None, state_dict=None):
  """Converts `reference` (a torch module) as `spec` and returns the max relative error of the logits."""
  torch.manual_seed(seed)
  reference = _randomize(reference, seed)
  x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
  with torch.no_grad():
    ref = reference(x).numpy()
  sd = state_dict if state_dict is not None else _state_dict(reference)
  source = parse_source(spec)
  kw = {**model_kwargs(source, sd), **(overrides or {})}
  variables = convert(sd, source, registry.abstract_variables(source.model, size, **kw))
  return _relative_error(_apply(create_model(source.model, **kw), variables, x.numpy()), ref)


def _tv(name, **kw):
  return getattr(torchvision.models, name)(**kw)


# (source, torch constructor, native resolution): one per architecture and layout.
CASES = [
    ("torchvision:resnet50", lambda: _tv("resnet50"), 224),
    ("torchvision:resnext50_32x4d", lambda: _tv("resnext50_32x4d"), 224),
    ("torchvision:wide_resnet50_2", lambda: _tv("wide_resnet50_2"), 224),
    ("timm:seresnet50", lambda: timm.create_model("seresnet50"), 224),
    ("timm:resnetv2_50", lambda: timm.create_model("resnetv2_50"), 224),
    ("torchvision:alexnet", lambda: _tv("alexnet"), 224),
    ("torchvision:vgg11_bn", lambda: _tv("vgg11_bn"), 224),
    ("torchvision:googlenet", lambda: _tv("googlenet", aux_logits=True, init_weights=True), 224),
    ("torchvision:densenet121", lambda: _tv("densenet121"), 224),
    ("timm:mobilenetv1_100", lambda: timm.create_model("mobilenetv1_100"), 224),
    ("torchvision:mobilenet_v2", lambda: _tv("mobilenet_v2"), 224),
    ("torchvision:mobilenet_v3_large", lambda: _tv("mobilenet_v3_large"), 224),
    ("torchvision:mobilenet_v3_small", lambda: _tv("mobilenet_v3_small"), 224),
    ("torchvision:efficientnet_b0", lambda: _tv("efficientnet_b0"), 224),
    ("torchvision:convnext_tiny", lambda: _tv("convnext_tiny"), 224),
    ("torchvision:swin_t", lambda: _tv("swin_t"), 224),
]


@pytest.mark.parametrize("spec,make,size", CASES, ids=[c[0] for c in CASES])
def test_logits_match_the_reference(spec, make, size):
  assert _check(spec, make(), size) < TOLERANCE


def _timm(name, **kw):
  return timm.create_model(name, **kw)


# ViT/DINOv2 at native resolution; the DINOv2 cases at depth 2 (and the giant's SwiGLU at width 384) to stay fast.
_SMALL = dict(depth=2)
_GIANT = dict(depth=2, embed_dim=384, num_heads=6, img_size=224)
VIT_CASES = [
    ("torchvision:vit_b_16", lambda: _tv("vit_b_16"), 224, None),
    ("timm:vit_tiny_patch16_224", lambda: _timm("vit_tiny_patch16_224"), 224, None),
    ("timm:vit_small_patch14_dinov2", lambda: _timm("vit_small_patch14_dinov2", **_SMALL), 518, _SMALL),
    ("timm:vit_small_patch14_reg4_dinov2", lambda: _timm("vit_small_patch14_reg4_dinov2", **_SMALL), 518, _SMALL),
    ("timm:vit_giant_patch14_dinov2", lambda: _timm("vit_giant_patch14_dinov2", **_GIANT), 224, _GIANT),
]


@pytest.mark.parametrize("spec,make,size,overrides", VIT_CASES, ids=[c[0] for c in VIT_CASES])
def test_vit_logits_and_patch_tokens_match_the_reference(spec, make, size, overrides):
  """Logits (or pooled features) and the final patch tokens (forward_features vs timm's forward_features)."""
  ref_model = _randomize(make())
  assert _check(spec, ref_model, size, overrides=overrides) < TOLERANCE
  if spec.startswith("timm:"):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
      tokens = ref_model.forward_features(x)[:, ref_model.num_prefix_tokens:].numpy()
    source = parse_source(spec)
    sd = _state_dict(ref_model)
    kw = {**model_kwargs(source, sd), **(overrides or {})}
    variables = convert(sd, source, registry.abstract_variables(source.model, size, **kw))
    ours = _apply(create_model(source.model, **kw), variables, x.numpy(), method="forward_features")
    assert _relative_error(ours["x_norm_patchtokens"], tokens) < TOLERANCE


def _as_dinov2_release(sd, seed=0):
  """A timm DINOv2 state_dict in the facebookresearch/dinov2 release's names and conventions: register_tokens,
  mask_token, SwiGLU w12/w3, and (with registers) the class token's position embedding kept in pos_embed."""
  rng = np.random.default_rng(seed)
  out = {k.replace("reg_token", "register_tokens").replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
         if ("mlp.fc" in k and "giant" in sd.get("__name__", "")) or "reg_token" in k else k: v
         for k, v in sd.items() if k != "__name__"}
  d = out["cls_token"].shape[-1]
  out["mask_token"] = rng.normal(size=(1, d)).astype(np.float32)
  if "register_tokens" in out:  # timm folded pos_embed[:, 0] into cls_token; the release keeps it apart
    p0 = rng.normal(size=(1, 1, d)).astype(np.float32)
    out["cls_token"], out["pos_embed"] = out["cls_token"] - p0, np.concatenate([p0, out["pos_embed"]], axis=1)
  return out


@pytest.mark.parametrize("name,release,size,overrides", [
    ("vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg", 518, _SMALL),
    ("vit_giant_patch14_dinov2", "dinov2_vitg14", 224, _GIANT),
])
def test_dinov2_release_checkpoints(name, release, size, overrides):
  ref = _randomize(_timm(name, **overrides))
  sd = _as_dinov2_release({**_state_dict(ref), "__name__": name})
  assert ("mlp.w12" in str(list(sd))) == ("giant" in name) and ("register_tokens" in sd) == ("reg" in name)
  source = parse_source(f"dinov2:{release}")
  assert source.model == name
  kw = {**model_kwargs(source, sd), **overrides}
  assert kw["use_mask_token"] and kw["num_classes"] == 0
  variables = convert(sd, source, registry.abstract_variables(source.model, size, **kw))
  np.testing.assert_array_equal(variables["params"]["mask_token"], sd["mask_token"])
  x = torch.randn(2, 3, size, size)
  with torch.no_grad():
    want = ref.forward_features(x)
  ours = _apply(create_model(name, **kw), variables, x.numpy(), method="forward_features")
  assert _relative_error(ours["x_norm_clstoken"], want[:, 0].numpy()) < TOLERANCE
  assert _relative_error(ours["x_norm_patchtokens"], want[:, ref.num_prefix_tokens:].numpy()) < TOLERANCE


def test_vit_position_embeddings_follow_the_image_size():
  """Converting for another resolution resamples pos_embed as timm's loader does (DINOv2's 518 -> 224)."""
  ref = _randomize(_timm("vit_small_patch14_dinov2", **_SMALL))
  sd = _state_dict(ref)
  source = parse_source("timm:vit_small_patch14_dinov2")
  kw = {**model_kwargs(source, sd, image_size=224), **_SMALL}
  assert kw["img_size"] == 224
  variables = convert(sd, source, registry.abstract_variables(source.model, 224, **kw))
  assert variables["params"]["pos_embed"].shape == (1, 1 + 16 * 16, 384)
  from timm.layers import resample_abs_pos_embed
  want = resample_abs_pos_embed(torch.from_numpy(sd["pos_embed"]), (16, 16), num_prefix_tokens=1).numpy()
  assert _relative_error(variables["params"]["pos_embed"], want) < 1e-5


def test_files_and_cli_resnet18_safetensors_and_pth(tmp_path):
  """The convert command on both file formats; the .safetensors path is read without torch."""
  from safetensors.torch import save_file
  ref = _randomize(_tv("resnet18"), seed=3)
  sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
  save_file(sd, str(tmp_path / "r18.safetensors"))
  torch.save(sd, str(tmp_path / "r18.pth"))
  a, b = load_state_dict(str(tmp_path / "r18.safetensors")), load_state_dict(str(tmp_path / "r18.pth"))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cli = lambda *args: subprocess.run([sys.executable, "-m", "vision.weights.convert", *args], capture_output=True,
                                     text=True, env=env, cwd=ROOT, timeout=300)
  # Reading safetensors must not import torch: the CLI runs with torch made unimportable.
  code = ("import sys; sys.modules['torch'] = None; from vision.weights.convert import main; main()")
  out = str(tmp_path / "converted")
  proc = subprocess.run([sys.executable, "-c", code, "--source", "torchvision:resnet18", "--checkpoint",
                         str(tmp_path / "r18.safetensors"), "--out", out], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "11,689,512 parameters, 1000 classes" in proc.stdout
  meta = json.load(open(os.path.join(out, "checkpoints", "0", "meta", "metadata")))
  assert meta["model"] == "resnet18" and meta["num_classes"] == 1000 and meta["source"] == "torchvision:resnet18"
  # Never overwrites.
  proc = cli("--source", "torchvision:resnet18", "--checkpoint", str(tmp_path / "r18.pth"), "--out", out)
  assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr
  # The converted checkpoint computes torchvision's logits.
  from vision.train import checkpoint as ckpt_lib
  from vision.train import mesh as mesh_lib
  restored = ckpt_lib.Checkpointer(out, read_only=True, best_metric="").restore_arrays(
      0, mesh_lib.make_mesh(jax.devices()[:1]))
  x = torch.randn(2, 3, 224, 224)
  with torch.no_grad():
    want = ref(x).numpy()
  assert _relative_error(_apply(create_model("resnet18"), restored, x.numpy()), want) < TOLERANCE


def test_safetensors_reader_handles_bfloat16_and_float16(tmp_path):
  from safetensors.torch import save_file
  t = {"a": torch.randn(3, 4).bfloat16(), "b": torch.randn(5).half(), "c": torch.arange(6).reshape(2, 3)}
  save_file(t, str(tmp_path / "x.safetensors"))
  raw = read_safetensors(str(tmp_path / "x.safetensors"))
  assert str(raw["a"].dtype) == "bfloat16" and raw["b"].dtype == np.float16 and raw["c"].dtype == np.int64
  sd = load_state_dict(str(tmp_path / "x.safetensors"))
  np.testing.assert_array_equal(sd["a"], t["a"].float().numpy())
  np.testing.assert_array_equal(sd["b"], t["b"].float().numpy())
  np.testing.assert_array_equal(sd["c"], t["c"].numpy())
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
  with pytest.raises(UserError, match="not a safetensors file"):
    load_state_dict(str(tmp_path / "bad.safetensors"))


def test_mismatches_name_the_key_and_both_shapes():
  sd = _state_dict(_tv("resnet18"))
  source = parse_source("torchvision:resnet18")
  abstract = registry.abstract_variables("resnet18", num_classes=1000)
  bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((64, 64, 5, 5), np.float32)})
  with pytest.raises(UserError, match=r"'layer1.0.conv1.weight' has shape \(64, 64, 5, 5\) but resnet18's "
                                      r"params/layer1_0/conv1/kernel needs \(64, 64, 3, 3\)"):
    convert(bad, source, abstract)
  missing = {k: v for k, v in sd.items() if k != "layer2.0.downsample.1.running_var"}
  with pytest.raises(UserError, match=r"no tensor for batch_stats/layer2_0/downsample_bn/var"):
    convert(missing, source, abstract)
  with pytest.raises(UserError, match=r"'extra.weight' \(3,\) has no place in resnet18"):
    convert(dict(sd, **{"extra.weight": np.zeros(3, np.float32)}), source, abstract)
  with pytest.raises(UserError, match="timm's efficientnet_b0 uses a layout this importer does not map; "
                                      "try torchvision:efficientnet_b0"):
    parse_source("timm:efficientnet_b0")
  with pytest.raises(UserError, match=r"no counterpart here \(did you mean: resnet50"):
    parse_source("torchvision:resnet55")


def _config(name):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  return __import__(name).get_config()


def test_finetune_from_a_converted_checkpoint_with_a_new_head(tmp_path, data_dir):
  """torchvision resnet18 (1000 classes) -> convert -> train.py init_from on the digits (10 classes)."""
  from conftest import run_cli
  from vision.train import checkpoint as ckpt_lib
  from vision.train import mesh as mesh_lib
  from vision.weights.convert import convert_checkpoint
  torch.save(_randomize(_tv("resnet18"), seed=5).state_dict(), str(tmp_path / "r18.pth"))
  pretrained, workdir = str(tmp_path / "pretrained"), str(tmp_path / "finetune")
  convert_checkpoint("torchvision:resnet18", str(tmp_path / "r18.pth"), pretrained)
  proc = run_cli("train.py", f"--config={ROOT}/configs/lenet_digits.py", f"--workdir={workdir}",
                 f"--config.data.data_dir={data_dir}", "--config.model.name=resnet18", "--config.data.channels=3",
                 f"--config.train.init_from={pretrained}", "--config.train.num_steps=3", "--config.train.log_every=3",
                 "--config.train.eval_every=3", "--config.train.checkpoint_every=3", "--config.optim.lr=1e-3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "kept fresh ['fc/bias', 'fc/kernel']" in proc.stderr
  assert "final test: top1" in proc.stdout

  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  before = ckpt_lib.Checkpointer(pretrained, read_only=True, best_metric="").restore_arrays(0, mesh)["params"]
  after = ckpt_lib.Checkpointer(workdir, read_only=True, best_metric="").restore_arrays(3, mesh)["params"]
  assert after["fc"]["kernel"].shape == (512, 10) and before["fc"]["kernel"].shape == (512, 1000)
  moved = np.abs(np.asarray(after["layer4_1"]["conv2"]["kernel"]) - np.asarray(before["layer4_1"]["conv2"]["kernel"]))
  assert 0 < moved.max() < 4e-3  # three AdamW steps of lr 1e-3 from the converted weights, not from scratch


def test_eval_reads_a_converted_checkpoint(tmp_path):
  """eval's restore of {'params', 'batch_stats'} works on a converted checkpoint (mock ImageNet, 1000 classes)."""
  import tensorflow_datasets as tfds

  from vision.train.loop import evaluate_checkpoint
  from vision.weights.convert import convert_checkpoint
  torch.save(_randomize(_tv("resnet18"), seed=6).state_dict(), str(tmp_path / "r18.pth"))
  convert_checkpoint("torchvision:resnet18", str(tmp_path / "r18.pth"), str(tmp_path / "w"))
  c = _config("resnet50_imagenet")
  c.model.name, c.model.dtype, c.data.image_size, c.train.eval_batch_size = "resnet18", "float32", 64, 8
  with tfds.testing.mock_data(num_examples=8):
    results, path = evaluate_checkpoint(c, str(tmp_path / "w"), devices=jax.devices()[:1])
  assert results["count"] == 8 and np.isfinite(results["loss"]) and os.path.exists(path)
  c.model.name = "resnet34"
  with tfds.testing.mock_data(num_examples=8), pytest.raises(UserError, match="is for model='resnet18'"):
    evaluate_checkpoint(c, str(tmp_path / "w"), devices=jax.devices()[:1])

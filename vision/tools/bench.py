"""Training / inference throughput on synthetic data already on the device (no TensorFlow, no input pipeline).

    python -m vision.tools.bench --model resnet50 --batch 256 --dtype bfloat16
    python -m vision.tools.bench --models "resnet*" --batch 128 --mode infer --json runs/bench.json
    python -m vision.tools.bench --model vit_base_patch16_224 --batch 256 --attn cudnn --torch --torch-compile
    python -m vision.tools.bench --dinov2 configs/dinov2_vits14_imagenet.py:batch=256

Train mode times the real train step of vision/train/steps.py (forward,
backward, optimizer update, BatchNorm statistics), jitted over all local
devices as data parallelism, with the state donated. Each timed step is
blocked on, and the reported step time is the median over --steps steps after
--warmup steps; images/s = global batch / median step time. Compile time is
lower + compile of the step (compile_cached: it came from JAX's persistent
compilation cache, JAX_COMPILATION_CACHE_DIR, so it is a load time). FLOPs per
step come from XLA's cost analysis of the compiled step (one device's share,
times the devices for the table); model
FLOPs utilisation (MFU) = one device's FLOPs / step time / one device's peak, with
the peak from --peak-tflops or, for known accelerators, their dense bf16 (or
fp32) peak. Peak memory is the most device memory in use during the row, above
what was in use when it started, where the backend reports it (GPU, TPU) and the
row raised the process's peak_bytes_in_use (JAX cannot reset that peak, so in a
table a row below an earlier row's peak cannot be told apart); otherwise it is
XLA's argument + temporary + output buffer sizes of the compiled step, which
every row also reports as xla_buffers_gb (memory_source says which).
--torch runs vision/tools/bench_torch.py (torchvision/timm, AMP, channels_last,
optionally torch.compile) on the same device and batch in a subprocess and
prints the ratio.

The performance tools, each switchable so that each can be measured on its own:
--dtype (bfloat16 compute, float32 params), --no-donate (the state is copied
instead of updated in place), --remat (each block's activations recomputed in
the backward pass, vision/models/layers.py:remat), --uint8 (uint8 batches
normalised in the step, as data.uint8_batches), --feed host (each step's batch
comes from host memory through vision/train/mesh.py:prefetch_to_device, --prefetch
batches ahead, as in train.py) and --sync-every N (results blocked on every N
steps, as the loop fetches its metrics every train.log_every steps; the step time
is then a window's time / N). XLA flags: set XLA_FLAGS for the run. Train mode
also reports the bytes the forward pass keeps for the backward pass (its
residuals: activations and the weights the backward reads; from jax.vjp under
jax.eval_shape, so independent of the backend; before XLA's fusion, which may
recompute cheap elementwise values in the backward and keep less), which --remat
shrinks; --saved-only reports just that, without compiling. With --dinov2 (the
student's loss: the teacher has no backward), --remat and --attn set the config's
backbone kwargs, and --saved-only works the same way.
"""
import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vision.errors import UserError
from vision.models import create_model, list_models, model_info
from vision.tools import require_at_least
from vision.train import mesh as mesh_lib
from vision.train import optim, steps
from vision.train.config import IMAGENET_MEAN, IMAGENET_STD, default_config

# Dense peak TFLOP/s by jax device_kind substring, the first that matches: (bfloat16, float32). Vendor datasheets
# (dense, no sparsity). The SXM H100 reports 'NVIDIA H100 80GB HBM3'; the PCIe and NVL cards have lower clocks.
PEAKS = {"H100 PCIe": (756.0, 51.0), "H100 NVL": (835.0, 60.0), "H200 NVL": (835.0, 60.0), "H100": (989.0, 67.0),
         "H200": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3), "V100": (125.0, 15.7),
         "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0), "TPU v5p": (459.0, 459.0), "TPU v6": (918.0, 918.0)}


def device_peak_tflops(dtype: str, kind: str | None = None):
  """The peak of PEAKS for this device's kind (or `kind`), None for an unknown one."""
  kind = jax.devices()[0].device_kind if kind is None else kind
  for key, (bf16, fp32) in PEAKS.items():
    if key in kind:
      return bf16 if dtype != "float32" else fp32
  return None


def _optimizer(name: str):
  o = default_config().optim
  o.name, o.lr, o.weight_decay = name, 0.1 if name == "sgd" else 1e-3, 1e-4
  return optim.make_optimizer(o, o.lr)


def residual_bytes(fn, params, *args) -> int:
  """Bytes that differentiating fn(params, *args) with respect to params keeps from the forward pass for the
  backward (jax.vjp's residuals, found under jax.eval_shape: nothing is computed; ShapeDtypeStructs do)."""
  res = jax.eval_shape(lambda p, *a: jax.vjp(lambda q: fn(q, *a), p)[1], params, *args)
  return int(sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize for x in jax.tree.leaves(res)))


def _host_batches(shape, image_dtype, num_classes, pool=3):
  """Endless numpy batches (a pool of `pool` random ones, cycled): what the input pipeline hands over."""
  rng = np.random.default_rng(0)
  make = lambda: {"image": (rng.integers(0, 256, shape, np.uint8) if image_dtype == np.uint8
                            else rng.standard_normal(shape, np.float32)),
                  "label": rng.integers(0, num_classes, shape[:1]).astype(np.int32)}
  return itertools.cycle([make() for _ in range(pool)])


def bench(model_name: str, batch: int, dtype: str = "float32", mode: str = "train", image_size: int | None = None,
          steps_timed: int = 20, warmup: int = 3, optimizer: str = "sgd", peak_tflops: float | None = None,
          num_classes: int = 1000, donate: bool = True, uint8: bool = False, feed: str = "device",
          prefetch: int = 2, sync_every: int = 1, saved_only: bool = False, **model_kwargs) -> dict:
  """One benchmark row (a dict of JSON-ready numbers). See the module docstring for the switches."""
  if mode not in ("train", "infer"):
    raise UserError(f"--mode {mode!r} is 'train' or 'infer'")
  if feed not in ("device", "host"):
    raise UserError(f"--feed {feed!r} is 'device' or 'host'")
  if sync_every < 1 or steps_timed < sync_every:
    raise UserError(f"--sync-every {sync_every} must be between 1 and --steps {steps_timed}")
  info = model_info(model_name)
  size = image_size or info.default_image_size
  mesh = mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  if batch % n_dev:
    raise UserError(f"--batch {batch} is not divisible by the {n_dev} devices")
  memory_before = device_memory()  # before the row allocates anything
  model = create_model(model_name, num_classes=num_classes, dtype=steps.compute_dtype(dtype), **model_kwargs)
  tx = _optimizer(optimizer)
  shape = (batch, size, size, info.in_channels)
  abstract = jax.eval_shape(lambda r: steps.init_state(model, tx, r, (1,) + shape[1:]), jax.random.key(0))
  state_sharding = mesh_lib.state_shardings(abstract, mesh)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  normalize = (IMAGENET_MEAN[:info.in_channels], IMAGENET_STD[:info.in_channels]) if uint8 else None

  def loss(params, batch_stats, images):  # what the train step differentiates
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    logits, _ = model.apply(variables, steps.normalize_images(images, *(normalize or (None, None))), train=True,
                            rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats", "intermediates"])
    return jnp.mean(steps.cross_entropy(logits, jnp.arange(batch) % num_classes, num_classes))
  saved = residual_bytes(loss, abstract.params, abstract.batch_stats,
                         jax.ShapeDtypeStruct(shape, jnp.uint8 if uint8 else jnp.float32)) if mode == "train" else None
  common = {"model": model_name, "mode": mode, "batch": batch, "image_size": size, "dtype": dtype,
            "optimizer": optimizer if mode == "train" else None, "steps_timed": steps_timed, "warmup": warmup,
            "saved_for_backward_gb": saved / 2**30 if saved is not None else None,
            "variant": variant_name(donate, uint8, feed, prefetch, sync_every, model_kwargs)}
  if saved_only:
    return common
  state = jax.jit(lambda r: steps.init_state(model, tx, r, (1,) + shape[1:]), out_shardings=state_sharding)(
      jax.random.key(0))
  if feed == "host":
    batches = mesh_lib.prefetch_to_device(_host_batches(shape, np.uint8 if uint8 else np.float32, num_classes),
                                          batch_sharding, prefetch)
  else:
    image = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    if uint8:
      image = jnp.clip(image * 64 + 128, 0, 255).astype(jnp.uint8)
    data = {"image": jax.device_put(image, batch_sharding),
            "label": jax.device_put(jnp.arange(batch, dtype=jnp.int32) % num_classes, batch_sharding)}
    batches = itertools.repeat(data)
  if mode == "train":
    fn = jax.jit(steps.make_train_step(model, tx, num_classes, normalize=normalize),
                 in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None),
                 donate_argnums=0 if donate else ())
    args = lambda state, data: (state, data)
  else:
    fn = jax.jit(lambda v, x: model.apply({k: t for k, t in v.items() if t},
                                          steps.normalize_images(x, *(normalize or (None, None))), train=False),
                 in_shardings=(steps.model_variables(state_sharding), batch_sharding))
    variables = steps.model_variables(state)
    args = lambda state, data: (variables, data["image"])

  row = measure(fn, args, state, batches, mode == "train", batch, n_dev, steps_timed, warmup, sync_every,
                peak_tflops or device_peak_tflops(dtype), memory_before)
  return {**common, **row, "remat": bool(model_kwargs.get("remat")), "donate": donate, "uint8": uint8,
          "feed": feed, "prefetch": prefetch if feed == "host" else None}


_CACHE_HITS = []  # one entry per persistent compilation cache hit in this process (JAX_COMPILATION_CACHE_DIR)
jax.monitoring.register_event_listener(
    lambda event, **_: _CACHE_HITS.append(event) if event == "/jax/compilation_cache/cache_hits" else None)


def device_memory() -> dict:
  """The first device's allocator statistics ({} where the backend has none, as XLA:CPU), after freeing what
  only reference cycles keep alive (an earlier row's arrays must not be freed in the middle of this one)."""
  gc.collect()
  return jax.devices()[0].memory_stats() or {}


def row_memory(before: dict, after: dict, xla_bytes: int | None) -> tuple[int | None, str]:
  """(peak bytes, source) of a row, from the device's statistics before and after it and XLA's buffer sizes.

  peak_bytes_in_use is the process's high-water mark and JAX has no call to reset it: it is this row's peak only
  where the row raised it; then what was already in use when the row began is not the row's. Otherwise (no
  device statistics, or an earlier row of the same process went higher) XLA's buffer sizes stand in."""
  peak = after.get("peak_bytes_in_use")
  if peak and peak > before.get("peak_bytes_in_use", 0):
    return peak - before.get("bytes_in_use", 0), "device"
  if peak:
    return xla_bytes, "xla_buffers (an earlier row in this process set the device's peak)"
  return xla_bytes, "xla_buffers"


def measure(fn, args, state, batches, carries_state, batch, n_dev, steps_timed, warmup, sync_every, peak,
            memory_before=None) -> dict:
  """Compiles fn(*args(state, batch)) and times it: the timing, FLOPs, MFU and memory part of a row.

  carries_state: fn returns (new state, ...) and the next step takes the new state (a train step).
  memory_before: device_memory() from before the row allocated its state (default: now).
  """
  memory_before = device_memory() if memory_before is None else memory_before
  data = next(batches)
  hits = len(_CACHE_HITS)
  start = time.perf_counter()
  compiled = fn.lower(*args(state, data)).compile()
  compile_s = time.perf_counter() - start
  compile_cached = len(_CACHE_HITS) > hits  # loaded from the persistent cache: compile_s is not a compile
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The compiled program is one SPMD partition: its cost analysis counts one device's share.
  device_flops = float((cost or {}).get("flops", float("nan")))
  memory = compiled.memory_analysis()

  def run(n):
    """n steps dispatched back to back, then blocked on: seconds per step."""
    nonlocal state, data
    start = time.perf_counter()
    for _ in range(n):
      out = compiled(*args(state, data))
      if carries_state:
        state = out[0]  # the donated state comes back
      data = next(batches)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n

  for _ in range(warmup):
    run(1)
  times = [run(sync_every) for _ in range(steps_timed // sync_every)]
  step_s = statistics.median(times)
  xla_bytes = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes) if memory is not None else None
  peak_bytes, memory_source = row_memory(memory_before, device_memory(), xla_bytes)
  achieved = device_flops / step_s / 1e12  # per device, like the peak
  return {"devices": n_dev, "device_kind": jax.devices()[0].device_kind, "images_per_sec": batch / step_s,
          "step_ms": step_s * 1e3, "step_ms_p10": float(np.percentile(times, 10)) * 1e3,
          "step_ms_p90": float(np.percentile(times, 90)) * 1e3, "compile_s": compile_s,
          "compile_cached": compile_cached,
          "gflops_per_step": device_flops * n_dev / 1e9, "achieved_tflops": achieved, "peak_tflops": peak,
          "mfu": achieved / peak if peak else None, "peak_memory_gb": peak_bytes / 2**30 if peak_bytes else None,
          "memory_source": memory_source, "xla_buffers_gb": xla_bytes / 2**30 if xla_bytes else None,
          "sync_every": sync_every,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__}


def bench_dinov2(config_spec: str, steps_timed: int = 20, warmup: int = 3, sync_every: int = 1,
                 peak_tflops: float | None = None, remat: bool = False, attn_implementation: str | None = None,
                 saved_only: bool = False) -> dict:
  """One row for a DINOv2 config's train step (student + EMA teacher + heads + losses, multi-crop, iBOT
  masks), on synthetic uint8 crops already on the device, e.g.
  'configs/dinov2_vits14_imagenet.py:batch=256'. The config's batch is the global batch. remat and
  attn_implementation set the backbone's model.kwargs of the same names."""
  from vision import cli
  from vision.data import masking  # numpy only
  from vision.ssl import loop as ssl_loop
  from vision.ssl import optim as ssl_optim
  from vision.ssl import schedules
  from vision.ssl import steps as ssl_steps
  config = cli.load_config_file(config_spec)
  if config.get("task") != "dinov2":
    raise UserError(f"--dinov2 {config_spec}: the config's task is {config.get('task')!r}, not 'dinov2'")
  if remat:
    config.model.kwargs.remat = True
  if attn_implementation:
    config.model.kwargs.attn_implementation = attn_implementation
  t, s, d = config.train, config.ssl, config.data
  mesh = mesh_lib.make_mesh()
  n_dev = mesh.devices.size
  if t.batch_size % n_dev:
    raise UserError(f"the config's batch {t.batch_size} is not divisible by the {n_dev} devices")
  memory_before = device_memory()
  nets = ssl_loop.build_networks(config)
  # The schedules' values (lr, temperatures, momentum) do not change the step's work; any lengths do.
  sched = schedules.make_schedules(config, steps_per_epoch=1000, total_steps=100_000)
  tx = ssl_optim.make_optimizer(config, sched)
  init = lambda rng: ssl_steps.init_state(nets, tx, rng, s.global_crop_size, d.channels)
  abstract = jax.eval_shape(init, jax.random.key(0))
  state_sharding = mesh_lib.state_shardings(abstract, mesh, t.fsdp, t.fsdp_min_size)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  grid = s.global_crop_size // nets.backbone.patch_size
  upper = masking.upper_bound(2 * t.batch_size // n_dev, grid * grid, s.mask_probability, tuple(s.mask_ratio))
  step = ssl_steps.make_train_step(nets, tx, sched, s, n_dev, upper, mesh, normalize=(d.mean, d.std))
  rng = np.random.default_rng(0)
  crops = lambda *shape: rng.integers(0, 256, (t.batch_size, *shape, d.channels), np.uint8)
  batch = {"global_crops": crops(2, s.global_crop_size, s.global_crop_size),
           "local_crops": crops(s.local_crops, s.local_crop_size, s.local_crop_size),
           "masks": masking.batch_masks(0, 0, 0, t.batch_size, n_dev, 2, (grid, grid), s.mask_probability,
                                        tuple(s.mask_ratio))}
  # What the student's backward keeps (the teacher's forward has no backward), under jax.eval_shape.
  loss_fn, student_inputs = step.student_loss
  inputs = jax.eval_shape(lambda st, b: student_inputs(st, b)[0], abstract, batch)
  saved = residual_bytes(lambda p, *a: loss_fn(p, *a)[0], abstract.params, *inputs)
  common = {"model": config.model.name, "mode": "train", "batch": t.batch_size, "image_size": s.global_crop_size,
            "dtype": config.model.dtype, "config": config_spec, "saved_for_backward_gb": saved / 2**30,
            "variant": ",".join(filter(None, [f"dinov2 {s.local_crops}x{s.local_crop_size}+2x{s.global_crop_size}",
                                              variant_name(True, False, "device", 0, sync_every, {
                                                  "remat": remat, "attn_implementation": attn_implementation})])),
            "remat": remat, "ibot_tokens": upper * n_dev}
  if saved_only:
    return common
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
  fn = jax.jit(step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None),
               donate_argnums=0)
  batch = mesh_lib.to_global(batch, batch_sharding)
  row = measure(fn, lambda state, data: (state, data), state, itertools.repeat(batch), True, t.batch_size, n_dev,
                steps_timed, warmup, sync_every, peak_tflops or device_peak_tflops(config.model.dtype), memory_before)
  return {**common, **row}


def variant_name(donate, uint8, feed, prefetch, sync_every, model_kwargs) -> str:
  """The switches that differ from the defaults, e.g. 'remat,uint8,host/prefetch2' ('' for none)."""
  parts = [f"{k}={v}" if k != "remat" else "remat" for k, v in sorted(model_kwargs.items()) if v]
  parts = [p.replace("attn_implementation", "attn") for p in parts]
  parts += ["no-donate"] * (not donate) + ["uint8"] * uint8 + [f"host/prefetch{prefetch}"] * (feed == "host")
  return ",".join(parts + [f"sync{sync_every}"] * (sync_every > 1))


def format_rows(rows: list[dict]) -> str:
  cols = [("model", "model", "{}"), ("variant", "variant", "{}"), ("mode", "mode", "{}"), ("batch", "batch", "{}"),
          ("dtype", "dtype", "{}"),
          ("images_per_sec", "img/s", "{:,.1f}"), ("step_ms", "step ms", "{:.1f}"), ("compile_s", "compile s", "{:.1f}"),
          ("gflops_per_step", "GFLOP/step", "{:,.1f}"), ("mfu", "MFU", "{:.1%}"), ("peak_memory_gb", "mem GB", "{:.2f}"),
          ("saved_for_backward_gb", "saved GB", "{:.3g}"),
          ("torch_images_per_sec", "torch img/s", "{:,.1f}"), ("ratio", "ours/torch", "{:.2f}")]
  cols = [c for c in cols if any(r.get(c[0]) not in (None, "") for r in rows)]
  from vision.tools.bench_suite import memory_on_device  # stdlib only, as the suite's driver must stay
  xla = lambda r, k: k == "peak_memory_gb" and bool(r.get(k)) and not memory_on_device(r)
  mark = lambda r, k: " (XLA)" * xla(r, k) + " (cached)" * (k == "compile_s" and bool(r.get("compile_cached")))
  body = [[("-" if r.get(k) is None else f.format(r[k]) + mark(r, k)) for k, _, f in cols] for r in rows]
  widths = [max(len(h), *(len(b[i]) for b in body)) for i, (_, h, _) in enumerate(cols)]
  left = sum(1 for k, _, _ in cols if k in ("model", "variant", "mode", "batch", "dtype"))
  line = lambda cells: "  ".join(c.rjust(w) if i >= left else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  legend = ["mem GB (XLA): XLA's buffer sizes of the compiled step; the device reported no peak of the row's own"]
  return "\n".join([line([h for _, h, _ in cols])] + [line(b) for b in body]
                   + legend * any(xla(r, "peak_memory_gb") for r in rows))


def torch_peer(row: dict, compile_: bool, timeout: int = 1800) -> dict:
  """The same model, batch, mode, optimizer and step counts in PyTorch (vision/tools/bench_torch.py) in a
  subprocess."""
  cmd = [sys.executable, "-m", "vision.tools.bench_torch", "--model", row["model"], "--batch", str(row["batch"]),
         "--mode", row["mode"], "--image-size", str(row["image_size"]), "--dtype", row["dtype"],
         "--optimizer", row.get("optimizer") or "sgd", "--steps", str(row["steps_timed"]),
         "--warmup", str(row["warmup"]), "--json"]
  if compile_:
    cmd.append("--compile")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    return {"torch_error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
  peer = json.loads(proc.stdout.strip().splitlines()[-1])
  return {"torch_images_per_sec": peer["images_per_sec"], "torch_step_ms": peer["step_ms"],
          "torch_compile": compile_, "torch_optimizer": peer["optimizer"], "torch_steps": peer["steps"],
          "torch_version": peer["torch"], "ratio": row["images_per_sec"] / peer["images_per_sec"]}


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m vision.tools.bench", description=__doc__.splitlines()[0])
  p.add_argument("--model", help="registered model name")
  p.add_argument("--models", help="shell pattern of models for a table, e.g. 'resnet*'")
  p.add_argument("--batch", type=int, default=64, help="global batch")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "bf16", "float16"))
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--image-size", type=int)
  p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
  p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known accelerators)")
  p.add_argument("--attn", help="ViT/Swin attention implementation: xla or cudnn")
  p.add_argument("--remat", action="store_true", help="recompute each block's activations in the backward pass")
  p.add_argument("--no-donate", action="store_true", help="do not donate the train state to the step")
  p.add_argument("--uint8", action="store_true", help="uint8 batches, normalised inside the step")
  p.add_argument("--feed", default="device", choices=("device", "host"),
                 help="device: one batch already on the device; host: numpy batches through prefetch_to_device")
  p.add_argument("--prefetch", type=int, default=2, help="batches in flight to the device with --feed host")
  p.add_argument("--sync-every", type=int, default=1, help="block on the results every N steps")
  p.add_argument("--saved-only", action="store_true",
                 help="only the bytes kept for the backward pass (jax.eval_shape: no compile, no steps)")
  p.add_argument("--dinov2", metavar="CONFIG", help="a DINOv2 config's train step instead of a model's, e.g. "
                 "configs/dinov2_vits14_imagenet.py:batch=256 (its batch, crops and model)")
  p.add_argument("--torch", action="store_true", help="also run the PyTorch peer and print the ratio")
  p.add_argument("--torch-compile", action="store_true", help="the PyTorch peer uses torch.compile")
  p.add_argument("--json", help="write the rows here as JSON")
  args = p.parse_args(argv)
  require_at_least(p, args, batch=1, image_size=1, steps=1, warmup=0, prefetch=0, sync_every=1)
  if args.peak_tflops is not None and args.peak_tflops <= 0:
    p.error(f"--peak-tflops must be positive, not {args.peak_tflops}")
  dtype = "bfloat16" if args.dtype == "bf16" else args.dtype
  try:
    names = list_models(args.models) if args.models else [args.model] if args.model else []
    if args.models and not names:
      raise UserError(f"no registered model matches --models {args.models!r}; see vision.models.list_models()")
    if not names and not args.dinov2:
      raise UserError("pass --model NAME, --models PATTERN or --dinov2 CONFIG")
    rows = [bench_dinov2(args.dinov2, args.steps, args.warmup, args.sync_every, args.peak_tflops, args.remat,
                         args.attn, args.saved_only)] if args.dinov2 else []
    if rows:
      print(format_rows(rows), flush=True)
    for name in names:
      kw = {"attn_implementation": args.attn} if args.attn else {}
      if args.remat:
        kw["remat"] = True
      row = bench(name, args.batch, dtype, args.mode, args.image_size, args.steps, args.warmup, args.optimizer,
                  args.peak_tflops, donate=not args.no_donate, uint8=args.uint8, feed=args.feed,
                  prefetch=args.prefetch, sync_every=args.sync_every, saved_only=args.saved_only, **kw)
      if args.torch:
        row.update(torch_peer(row, args.torch_compile))
      rows.append(row)
      print(format_rows([row]), flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if len(rows) > 1:
    print("\n" + format_rows(rows))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()

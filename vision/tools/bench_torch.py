"""The PyTorch peer of vision.tools.bench: torchvision/timm models, AMP, channels_last, optionally torch.compile.

    python -m vision.tools.bench_torch --model resnet50 --batch 256 --dtype bfloat16 --compile

Same measurement as ours: synthetic data on the device, a full training step
(forward, cross-entropy, backward, SGD momentum 0.9 / AdamW update; BatchNorm in
training mode) or an inference forward, each step synchronised, the median
over --steps after --warmup. Models come from torchvision when it has the name,
else from timm. bfloat16 runs under torch.autocast with float32 parameters,
the usual AMP setup. Set up as the reference training scripts do:
cudnn.benchmark on (torchvision's train.py, timm's train.py), and --compile
compiles the model (timm's train.py --torchcompile; the optimizer step stays
eager, in PyTorch's default multi-tensor form). Peak memory is the row's own:
torch.cuda.max_memory_allocated after a reset at its start, less what was
allocated then. A benchmarking tool: torch is imported only here.
"""
import argparse
import gc
import json
import statistics
import time

from vision.tools import require_at_least


class UnknownModel(ValueError):
  """A name that neither torchvision nor timm has: the command line's mistake, not a failure of the run."""


def build(name):
  import torchvision
  if hasattr(torchvision.models, name) and name in torchvision.models.list_models():
    return getattr(torchvision.models, name)(), "torchvision"
  import timm  # only when torchvision has no such model (its import takes seconds)
  if not timm.is_model(name.split(".")[0]):
    raise UnknownModel(f"neither torchvision nor timm has a model {name!r} (torchvision.models.list_models(), "
                     "timm.list_models())")
  return timm.create_model(name.split(".")[0]), "timm"


def bench(model_name, batch, mode="train", image_size=224, dtype="bfloat16", compile_=False, steps=20, warmup=3,
          optimizer="sgd", channels_last=True):
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda":  # the peak is this row's alone, above what an earlier row of the process left allocated
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    allocated_before = torch.cuda.memory_allocated()
  torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolution algorithms
  model, library = build(model_name)
  model = model.to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  x = torch.randn(batch, 3, image_size, image_size, device=device)
  if channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
  y = torch.arange(batch, device=device) % 1000
  opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) if optimizer == "sgd"
         else torch.optim.AdamW(model.parameters(), lr=1e-3))
  amp = dtype in ("bfloat16", "float16")
  autocast = lambda: torch.autocast(device, dtype=getattr(torch, dtype), enabled=amp)

  def train_step():
    with autocast():
      loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def infer_step():
    with torch.no_grad(), autocast():
      model(x)

  model.train(mode == "train")
  if compile_:
    model = torch.compile(model)
  step = train_step if mode == "train" else infer_step
  compile_s = 0.0
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    step()
    sync()
    elapsed = time.perf_counter() - start
    if i == 0:
      compile_s = elapsed  # the first call compiles (and warms cuDNN autotuning)
    if i >= warmup:
      times.append(elapsed)
  step_s = statistics.median(times)
  peak = (torch.cuda.max_memory_allocated() - allocated_before) / 2**30 if device == "cuda" else None
  return {"model": model_name, "library": library, "mode": mode, "batch": batch, "image_size": image_size,
          "dtype": dtype, "compile": compile_, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "images_per_sec": batch / step_s, "step_ms": step_s * 1e3, "first_step_s": compile_s,
          "peak_memory_gb": peak, "optimizer": optimizer if mode == "train" else None, "steps": steps,
          "warmup": warmup, "torch": torch.__version__}


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m vision.tools.bench_torch", description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--compile", action="store_true")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
  p.add_argument("--no-channels-last", action="store_true")
  p.add_argument("--json", action="store_true", help="print one JSON line")
  args = p.parse_args(argv)
  require_at_least(p, args, batch=1, image_size=1, steps=1, warmup=0)
  try:
    row = bench(args.model, args.batch, args.mode, args.image_size, args.dtype, args.compile, args.steps,
                args.warmup, args.optimizer, not args.no_channels_last)
  except UnknownModel as e:
    p.exit(2, f"error: {e}\n")
  print(json.dumps(row) if args.json else "\n".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
  main()

"""Issue 7's GPU measurements as one prepared, resumable run: ours and the PyTorch peers, then each tool alone.

    python -m vision.tools.bench_suite --out $OUT --budget 520 --compile-cache .jax_cache           # on the GPU
    python -m vision.tools.bench_suite --out $OUT --budget 300 --resume --compile-cache .jax_cache  # the rest
    python -m vision.tools.bench_suite --out /tmp/s --plan smoke          # the same driver on a CPU, tiny rows

The plan is a list of stages in priority order. Each stage runs in a subprocess
of its own (the PyTorch peers never share the GPU with a JAX process holding
its memory; a stage's XLA_FLAGS stay its own; a process that dies, as XLA's
fatal checks make it, costs the row it was in, which is recorded as failed, and
a new process goes on with the stage's other rows), and appends one JSON line
per finished row to OUT/rows.jsonl, so a run cut short by --budget or by the
machine keeps what it measured. --resume skips the rows already there, the
failed ones too (an out-of-memory or an unsupported kernel fails again, and
would spend a scarce GPU's minutes on each call) unless --retry-errors is
given. --compile-cache DIR shares JAX's persistent compilation cache between
the stages and the calls (a row whose step is a program compiled before loads
it; its row says compile_cached). Stages start while the budget lasts; the last one is
stopped when it runs out. At the end OUT/report.md holds the table and the
ratios: ours / the PyTorch peer, and each tool's variant / its baseline row
(images/s, and memory: the device's peak where both rows measured their own,
else XLA's buffer sizes of both compiled steps). No TensorFlow is needed.

Each call first appends what its figures need beside them to OUT/env.jsonl
(without importing JAX or torch, so the driver holds no GPU memory): the date,
the command, the commit, the machine (CPU, GPU, driver) and the versions of
Python, JAX, jaxlib, the CUDA plugin and the NVIDIA libraries (cuDNN, cuBLAS,
NCCL), flax, optax, torch, torchvision and timm. The report starts with them.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

# A row: (id, 'ours' | 'dinov2' | 'torch', keyword arguments of bench.bench / bench.bench_dinov2 /
# bench_torch.bench, what to compare it with).
# 'peer' compares ours with PyTorch; 'baseline' compares a tool's variant with the row it switches from.
_R50 = dict(model_name="resnet50", batch=256, dtype="bfloat16", optimizer="sgd")
_VIT = dict(model_name="vit_base_patch16_224", batch=256, dtype="bfloat16", optimizer="adamw")  # also the peers'
_LHS = "--xla_gpu_enable_latency_hiding_scheduler=true"
_DINOV2 = "configs/dinov2_vits14_imagenet.py:batch=256"
# XLA's fusion passes off (unknown pass names are ignored): what fusing BatchNorm, ReLU and the other elementwise
# ops into their neighbours' kernels is worth.
_NO_FUSION = ("--xla_disable_hlo_passes=priority-fusion,fusion,multi_output_fusion,"
              "cudnn-fused-convolution-rewriter,cpu-fusion")

GPU_PLAN = [
    ("targets", "", [
        ("r50", "ours", _R50, {"peer": "torch_r50_compile"}),
        ("vit_cudnn", "ours", {**_VIT, "attn_implementation": "cudnn"}, {"peer": "timm_vit_compile"}),
        ("vit_xla", "ours", {**_VIT, "attn_implementation": "xla"}, {"peer": "timm_vit_compile",
                                                                      "baseline": "vit_cudnn"}),
    ]),
    ("torch_r50_compile", "", [("torch_r50_compile", "torch", {**_R50, "compile_": True}, {})]),
    ("timm_vit_compile", "", [("timm_vit_compile", "torch", {**_VIT, "compile_": True}, {})]),
    ("torch_eager", "", [("torch_r50_eager", "torch", _R50, {}), ("timm_vit_eager", "torch", _VIT, {})]),
    ("tools", "", [
        ("r50_remat", "ours", {**_R50, "remat": True}, {"baseline": "r50"}),
        ("vit_remat", "ours", {**_VIT, "attn_implementation": "cudnn", "remat": True}, {"baseline": "vit_cudnn"}),
        ("r50_uint8", "ours", {**_R50, "uint8": True}, {"baseline": "r50"}),
        ("r50_no_donate", "ours", {**_R50, "donate": False}, {"baseline": "r50"}),
        ("r50_host_prefetch2", "ours", {**_R50, "uint8": True, "feed": "host", "prefetch": 2},
         {"baseline": "r50_uint8"}),
        ("r50_host_prefetch0", "ours", {**_R50, "uint8": True, "feed": "host", "prefetch": 0},
         {"baseline": "r50_host_prefetch2"}),
        ("r50_sync10", "ours", {**_R50, "sync_every": 10, "steps_timed": 30}, {"baseline": "r50"}),
        ("r50_fp32", "ours", {**_R50, "dtype": "float32"}, {"baseline": "r50"}),
    ]),
    # Issue 5's step time and memory at global batch 256. Without remat the student's backward keeps 107 GB
    # before XLA's fusion (jax.eval_shape; 14.6 GB with remat), more than an H100's 80: the remat row is the one
    # expected to fit, and the default row says whether XLA brings the default under it.
    ("dinov2", "", [
        ("dinov2_vits14", "dinov2", dict(config_spec=_DINOV2), {}),
        ("dinov2_vits14_remat", "dinov2", dict(config_spec=_DINOV2, remat=True), {"baseline": "dinov2_vits14"}),
    ]),
    ("xla_lhs", _LHS, [
        ("r50_lhs", "ours", _R50, {"baseline": "r50"}),
        ("vit_lhs", "ours", {**_VIT, "attn_implementation": "cudnn"}, {"baseline": "vit_cudnn"}),
    ]),
    ("xla_no_fusion", _NO_FUSION, [("r50_no_fusion", "ours", _R50, {"baseline": "r50"})]),
    ("infer", "", [
        ("r50_infer", "ours", {**_R50, "mode": "infer"}, {"peer": "torch_r50_infer_compile"}),
        ("torch_r50_infer_compile", "torch", {**_R50, "mode": "infer", "compile_": True}, {}),
    ]),
]

# The same driver on a CPU in seconds (tests/test_bench.py): tiny rows, one that compiles what another did, one stage
# with its own XLA flag, and one whose flag XLA does not know (it aborts the process, as XLA's fatal checks do).
_LENET = dict(model_name="lenet5", batch=8, num_classes=10, steps_timed=4, warmup=1)
SMOKE_PLAN = [
    ("a", "", [("lenet", "ours", _LENET, {}),
               ("lenet_uint8_sync2", "ours", {**_LENET, "uint8": True, "sync_every": 2}, {"baseline": "lenet"}),
               ("lenet_again", "ours", {**_LENET, "steps_timed": 6}, {})]),  # lenet's program: a cache hit
    ("b", "--xla_cpu_enable_fast_math=false", [("lenet_flag", "ours", _LENET, {"baseline": "lenet"})]),
    ("c", "--xla_no_such_flag=true", [("lenet_abort", "ours", _LENET, {"baseline": "lenet"}),
                                      ("lenet_abort_2", "ours", _LENET, {})]),
]
PLANS = {"gpu": GPU_PLAN, "smoke": SMOKE_PLAN}


# Distributions whose versions go beside the figures (names as pip spells them, prefixes for the families).
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "ml-collections",
             "nvidia-cudnn", "nvidia-cublas", "nvidia-cuda-runtime", "nvidia-nccl", "torch", "torchvision", "timm",
             "triton")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd):
  if cmd[0] == "git" and not os.path.exists(os.path.join(_ROOT, ".git")):  # not some enclosing repository's
    return None
  try:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=_ROOT).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def environment(argv=()) -> dict:
  """The date, command, commit, machine and software versions, without importing JAX or torch (so that the
  driver holds no GPU memory): the versions are the installed distributions', the GPU and driver nvidia-smi's."""
  env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "command": " ".join(["python -m vision.tools.bench_suite", *argv]),
         "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "commit": _run(["git", "rev-parse", "--short=12", "HEAD"]),
         "dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
         "python": platform.python_version(), "os": platform.platform(), "cpu_count": os.cpu_count(),
         "gpu": _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])}
  try:
    with open("/proc/cpuinfo") as f:
      env["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
  except OSError:
    env["cpu"] = None
  packages = {}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if any(name == p or name.startswith(p + "-") for p in _PACKAGES):  # jax-cuda12-plugin, nvidia-cudnn-cu12
      packages[name] = dist.version
  env["packages"] = dict(sorted(packages.items()))
  return env


def format_environment(envs) -> list:
  """One markdown bullet per call that measured rows (env.jsonl)."""
  lines = []
  for e in envs:
    pk = e.get("packages", {})
    nvidia = ", ".join(f"{k} {v}" for k, v in pk.items() if k.startswith(("jax-cuda", "nvidia-")))
    lines.append(
        f"- {e['date']}: `{e['command']}`" + (f" with XLA_FLAGS=`{e['xla_flags']}`" if e.get("xla_flags") else "")
        + f"; commit {e.get('commit') or 'unknown (no git here)'}{' (with local changes)' if e.get('dirty') else ''}"
        + f"; GPU {e.get('gpu') or '-'}; CPU {e.get('cpu')} x {e.get('cpu_count')}"
        + f"; Python {e.get('python')}, {e.get('os')}; "
        + ", ".join(f"{k} {pk[k]}" for k in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "timm",
                                             "triton") if k in pk)
        + (f"; {nvidia}" if nvidia else ""))
  return lines


def append_jsonl(path, record: dict):
  """Appends one JSON line; after a line that a kill cut short (no newline at the end), on a line of its own."""
  with open(path, "a+b") as f:  # "a": every write goes to the end, wherever a read left the position
    end = f.seek(0, os.SEEK_END)
    cut = end > 0 and f.seek(end - 1) >= 0 and f.read(1) != b"\n"
    f.write((("\n" if cut else "") + json.dumps(record) + "\n").encode())


def read_jsonl(path) -> list:
  """The records of a JSON-lines file ([] where there is none). A line that is no JSON object (a write that a
  kill cut short) is left out with a one-line note on stderr: a row of it runs again on --resume."""
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          record = None
        if isinstance(record, dict):
          records.append(record)
        elif (path, number) not in _NOTED:
          _NOTED.add((path, number))
          print(f"{path}:{number}: not a JSON object (a write cut short?); left out", file=sys.stderr)
  return records


_NOTED = set()  # (path, line) already named on stderr: a run reads rows.jsonl once per stage


def read_rows(out_dir) -> dict:
  """id -> row of OUT/rows.jsonl (the last line of an id wins)."""
  return {row["id"]: row for row in read_jsonl(os.path.join(out_dir, "rows.jsonl")) if "id" in row}


def row_call(kind, kwargs):
  """The function that measures a row of this kind, and its keyword arguments."""
  from vision.tools import bench, bench_torch  # torch itself is imported only when a torch row runs
  if kind == "dinov2":
    return bench.bench_dinov2, kwargs
  if kind == "ours":
    return bench.bench, kwargs
  if kind == "torch":
    return bench_torch.bench, {{"steps_timed": "steps"}.get(k, k): v for k, v in kwargs.items()}
  raise ValueError(f"a row's kind is 'ours', 'dinov2' or 'torch', not {kind!r}")


def run_stage(plan, stage_name, out_dir, skip=()):
  """Runs one stage's rows in this process, appending each to OUT/rows.jsonl as it finishes."""
  _, _, items = next(s for s in plan if s[0] == stage_name)
  for row_id, kind, kwargs, _ in items:
    if row_id in skip:
      continue
    start = time.perf_counter()
    try:
      fn, args = row_call(kind, kwargs)
      row = fn(**args)
    except Exception as e:  # one row's failure (an OOM, an unknown flag's error) must not cost the others
      row = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]}
    row.update(id=row_id, kind=kind, stage=stage_name, wall_s=time.perf_counter() - start)
    append_jsonl(os.path.join(out_dir, "rows.jsonl"), row)
    print(f"[{stage_name}] {row_id}: " + (row.get("error") or f"{row['images_per_sec']:,.1f} img/s"), flush=True)


def settled(out_dir, retry_errors=False) -> set:
  """Ids of the rows that a resumed call skips: those in OUT/rows.jsonl, less the failed ones with retry_errors."""
  return {k for k, r in read_rows(out_dir).items() if not (retry_errors and "error" in r)}


def run_plan(plan_name, out_dir, budget_s, resume=False, retry_errors=False, compile_cache=None) -> str:
  """Every stage that the budget lets start, each in a subprocess; returns the report (also in OUT/report.md).

  compile_cache: a folder for JAX's persistent compilation cache, shared by the stages and kept across calls: a
  row whose step is a program already compiled (the same network, shapes and flags) loads it instead."""
  plan = PLANS[plan_name]
  os.makedirs(out_dir, exist_ok=True)
  if not resume and os.path.exists(os.path.join(out_dir, "rows.jsonl")):
    os.remove(os.path.join(out_dir, "rows.jsonl"))
  if not resume and os.path.exists(os.path.join(out_dir, "env.jsonl")):
    os.remove(os.path.join(out_dir, "env.jsonl"))
  deadline = time.monotonic() + budget_s
  log = open(os.path.join(out_dir, "suite.log"), "a")
  if budget_s >= 5:  # a call that can start no stage measures nothing to describe
    argv = (["--out", out_dir, "--plan", plan_name, "--budget", f"{budget_s:g}"] + ["--resume"] * resume
            + ["--retry-errors"] * retry_errors + (["--compile-cache", compile_cache] if compile_cache else []))
    append_jsonl(os.path.join(out_dir, "env.jsonl"), environment(argv))
  for name, flags, items in plan:
    crashed_here = set()  # rows that this call's processes died in: not run again in this call
    while True:  # once, or again after a crash: the rest of the stage's rows in a new process
      skip = settled(out_dir, retry_errors) | crashed_here
      pending = [row_id for row_id, *_ in items if row_id not in skip]
      if not pending:
        break
      left = deadline - time.monotonic()
      if left < 5:
        print(f"[{name}] not started: the budget is spent", flush=True)
        break
      env = dict(os.environ)
      if compile_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(compile_cache)
      if flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
      cmd = [sys.executable, "-m", "vision.tools.bench_suite", "--plan", plan_name, "--out", out_dir, "--stage",
             name, "--skip", ",".join(sorted(skip))]
      try:
        proc = subprocess.run(cmd, env=env, timeout=left, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      except subprocess.TimeoutExpired as e:  # the row it was in is run again by a later --resume
        log.write(e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""))
        log.flush()
        print(f"[{name}] stopped: the budget ran out ({budget_s:.0f} s)", flush=True)
        break
      log.write(proc.stdout)
      log.flush()
      rows_done = [line for line in proc.stdout.splitlines() if line.startswith(f"[{name}]")]
      print("\n".join(rows_done) or f"[{name}] no rows (see suite.log)", flush=True)
      if not proc.returncode:
        break
      # The process died inside a row (XLA's fatal checks abort it, a bad flag too): that row is failed, so that
      # neither this call nor a --resume loses the stage's other rows to it again and again.
      crashed = next((r for r in pending if not any(line.startswith(f"[{name}] {r}: ") for line in rows_done)), None)
      print(f"[{name}] exited with status {proc.returncode}" + (f" in {crashed}" if crashed else "")
            + " (see suite.log)", flush=True)
      if crashed is None:
        break
      append_jsonl(os.path.join(out_dir, "rows.jsonl"), {
          "id": crashed, "kind": "crash", "stage": name,
          "error": f"the stage's process exited with status {proc.returncode} in this row (see suite.log)"})
      crashed_here.add(crashed)
  log.close()
  report = format_report(plan, read_rows(out_dir), read_envs(out_dir))
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(report + "\n")
  return report


def read_envs(out_dir) -> list:
  return read_jsonl(os.path.join(out_dir, "env.jsonl"))


def memory_on_device(row: dict) -> bool:
  """Whether a row's peak_memory_gb is its own device peak (bench.row_memory's "device"; PyTorch's rows, which
  reset their peak, have no memory_source) rather than XLA's buffer sizes."""
  return bool(row.get("peak_memory_gb")) and row.get("memory_source", "device") == "device"


def format_report(plan, rows, envs=()) -> str:
  """The environment of each call, the rows as a markdown table, then the planned comparisons that both sides of
  were measured."""
  fmt = lambda v, f: "-" if v is None else f.format(v)
  lines = ["Environment (one line per call):", *format_environment(envs), ""] if envs else []
  lines += ["| id | model | variant | mode | batch | dtype | img/s | step ms | compile s | MFU | mem GB | saved GB |",
            "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
  compare, missing = [], []
  for name, flags, items in plan:
    for row_id, kind, kwargs, against in items:
      r = rows.get(row_id)
      if r is None or "error" in r:
        missing.append(f"{row_id} ({r['error'] if r else 'not run'})")
        continue
      variant = ("torch.compile" if r.get("compile") else "eager") if kind == "torch" else r.get("variant", "")
      if flags:
        variant = ",".join(filter(None, [variant, flags]))
      mem = r.get("peak_memory_gb")
      on_device = memory_on_device(r)
      lines.append(f"| {row_id} | {r['model']} | {variant or '-'} | {r['mode']} | {r['batch']} | {r['dtype']} | "
                   f"{r['images_per_sec']:,.1f} | {r['step_ms']:.1f} | "
                   f"{fmt(r.get('compile_s', r.get('first_step_s')), '{:.1f}')}{' (cached)' * bool(r.get('compile_cached'))}"
                   f" | {fmt(r.get('mfu'), '{:.1%}')} | "
                   f"{fmt(mem, '{:.2f}')}{'' if on_device or not mem else ' (XLA)'} | "
                   f"{fmt(r.get('saved_for_backward_gb'), '{:.3g}')} |")
      for what, other_id in sorted(against.items()):
        other = rows.get(other_id)
        if other is None or "error" in other:
          continue
        text = f"- {row_id} / {other_id}: {r['images_per_sec'] / other['images_per_sec']:.2f}x images/s"
        if on_device and memory_on_device(other):
          text += f", {mem / other['peak_memory_gb']:.2f}x peak memory"
        elif r.get("xla_buffers_gb") and other.get("xla_buffers_gb"):  # both ours; one or both off the device
          text += f", {r['xla_buffers_gb'] / other['xla_buffers_gb']:.2f}x XLA buffers"
        if r.get("saved_for_backward_gb") and other.get("saved_for_backward_gb"):
          text += f", {r['saved_for_backward_gb'] / other['saved_for_backward_gb']:.2f}x saved for the backward"
        compare.append(text + f" ({what})")
  if any(" (XLA) |" in line for line in lines):
    lines.append("\nmem GB (XLA): XLA's argument + temporary + output buffers of the compiled step, where the "
                 "device reported no peak of this row's own (bench.row_memory).")
  out = lines + ["", "Comparisons (same run):"] + (compare or ["- none measured"])
  if missing:
    out += ["", "Not measured: " + "; ".join(missing)]
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m vision.tools.bench_suite", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="folder for rows.jsonl, suite.log and report.md")
  p.add_argument("--plan", default="gpu", choices=sorted(PLANS))
  p.add_argument("--budget", type=float, default=540.0, help="seconds; no stage starts after it, the last is stopped")
  p.add_argument("--resume", action="store_true", help="keep OUT/rows.jsonl and skip its rows, failed ones too")
  p.add_argument("--retry-errors", action="store_true", help="with --resume: run the failed rows again")
  p.add_argument("--compile-cache", help="folder for JAX's persistent compilation cache (kept across calls)")
  p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
  p.add_argument("--skip", default="", help=argparse.SUPPRESS)  # internal, with --stage: rows not to run
  args = p.parse_args(argv)
  if args.stage:  # the driver's process decided which rows to skip
    run_stage(PLANS[args.plan], args.stage, args.out, skip=set(filter(None, args.skip.split(","))))
    return
  if args.retry_errors and not args.resume:
    p.error("--retry-errors goes with --resume")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    p.error(f"--out {args.out} is a file; pass a folder (made if missing)")
  print(run_plan(args.plan, args.out, args.budget, args.resume, args.retry_errors, args.compile_cache))


if __name__ == "__main__":
  main()

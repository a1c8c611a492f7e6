"""The benchmark harness runs on CPU on a tiny model and reports sane numbers (no timing assertions)."""
import json
import math
import os
import platform
import re

import jax
import numpy as np
import pytest

from vision.tools import bench, bench_input, bench_suite, bench_torch


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_bench_reports_positive_finite_numbers_and_mfu_from_cost_analysis(mode):
  row = bench.bench("lenet5", batch=8, mode=mode, steps_timed=3, warmup=1, peak_tflops=0.5, num_classes=10)
  for key in ("images_per_sec", "step_ms", "compile_s", "gflops_per_step", "achieved_tflops", "peak_memory_gb"):
    assert row[key] > 0 and math.isfinite(row[key]), key
  # MFU is the cost analysis' FLOPs per step over the step time, against the given peak.
  per_device = row["gflops_per_step"] / row["devices"]
  assert row["mfu"] == pytest.approx(per_device / (row["step_ms"] / 1e3) / 1e3 / 0.5, rel=1e-9)
  # LeNet-5's forward is 416,520 multiply-adds per image (tests/test_summary.py); XLA counts a bit more
  # (bias, pooling, tanh), and a train step adds the backward pass (about 2x the forward) and the update.
  forward = 2 * 416_520 * 8 / 1e9
  assert (1.0 if mode == "infer" else 2.5) * forward < row["gflops_per_step"] < (1.2 if mode == "infer" else 4) * forward
  assert row["images_per_sec"] == pytest.approx(8 / (row["step_ms"] / 1e3))
  table = bench.format_rows([row])
  assert "lenet5" in table and "MFU" in table
  # No device statistics on XLA:CPU: the memory is XLA's buffer sizes of the compiled step.
  assert row["memory_source"] == "xla_buffers" and row["peak_memory_gb"] == row["xla_buffers_gb"] > 0
  assert " (XLA)" in table and "mem GB (XLA): XLA's buffer sizes" in table


def test_a_rows_memory_is_its_own_peak_or_says_it_is_not():
  """JAX cannot reset the device's high-water mark: later rows of one process see the earlier rows' peaks."""
  gib = 2**30
  first = bench.row_memory({"bytes_in_use": 0, "peak_bytes_in_use": 0},
                           {"bytes_in_use": gib, "peak_bytes_in_use": 9 * gib}, 8 * gib)
  assert first == (9 * gib, "device")
  # A bigger second row, with 1 GiB left over from the first: its own peak is above what it found in use.
  assert bench.row_memory({"bytes_in_use": gib, "peak_bytes_in_use": 9 * gib},
                          {"bytes_in_use": gib, "peak_bytes_in_use": 13 * gib}, 11 * gib) == (12 * gib, "device")
  # A smaller one leaves the mark where it was: its peak is unknown, and XLA's buffer sizes stand in, said so.
  size, source = bench.row_memory({"bytes_in_use": 0, "peak_bytes_in_use": 9 * gib},
                                  {"bytes_in_use": 0, "peak_bytes_in_use": 9 * gib}, 5 * gib)
  assert size == 5 * gib and source.startswith("xla_buffers (an earlier row")
  assert bench.row_memory({}, {}, 5 * gib) == (5 * gib, "xla_buffers") and bench.row_memory({}, {}, None)[0] is None


def test_torch_peer_runs_the_same_model_batch_optimizer_and_steps():
  """--torch: the PyTorch side (torchvision here) in its subprocess, with our row's settings."""
  pytest.importorskip("torchvision")
  pytest.importorskip("timm")
  row = bench.bench("resnet18", batch=8, image_size=32, steps_timed=2, warmup=1, optimizer="adamw")
  peer = bench.torch_peer(row, compile_=False, timeout=300)
  assert "torch_error" not in peer, peer
  assert (peer["torch_optimizer"], peer["torch_steps"], peer["torch_compile"]) == ("adamw", 2, False)
  assert peer["torch_images_per_sec"] > 0 and math.isfinite(peer["torch_step_ms"])
  assert peer["ratio"] == pytest.approx(row["images_per_sec"] / peer["torch_images_per_sec"])
  assert "ours/torch" in bench.format_rows([{**row, **peer}])


def test_unknown_peak_gives_no_mfu_and_batch_must_divide():
  row = bench.bench("lenet5", batch=8, steps_timed=2, warmup=1, num_classes=10)
  assert row["peak_tflops"] is None and row["mfu"] is None  # a CPU has no known peak
  # The kinds JAX reports (jax.devices()[0].device_kind): the PCIe H100 is not the SXM one.
  peak = bench.device_peak_tflops
  assert peak("bfloat16", "NVIDIA H100 80GB HBM3") == 989.0 and peak("float32", "NVIDIA H100 80GB HBM3") == 67.0
  assert peak("bfloat16", "NVIDIA H100 PCIe") == 756.0 and peak("bfloat16", "NVIDIA H200") == 989.0
  assert peak("bfloat16", "TPU v5 lite") == 197.0 and peak("bfloat16", "cpu") is None
  with pytest.raises(bench.UserError, match="not divisible by the 8 devices"):
    bench.bench("lenet5", batch=6, steps_timed=1, warmup=0)


@pytest.mark.parametrize("tool, argv, error", [
    (bench, ["--models", "zzz*"], "error: no registered model matches --models 'zzz*'; see vision.models.list_models()"),
    (bench, ["--model", "nosuch"], "error: unknown model 'nosuch'; see vision.models.list_models() for the registered"),
    (bench, [], "error: pass --model NAME, --models PATTERN or --dinov2 CONFIG"),
    (bench, ["--dinov2", "configs/nope.py"], "error: config file 'configs/nope.py' does not exist; pass one of"),
    # argparse's own errors: the usage line(s), then this one (before, a traceback or a negative MFU)
    (bench, ["--model", "lenet5", "--peak-tflops", "-5"], "python -m vision.tools.bench: error: --peak-tflops must"),
    (bench_input, ["--images", "0"], "python -m vision.tools.bench_input: error: --images must be at least 1, not 0"),
    (bench_torch, ["--model", "resnet18", "--batch", "0"], "python -m vision.tools.bench_torch: error: --batch must"),
    (bench_torch, ["--model", "nosuch"], "error: neither torchvision nor timm has a model 'nosuch'"),
    (bench_suite, ["--out", __file__], f"python -m vision.tools.bench_suite: error: --out {__file__} is a file")])
def test_command_line_mistakes_exit_2_with_one_error_line(tool, argv, error, capsys):
  if argv == ["--model", "nosuch"] and tool is bench_torch:
    pytest.importorskip("torchvision")
    pytest.importorskip("timm")
  with pytest.raises(SystemExit) as exit_:
    tool.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  usage = [line for line in err[:-1] if line.startswith(("usage:", " "))]  # argparse's usage, wrapped
  assert exit_.value.code == 2 and err[-1].startswith(error) and usage == err[:-1], err


def test_input_benchmark_our_side_on_its_own_jpegs(tmp_path):
  root = bench_input.write_jpegs(str(tmp_path), 12, classes=3, size=(64, 48))
  files = [f for _, _, fs in os.walk(os.path.join(root, "train")) for f in fs]
  assert len(files) == 12 and all(f.endswith(".jpg") for f in files)
  from PIL import Image
  pixels = np.asarray(Image.open(os.path.join(root, "train", "class000", "000000.jpg")))
  assert pixels.shape == (48, 64, 3) and pixels.std() > 10  # photo-like, not blank
  assert bench_input.ours(root, images=16, batch=4, size=32) > 0
  assert bench_input.ours(root, images=8, batch=4, size=32, uint8=False) > 0
  assert bench_input.ours_eval(root, images=20, batch=4, size=32) > 0  # more than one pass over the 12
  assert bench_input.ours_eval(root, images=8, batch=4, size=32, uint8=False) > 0


def test_input_benchmark_writes_its_jpegs_into_a_new_dir(tmp_path):
  root = str(tmp_path / "new")  # BENCHMARKS.md's commands name a --dir that a fresh machine does not have
  assert bench_input.ensure_jpegs(root, 5) == root
  assert sorted(os.listdir(os.path.join(root, "train"))) == ["class000", "class001", "class002", "class003",
                                                              "class004"]
  before = os.path.getmtime(os.path.join(root, "train", "class000", "000000.jpg"))
  bench_input.ensure_jpegs(root, 50)  # an existing folder is used as it is
  assert len([f for _, _, fs in os.walk(root) for f in fs]) == 5
  assert os.path.getmtime(os.path.join(root, "train", "class000", "000000.jpg")) == before


def test_input_benchmark_gives_torchvision_the_same_policy():
  transforms = pytest.importorskip("torchvision.transforms")
  before, after = bench_input.torchvision_transforms("randaugment(n=3,m=7)+erasing(p=0.1,mode=pixel)", uint8=False)
  assert isinstance(before[0], transforms.RandAugment) and (before[0].num_ops, before[0].magnitude) == (3, 7)
  assert isinstance(after[0], transforms.RandomErasing) and after[0].p == 0.1 and after[0].value == "random"
  before, after = bench_input.torchvision_transforms("trivialaugment+erasing(p=0.1)", uint8=True)
  assert isinstance(before[0], transforms.TrivialAugmentWide) and after == []  # erasing: on the device
  with pytest.raises(SystemExit, match="no torchvision equivalent"):
    bench_input.torchvision_transforms("randaugment(n=2,m=9,mstd=0.5)", uint8=False)


def test_multicrop_benchmark_sides_do_the_releases_work(tmp_path):
  """--multicrop: ours runs on the tool's JPEGs; the torchvision side is DINOv2's DataAugmentationDINO with
  config.ssl's defaults (2 x 224 + 8 x 98 crops, the blur probabilities the release applies)."""
  root = bench_input.write_jpegs(str(tmp_path), 4, classes=2, size=(64, 48))
  assert bench_input.ours_multicrop(root, images=2, batch=2) > 0
  transforms = pytest.importorskip("torchvision.transforms")
  from PIL import Image
  image = Image.open(os.path.join(root, "train", "class000", "000000.jpg"))
  out = bench_input.dinov2_transform()(image)
  assert out["global_crops"].shape == (2, 3, 224, 224) and out["local_crops"].shape == (8, 3, 98, 98)
  assert bench_input.dinov2_transform(uint8=True)(image)["local_crops"].dtype.is_floating_point is False
  parts = bench_input.dinov2_transform().parts
  crop = parts["global"].transforms[0]
  assert (crop.size, crop.scale, crop.interpolation) == ((224, 224), (0.32, 1.0), transforms.InterpolationMode.BICUBIC)
  assert (parts["local"].transforms[0].size, parts["local"].transforms[0].scale) == ((98, 98), (0.05, 0.32))
  # The release's GaussianBlur(p) is RandomApply(p=1-p): blur is applied with p 0 / 0.9 / 0.5.
  for name, p in [("global_1", 0.0), ("global_2", 0.9), ("local_extra", 0.5)]:
    colour, blur = parts[name].transforms[:2]
    assert blur.p == p and isinstance(blur.transforms[0], transforms.GaussianBlur), name
    assert tuple(blur.transforms[0].kernel_size) == (9, 9) and tuple(blur.transforms[0].sigma) == (0.1, 2.0)
    jitter, gray = colour.transforms
    assert jitter.p == 0.8 and (jitter.transforms[0].hue == (-0.1, 0.1)) and gray.p == 0.2
  assert [type(t).__name__ for t in parts["global_2"].transforms[2:4]] == ["RandomSolarize", "Compose"]
  assert parts["global_2"].transforms[2].p == 0.2 and parts["global_2"].transforms[2].threshold == 128


def test_each_performance_switch_runs_and_is_named():
  row = bench.bench("lenet5", batch=8, steps_timed=4, warmup=1, num_classes=10, donate=False, uint8=True,
                    feed="host", prefetch=1, sync_every=2)
  assert row["variant"] == "no-donate,uint8,host/prefetch1,sync2"
  assert row["images_per_sec"] > 0 and math.isfinite(row["step_ms"]) and row["saved_for_backward_gb"] > 0
  with pytest.raises(bench.UserError, match="--sync-every 5 must be between 1 and --steps 4"):
    bench.bench("lenet5", batch=8, steps_timed=4, sync_every=5)


def test_saved_for_backward_shrinks_with_remat_without_compiling():
  full = bench.bench("resnet18", batch=8, image_size=64, saved_only=True)
  rematted = bench.bench("resnet18", batch=8, image_size=64, saved_only=True, remat=True)
  assert rematted["variant"] == "remat" and "images_per_sec" not in rematted  # nothing was timed
  # resnet18's float32 weights (44.6 MiB) are read by the backward either way; the activations kept shrink
  # 2.34x (measured; basic blocks have two convs, and the stem is not rematerialised).
  weights = 11_689_512 * 4 / 2**30
  assert (full["saved_for_backward_gb"] - weights) > 2 * (rematted["saved_for_backward_gb"] - weights) > 0


def test_suite_runs_its_stages_resumes_and_reports(tmp_path, monkeypatch):
  out = str(tmp_path / "suite")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # LeNet compiles in well under 1 s
  report = bench_suite.run_plan("smoke", out, budget_s=300, compile_cache=str(tmp_path / "cache"))
  rows = bench_suite.read_rows(out)
  assert set(rows) == {"lenet", "lenet_uint8_sync2", "lenet_again", "lenet_flag", "lenet_abort", "lenet_abort_2"}
  assert all(rows[k]["images_per_sec"] > 0 for k in ("lenet", "lenet_uint8_sync2", "lenet_again", "lenet_flag"))
  # The persistent compilation cache: lenet_again's step is lenet's program; lenet_flag's flag makes it another.
  assert [rows[k]["compile_cached"] for k in ("lenet", "lenet_uint8_sync2", "lenet_again", "lenet_flag")] == \
      [False, False, True, False]
  assert f"| {rows['lenet_again']['compile_s']:.1f} (cached) |" in report
  # Stage c's unknown XLA flag aborts its process (as XLA's fatal checks do): that row is failed, and a new process
  # goes on with the stage's next row (which aborts too).
  crash = f"lenet_abort ({rows['lenet_abort']['error']}); lenet_abort_2 ({rows['lenet_abort_2']['error']})"
  assert rows["lenet_abort"]["kind"] == "crash" and f"Not measured: {crash}" in report
  assert re.fullmatch(r"the stage's process exited with status -?[1-9]\d* in this row \(see suite.log\)",
                      rows["lenet_abort"]["error"])
  assert "Unknown flag in XLA_FLAGS: --xla_no_such_flag" in open(os.path.join(out, "suite.log")).read()
  assert "--xla_cpu_enable_fast_math=false" in rows["lenet_flag"]["xla_flags"]  # its stage's own XLA_FLAGS
  assert rows["lenet"]["stage"] == "a" and rows["lenet_flag"]["stage"] == "b"
  ratio = rows["lenet_uint8_sync2"]["images_per_sec"] / rows["lenet"]["images_per_sec"]
  assert f"- lenet_uint8_sync2 / lenet: {ratio:.2f}x images/s" in report
  with open(os.path.join(out, "report.md")) as f:
    assert f.read().strip() == report
  # The call's date, command, commit and versions head the report.
  (env,) = bench_suite.read_envs(out)
  assert env["packages"]["jax"] == jax.__version__
  assert env["command"].endswith(f"--plan smoke --budget 300 --compile-cache {tmp_path / 'cache'}")
  assert report.startswith("Environment (one line per call):\n- " + env["date"])
  assert f"jax {jax.__version__}, jaxlib " in report and f"Python {platform.python_version()}" in report
  # A second call with --resume measures nothing again; without a budget no stage starts (nor a line of env).
  assert bench_suite.run_plan("smoke", out, budget_s=0, resume=True) == report
  assert len(open(os.path.join(out, "rows.jsonl")).readlines()) == 6
  # A failed row (as an out-of-memory would leave) is not run again on --resume, only with --retry-errors.
  with open(os.path.join(out, "rows.jsonl"), "a") as f:
    f.write(json.dumps({"id": "lenet_flag", "error": "XlaRuntimeError: RESOURCE_EXHAUSTED", "stage": "b"}) + "\n")
  resumed = bench_suite.run_plan("smoke", out, budget_s=60, resume=True)
  assert len(bench_suite.read_envs(out)) == 2 and resumed.count("`python -m vision.tools.bench_suite") == 2
  assert len(open(os.path.join(out, "rows.jsonl")).readlines()) == 7  # no failed row ran again
  assert f"Not measured: lenet_flag (XlaRuntimeError: RESOURCE_EXHAUSTED); {crash}" in resumed
  retried = bench_suite.run_plan("smoke", out, budget_s=60, resume=True, retry_errors=True)
  assert len(open(os.path.join(out, "rows.jsonl")).readlines()) == 10  # all three ran again; the aborts abort
  assert bench_suite.read_rows(out)["lenet_flag"]["images_per_sec"] > 0 and "--retry-errors" in retried
  assert f"Not measured: {crash}" in retried
  assert "Not measured: lenet (not run)" in bench_suite.run_plan("smoke", str(tmp_path / "none"), budget_s=0)


def test_a_row_that_a_kill_cut_short_runs_again_and_the_next_row_stays_whole(tmp_path, capsys):
  out = str(tmp_path)
  path = os.path.join(out, "rows.jsonl")
  row = lambda row_id, ips: {"id": row_id, "model": "lenet5", "mode": "train", "batch": 8, "dtype": "float32",
                             "images_per_sec": ips, "step_ms": 8e3 / ips}
  with open(path, "w") as f:  # the device tool's timeout killed the call while it wrote lenet_again's line
    f.write(json.dumps(row("lenet", 5.0)) + "\n" + '{"id": "lenet_again", "images_per')
  assert bench_suite.settled(out) == {"lenet"}  # so a --resume measures lenet_again again
  bench_suite.append_jsonl(path, row("lenet_again", 6.0))
  assert {k: r["images_per_sec"] for k, r in bench_suite.read_rows(out).items()} == {"lenet": 5.0, "lenet_again": 6.0}
  report = bench_suite.run_plan("smoke", out, budget_s=0, resume=True)  # and the report is written, not a traceback
  assert "| lenet_again | " in report and "Not measured: lenet_uint8_sync2 (not run)" in report
  assert capsys.readouterr().err.strip() == f"{path}:2: not a JSON object (a write cut short?); left out"


def test_gpu_plan_is_sound_before_a_gpu_spends_time_on_it(monkeypatch):
  """Every row of the GPU plan names a function that takes its arguments, every comparison names a row of the
  plan, and each of our distinct networks builds and traces at its real size and dtype (under jax.eval_shape:
  nothing is compiled). A typo here would otherwise surface only as an error row of a scarce GPU run."""
  import inspect

  from conftest import ROOT
  from vision import cli
  plan = bench_suite.GPU_PLAN
  assert len({name for name, *_ in plan}) == len(plan)
  rows = {row_id: (kind, kwargs, against) for _, _, items in plan for row_id, kind, kwargs, against in items}
  assert len(rows) == sum(len(items) for *_, items in plan)  # ids are unique
  traced = set()
  for row_id, (kind, kwargs, against) in rows.items():
    for what, other in against.items():
      assert what in ("peer", "baseline") and other in rows, (row_id, what, other)
      assert (rows[other][0] == "torch") == (what == "peer"), (row_id, other)  # peers are PyTorch's rows
    fn, args = bench_suite.row_call(kind, kwargs)
    inspect.signature(fn).bind(**args)
    if kind == "ours":
      # cuDNN attention raises at trace time without a GPU; XLA's attention traces the same network.
      args = {**args, "attn_implementation": "xla"} if "attn_implementation" in args else args
      named = inspect.signature(bench.bench).parameters  # the rest goes to the model: a typo lands there
      key = (args["model_name"], args.get("dtype"), args.get("mode"), args.get("uint8"),
             tuple(sorted((k, v) for k, v in args.items() if k not in named)))
      if key not in traced:
        traced.add(key)
        row = bench.bench(**args, saved_only=True)
        assert row["batch"] == 256 and row["image_size"] == 224, row_id
        assert (row["saved_for_backward_gb"] or 0) > 0 or row["mode"] == "infer", row_id
    elif kind == "dinov2":
      monkeypatch.chdir(ROOT)  # the device run's working directory
      config = cli.load_config_file(args["config_spec"])
      assert config.task == "dinov2" and config.train.batch_size == 256, row_id
      row = bench.bench_dinov2(**args, saved_only=True)  # the whole student loss at its real size
      assert row["batch"] == 256 and row["saved_for_backward_gb"] > 0, row_id
  assert len(traced) >= 6  # ResNet-50 bf16/fp32/uint8/remat/infer, ViT-B/16 with and without remat
  timm = pytest.importorskip("timm")
  torchvision = pytest.importorskip("torchvision")
  for kind, kwargs, _ in rows.values():
    if kind == "torch":
      name = kwargs["model_name"]
      assert name in torchvision.models.list_models() or name in timm.list_models(name), name


def test_suite_report_compares_with_peers_and_baselines():
  plan = [("s", "", [("a", "ours", {}, {"peer": "t"}), ("t", "torch", {}, {}),
                     ("a_remat", "ours", {}, {"baseline": "a"}), ("b", "ours", {}, {"peer": "t"})])]
  row = dict(model="m", mode="train", batch=8, dtype="bfloat16", step_ms=1.0, variant="")
  device = dict(memory_source="device", xla_buffers_gb=3.5)
  rows = {"a": {**row, **device, "images_per_sec": 300.0, "peak_memory_gb": 4.0, "saved_for_backward_gb": 2.0},
          "t": {**row, "images_per_sec": 200.0, "compile": True, "library": "torchvision", "peak_memory_gb": 5.0},
          "a_remat": {**row, **device, "images_per_sec": 240.0, "peak_memory_gb": 3.0, "saved_for_backward_gb": 0.5,
                      "variant": "remat"},
          "b": {"error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}}
  report = bench_suite.format_report(plan, rows)
  assert "- a / t: 1.50x images/s, 0.80x peak memory (peer)" in report
  assert "- a_remat / a: 0.80x images/s, 0.75x peak memory, 0.25x saved for the backward (baseline)" in report
  assert "| t | m | torch.compile |" in report and "| a_remat | m | remat |" in report
  assert "Not measured: b (XlaRuntimeError: RESOURCE_EXHAUSTED)" in report and "(XLA)" not in report
  # A row whose device peak was an earlier row's: XLA's buffers on both sides, never against the device's peak.
  rows["a_remat"].update(memory_source="xla_buffers (an earlier row in this process set the device's peak)",
                         peak_memory_gb=1.75, xla_buffers_gb=1.75)
  report = bench_suite.format_report(plan, rows)
  assert "- a_remat / a: 0.80x images/s, 0.50x XLA buffers, 0.25x saved for the backward (baseline)" in report
  assert "| 1.75 (XLA) |" in report and "mem GB (XLA): XLA's argument" in report


def test_dinov2_step_row_from_a_config():
  from conftest import ROOT
  row = bench.bench_dinov2(os.path.join(ROOT, "configs", "dinov2_digits.py"), steps_timed=2, warmup=1)
  assert row["model"] == "vit_small_patch14_dinov2" and row["batch"] == 64 and row["variant"] == "dinov2 4x16+2x24"
  for key in ("images_per_sec", "step_ms", "compile_s", "gflops_per_step", "peak_memory_gb", "saved_for_backward_gb"):
    assert row[key] > 0 and math.isfinite(row[key]), key
  # What the student's backward keeps, without compiling: remat of the backbone's blocks keeps less.
  digits = os.path.join(ROOT, "configs", "dinov2_digits.py")
  plain, remat = (bench.bench_dinov2(digits, remat=r, saved_only=True) for r in (False, True))
  assert plain["saved_for_backward_gb"] == row["saved_for_backward_gb"] and "images_per_sec" not in plain
  assert remat["saved_for_backward_gb"] < 0.5 * plain["saved_for_backward_gb"] and remat["variant"].endswith(",remat")
  with pytest.raises(bench.UserError, match="task is 'classification', not 'dinov2'"):
    bench.bench_dinov2(os.path.join(ROOT, "configs", "lenet_digits.py"))

"""End to end: the README's command, eval.py, one-line errors, no TF in the core (faults: test_faults.py)."""
import glob
import json
import os
import re
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT, run_cli
from vision.train.loop import evaluate_checkpoint, train_and_evaluate

CONFIG = os.path.join(ROOT, "configs", "lenet_digits.py")


def _final_top1(stdout):
  match = re.search(r"final test: top1 ([0-9.]+)", stdout)
  assert match, stdout
  return float(match.group(1))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, data_dir):
  """The README's train command, once, as a user runs it (1 device)."""
  workdir = str(tmp_path_factory.mktemp("digits"))
  start = time.time()
  proc = run_cli("train.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc, time.time() - start


def test_lenet_digits_reaches_98_percent(digits_run):
  workdir, proc, seconds = digits_run
  top1 = _final_top1(proc.stdout)
  assert top1 >= 0.98, proc.stdout
  print(f"lenet_digits: top1 {top1:.4f} in {seconds:.1f}s wall")  # shown with pytest -s
  assert "Traceback" not in proc.stderr
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [m for m in metrics if "train/loss" in m]
  assert train[-1]["train/loss"] < train[0]["train/loss"] / 5
  assert all(m["train/images_per_sec"] > 0 for m in train)
  assert glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "lenet5"
  # Latest K=3 plus the best: 880 steps, a checkpoint every 220.
  steps = _complete_steps(workdir)
  assert steps[-1] == 880 and len(steps) <= 4


def test_eval_cli_reports_metrics_json(digits_run, data_dir):
  workdir, train_proc, _ = digits_run
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "eval_test_step880.json")))
  assert results["count"] == 360 and results["step"] == 880
  assert abs(results["top1"] - _final_top1(train_proc.stdout)) < 1e-4  # printed with 4 decimals
  confusion = np.array(results["confusion_matrix"])
  assert confusion.shape == (10, 10) and confusion.sum() == 360
  np.testing.assert_allclose(np.trace(confusion) / 360, results["top1"], atol=1e-6)
  assert set(results["per_class_accuracy"]) == {str(i) for i in range(10)}
  assert results["top5"] >= results["top1"]
  # A given step, and a step that does not exist.
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={workdir}", "--step=7",
                 f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 2 and "no checkpoint for step 7" in proc.stderr


def test_eval_probe_cli_knn_linear_and_few_shot_of_the_trained_backbone(digits_run, data_dir):
  """--probe: frozen pooled features of the trained LeNet (its 84-unit F6 layer) are good digit features."""
  workdir, _, _ = digits_run
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                 "--probe", "--shots=1,10", "--config.ssl.probe_epochs=20", "--config.ssl.probe_lrs=(0.01,0.1,1.0)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r"360 images, frozen features: kNN top1 k=10 0\.9\d+", proc.stdout), proc.stdout
  results = json.load(open(os.path.join(workdir, "probe_test_step880.json")))
  assert results["count"] == 360 and results["train_count"] == 1437 and results["weights"] == "raw"
  assert results["knn"]["20"]["top1"] > 0.95 and results["linear"]["top1"] > 0.95
  few = results["few_shot"]
  assert few["10"]["top1"] > 0.9 and few["10"]["top1"] > few["1"]["top1"] > 0.5 and len(few["1"]["per_seed"]) == 3
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--ema")
  assert proc.returncode == 2 and "holds no model EMA" in proc.stderr.strip().splitlines()[-1]


def _complete_steps(workdir):
  """Steps with a finished checkpoint (Orbax renames '<step>.orbax-checkpoint-tmp' to '<step>' when done)."""
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


# SIGKILL/SIGTERM resume: tests/test_faults.py (ten kills, mid-save too, then bit-identical params).


def test_resnet18_cifar10_on_mock_data_trains_checkpoints_and_evaluates(tmp_path):
  """The ResNet-18 CIFAR-10 config, a few steps with tfds's mock data (1 device: compiling for 8 is slower)."""
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import resnet18_cifar10
  config = resnet18_cifar10.get_config("batch=16")
  config.train.num_steps, config.train.eval_batch_size = 3, 16
  config.train.log_every = config.train.checkpoint_every = config.train.eval_every = 3
  config.train.async_checkpointing = False
  workdir = str(tmp_path / "cifar")
  with tfds.testing.mock_data(num_examples=48):
    results = train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    assert results["count"] == 48 and 0.0 <= results["top1"] <= 1.0 and np.isfinite(results["loss"])
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))
    again, path = evaluate_checkpoint(config, workdir, devices=jax.devices()[:1])
  assert again["top1"] == results["top1"] and os.path.exists(path)
  assert np.array(again["confusion_matrix"]).sum() == 48


@pytest.mark.parametrize("args,message", [
    (["--config.model.name=resnet5"], r"unknown model 'resnet5' \(did you mean: resnet50"),
    (["--config.optim.learnig_rate=0.1"], r"unknown config key 'optim.learnig_rate'"),
    (["--config.data.name=cifar11"], r"unknown dataset 'cifar11' \(did you mean: cifar10"),
    (["--config.optim.lr=-1"], r"config.optim.lr = -1.0 must be a positive number"),
    (["--config.model.kwargs.widht=2"], r"model 'lenet5' does not take that argument: .*'widht'"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, args, message):
  proc = run_cli("train.py", f"--config={CONFIG}", f"--workdir={tmp_path}", *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and re.search(message, last), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_missing_imagenet_is_one_line_with_instructions(tmp_path):
  proc = run_cli("train.py", f"--config={ROOT}/configs/resnet50_imagenet.py", f"--workdir={tmp_path}/w",
                 f"--config.data.data_dir={tmp_path}/tfds")
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "imagenet2012 is not prepared" in last and "manual" in last and "tfds build imagenet2012" in last
  assert "Traceback" not in proc.stderr


def test_checkpoint_that_does_not_fit_and_empty_workdir(digits_run, data_dir, tmp_path):
  workdir, _, _ = digits_run
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                 "--config.data.channels=3")
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "does not fit the model" in last and "params/c1/kernel" in last and "(5, 5, 1, 6)" in last
  proc = run_cli("eval.py", f"--config={CONFIG}", f"--workdir={tmp_path}/empty", f"--config.data.data_dir={data_dir}")
  assert proc.returncode == 2 and "no checkpoints in" in proc.stderr.strip().splitlines()[-1]


def test_training_core_imports_and_steps_without_tensorflow():
  code = r"""
import sys
# Any import of TensorFlow or tfds now fails (the GPU machine's image has neither; see BENCHMARKS.md).
for name in ('tensorflow', 'tensorflow_datasets'):
  sys.modules[name] = None
import jax, jax.numpy as jnp, numpy as np
from vision.train import checkpoint, config, loop, mesh, optim, steps, writers
from vision.evaluators import classification
from vision.models import create_model
from vision.tools import bench, bench_suite  # the GPU benchmarks run where TensorFlow is not installed
from vision import cli
from vision.ssl import loop as ssl_loop  # and bench --dinov2's step
ssl_loop.build_networks(cli.load_config_file('configs/dinov2_vits14_imagenet.py:batch=256'))
model = create_model('lenet5', num_classes=10)
o = config.default_config().optim
tx = optim.make_optimizer(o, 0.1)
state = steps.init_state(model, tx, jax.random.key(0), (1, 32, 32, 1))
step = jax.jit(steps.make_train_step(model, tx, 10))
batch = {'image': np.zeros((4, 32, 32, 1), np.float32), 'label': np.arange(4, dtype=np.int32)}
state, m = step(state, batch)
assert int(state.step) == 1 and np.isfinite(float(m['loss']))
assert 'tensorflow' not in [k for k, v in sys.modules.items() if v is not None]
print('ok')
"""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_a_deprecated_call_from_our_code_fails_the_test_that_makes_it():
  """setup.cfg's filterwarnings: a DeprecationWarning or FutureWarning whose module (the frame its stacklevel
  names) is ours is an error; other libraries' own deprecation noise is not."""
  def warn(category, module):
    warnings.warn_explicit("old API", category, "f.py", 1, module=module)

  for module in ("vision.models.resnet", "vision", "test_train", "tests.test_train"):
    for category in (DeprecationWarning, FutureWarning):
      with pytest.raises(category, match="old API"):
        warn(category, module)
  warn(DeprecationWarning, "tensorflow.python.framework")  # ignored: not ours
  import jax.experimental.shard_map as legacy  # deprecated in JAX 0.8; warns with the caller's module
  if "shard_map" in getattr(legacy, "_deprecations", {}):
    with pytest.raises(DeprecationWarning, match="jax.shard_map"):
      legacy.shard_map  # noqa: B018

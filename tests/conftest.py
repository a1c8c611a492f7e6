"""Test setup: 8 simulated CPU devices for the sharding tests, quiet TensorFlow, CLI and model helpers."""
import contextlib
import os
import subprocess
import sys

# Must be set before JAX initialises its backends. 8 simulated CPU devices for the sharding tests; the rest
# trade run-time speed for compile speed (tests are compile-bound: about 4x faster XLA:CPU compiles).
FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 "
                "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# torch's CUDA build imports triton (torchvision.models -> torch._dynamo), whose bundled LLVM crashes the
# process (SIGSEGV) when loaded after TensorFlow. The parity tests run torch on the CPU and never need triton.
sys.modules.setdefault("triton", None)

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The longest files first. `--dist loadfile` hands whole files to the two workers in collection order, and
# alphabetically the longest (test_weights.py, ~210 of the suite's ~1,120 test-seconds on 2026-12-02) came
# late: it ran alone at the end while the other worker idled (623 s wall for 1,117 s of tests).
LONGEST_FILES_FIRST = ("test_weights.py", "test_train.py", "test_ssl_eval.py", "test_recipes.py", "test_bench.py",
                       "test_remat.py", "test_ssl_train.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files and tests keep their order


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data_dir for the session (the digits dataset is built into it once)."""
  return str(tmp_path_factory.mktemp("tfds"))


def run_cli(script, *args, devices=1, timeout=600, env=None):
  """Runs train.py / eval.py as a user would; `devices` simulated CPU devices."""
  full_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if devices > 1:
    full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  full_env.update(env or {})
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                        timeout=timeout, env=full_env, cwd=ROOT)


@contextlib.contextmanager
def drop_path_rates():
  """Collects the rate of every DropPath called inside the block (a flax method interceptor), in call order:
  `with drop_path_rates() as rates: model.init(...)`."""
  import flax.linen as nn

  from vision.models.layers import DropPath
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath) and context.method_name == "__call__":
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    yield rates

"""Faults: SIGKILL at random points (mid-save too) ten times, SIGTERM, non-finite losses, a full disk."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, run_cli
from vision.errors import TrainingError
from vision.train import checkpoint as ckpt_lib
from vision.train import mesh as mesh_lib

CONFIG = os.path.join(ROOT, "configs", "lenet_digits.py")
STEPS = 200


def _args(workdir, data_dir, *extra):
  return [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=10", "--config.train.log_every=10",
          f"--config.train.eval_every={STEPS}", *extra]


def _env(cache):
  """As run_cli's, plus a persistent compilation cache: restarts skip XLA (the executables are the same)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _start(args, env, log_path):
  with open(log_path, "w") as log:  # a file, not a pipe: a pipe nobody reads would block the trainer
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _complete(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _saving(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(".orbax-checkpoint-tmp" in n for n in os.listdir(directory))


def _wait(predicate, proc, timeout=240.0, poll=0.002):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, "the trainer ended before it could be interrupted"
    assert time.time() < deadline, "timed out waiting for the trainer"
    time.sleep(poll)


def _build_digits(data_dir):
  from vision.data import pipeline
  c = _digits_config(data_dir, 1)
  pipeline.dataset_facts(c.data)


def _state(workdir, step):
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True, best_metric="")
  return ckpt_lib.flat_paths(ckpt.restore_arrays(step, mesh_lib.make_mesh(jax.devices()[:1])))


@pytest.mark.slow
def test_ten_sigkills_and_a_sigterm_then_the_same_params_as_an_uninterrupted_run(tmp_path, data_dir):
  """Kill -9 during start-up (import, compile, restore), mid-save and between steps, ten times in a row, then
  SIGTERM once; every restart resumes from the last complete checkpoint and the result is bit-identical."""
  _build_digits(data_dir)  # before two trainers start at once
  env = _env(str(tmp_path / "xla_cache"))
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  reference = _start(_args(straight, data_dir), env, tmp_path / "straight.log")  # runs alongside
  rng = random.Random(8)
  modes = ["start"] * 4 + ["save"] * 3 + ["step"] * 3
  rng.shuffle(modes)
  verified, seen = set(), []
  for i, mode in enumerate(modes + ["sigterm"]):
    before = _complete(killed)
    victim = _start(_args(killed, data_dir), env, tmp_path / f"run{i}.log")
    progressed = lambda: _complete(killed) and _complete(killed)[-1] > (before[-1] if before else 0)
    if mode == "start":
      time.sleep(rng.uniform(0.5, 6.0))
    elif mode == "save":  # one new checkpoint first, then the next save in the middle
      _wait(progressed, victim)
      _wait(lambda: _saving(killed), victim)
    else:
      _wait(progressed, victim)
      time.sleep(rng.uniform(0.0, 0.5))
    assert victim.poll() is None, f"run {i} ({mode}) ended before the signal"
    mid_save = _saving(killed)
    sent = time.time()
    victim.send_signal(signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
    victim.wait(timeout=120)
    exit_seconds = time.time() - sent
    log = open(tmp_path / f"run{i}.log").read()
    resumed = re.search(r"resumed from step (\d+)", log)
    if resumed:  # the restart took the last complete checkpoint
      assert int(resumed.group(1)) == before[-1], (i, mode, before, log[-2000:])
    else:
      assert not before or mode == "start", (i, mode, log[-2000:])
    seen.append((mode, mid_save, before[-1] if before else None, _complete(killed)))
    for step in set(_complete(killed)) - verified:  # every checkpoint left behind is readable
      assert _state(killed, step)["step"] == step
      verified.add(step)
  assert victim.returncode == 143, log[-2000:]
  saved = re.search(r"SIGTERM: saved the checkpoint of step (\d+)", log)
  assert saved and int(saved.group(1)) == _complete(killed)[-1] and "Traceback" not in log
  assert exit_seconds < 30, exit_seconds  # one step + one save + interpreter exit (measured ~3 s)
  assert sum(mode == "save" and mid for mode, mid, _, _ in seen) == 3, seen  # really killed mid-save
  assert not os.path.exists(os.path.join(killed, "checkpoints", ckpt_lib.TRASH)) or \
      all(n.isdigit() for n in os.listdir(os.path.join(killed, "checkpoints", ckpt_lib.TRASH)))
  final = _start(_args(killed, data_dir), env, tmp_path / "final.log")
  assert final.wait(timeout=600) == 0, open(tmp_path / "final.log").read()[-3000:]
  assert reference.wait(timeout=600) == 0, open(tmp_path / "straight.log").read()[-3000:]
  a, b = _state(straight, STEPS), _state(killed, STEPS)
  assert a.keys() == b.keys()
  for key in a:  # params, optimizer moments, step, RNG: bit for bit
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
  print(f"interruptions (mode, mid-save, resumed from, complete after): {seen}; SIGTERM exit {exit_seconds:.1f}s")


def _digits_config(data_dir, steps, **train):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import lenet_digits
  c = lenet_digits.get_config()
  c.data.data_dir = data_dir
  c.train.num_steps, c.train.eval_every, c.train.log_every, c.train.checkpoint_every = steps, steps, 10, 5
  c.train.async_checkpointing = False
  c.train.keep_checkpoints = 100
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture
def nan_at_step(monkeypatch):
  """Makes the batch of step `n` (1-based) all NaN, through the real pipeline otherwise."""
  from vision.data import pipeline
  real = pipeline.train_batches

  def install(n):
    def batches(d, local_batch, seed, start_step=0, *args):
      for step, batch in enumerate(real(d, local_batch, seed, start_step, *args), start_step + 1):
        if step == n:
          batch = dict(batch, image=np.full(batch["image"].shape, np.nan, np.float32))  # uint8 holds no NaN
        yield batch
    monkeypatch.setattr(pipeline, "train_batches", batches)
  return install


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, nan_at_step):
  from vision.train.loop import train_and_evaluate
  nan_at_step(13)
  workdir = str(tmp_path / "nan")
  with pytest.raises(TrainingError) as e:
    train_and_evaluate(_digits_config(data_dir, 20), workdir, devices=jax.devices()[:1])
  message = str(e.value)
  # Steps 14 and 15 start from the NaN params: 3 non-finite steps by the check before the save at 15.
  assert "non-finite loss at step 13 (3 of steps 11-15)" in message and "\n" not in message
  assert f"last good checkpoint: step 10 in {workdir}/checkpoints" in message
  assert "config.train.skip_nonfinite=True" in message
  assert _complete(workdir) == [5, 10]  # nothing was saved after the bad step
  assert all(np.isfinite(np.asarray(v)).all() for v in _state(workdir, 10).values())


def test_nonfinite_steps_are_skipped_and_counted_by_config(tmp_path, data_dir, nan_at_step):
  from vision.train.loop import train_and_evaluate
  from vision.train.writers import read_metrics
  nan_at_step(13)
  workdir = str(tmp_path / "skip")
  results = train_and_evaluate(_digits_config(data_dir, 15, checkpoint_every=1, skip_nonfinite=True), workdir,
                               devices=jax.devices()[:1])
  assert results["count"] == 360 and np.isfinite(results["loss"])
  before, after = _state(workdir, 12), _state(workdir, 13)
  for key in before:  # the skipped step left params, moments and statistics as they were
    if key != "step":
      np.testing.assert_array_equal(np.asarray(before[key]), np.asarray(after[key]), err_msg=key)
  assert after["step"] == 13 and not np.array_equal(np.asarray(after["params/c1/kernel"]),
                                                    np.asarray(_state(workdir, 14)["params/c1/kernel"]))
  logged = {m["step"]: m for m in read_metrics(workdir) if "train/loss" in m}
  assert "train/skipped_steps" not in logged[10]
  assert logged[15]["train/skipped_steps"] == 1 and np.isfinite(logged[15]["train/loss"])


def _disk_full_command(workdir, data_dir, size_kb):
  """train.py with its workdir on a tmpfs of `size_kb`, in a private mount namespace (a real ENOSPC, as root).

  The workdir is copied out before the namespace, and its tmpfs, goes away.
  """
  inner = f"{workdir}.tmpfs"
  train = " ".join([sys.executable, os.path.join(ROOT, "train.py"), f"--config={CONFIG}", f"--workdir={inner}",
                    f"--config.data.data_dir={data_dir}", "--config.train.num_steps=20",
                    "--config.train.checkpoint_every=10", "--config.train.eval_every=20",
                    "--config.train.keep_checkpoints=1"])
  script = (f"mkdir -p {inner} && mount -t tmpfs -o size={size_kb}k tmpfs {inner} && {{ {train}; echo rc=$?; }}; "
            f"cp -r {inner} {workdir}")
  return ["unshare", "-Urm", "sh", "-c", script]


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, data_dir):
  """A tmpfs that holds one checkpoint of the digits LeNet (0.8 MB) but not two: the second save fails (ENOSPC)."""
  probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                         capture_output=True)
  if shutil.which("unshare") is None or probe.returncode:
    pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr[-200:]!r}")
  workdir = tmp_path / "w"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(_disk_full_command(workdir, data_dir, 1200), capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=600)
  out = proc.stdout + proc.stderr
  assert "rc=2" in proc.stdout, out[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"error: could not write the checkpoint of step 20 to \S+/checkpoints \(no space left on "
                      r"device: 0.8 MiB needed, 0.[0-5] MiB free\); free space .* it resumes from step 10, which "
                      r"is intact", last), out[-3000:]
  assert "Traceback" not in out
  assert _complete(str(workdir)) == [10]
  assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]  # the partial save was removed
  assert _state(str(workdir), 10)["step"] == 10


def test_unwritable_workdir_is_one_line_before_any_work(tmp_path):
  # Root ignores permission bits, so 'unwritable' is a path through a regular file (ENOTDIR), which is not.
  (tmp_path / "file").write_text("not a directory")
  proc = run_cli("train.py", f"--config={CONFIG}", f"--workdir={tmp_path}/file/run")
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == f"error: cannot write to --workdir {tmp_path}/file/run (Not a directory); choose a writable directory"


def test_opening_a_workdir_removes_a_killed_save_before_it_returns(tmp_path):
  """A save killed mid-way leaves '<step>.orbax-checkpoint-tmp-*'; the next run deletes it while opening the
  workdir and leaves no thread behind. Orbax's own cleanup ran in a thread that only the next save waited for,
  so a run refused before its first save exited under it (a failed CI run) and a traceback followed the error."""
  import threading
  import jax.numpy as jnp
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False, best_metric="")
  ckpt.save(1, {"w": jnp.ones(3)}, {"model": "m"})
  ckpt.close()
  directory = tmp_path / "checkpoints"
  (directory / "2.orbax-checkpoint-tmp-1764700000000000" / "state").mkdir(parents=True)  # Orbax's naming
  ckpt_lib.Checkpointer(str(tmp_path), read_only=True, best_metric="")  # eval.py deletes nothing
  assert sorted(os.listdir(directory)) == ["1", "2.orbax-checkpoint-tmp-1764700000000000"]
  before = set(threading.enumerate())
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), best_metric="")
  assert sorted(os.listdir(directory)) == ["1"]
  assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
  assert ckpt.latest_step() == 1

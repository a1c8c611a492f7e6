"""Orbax checkpoints in <workdir>/checkpoints: the last K plus the best by a metric.

Each checkpoint holds the whole TrainState (params, batch statistics, optimizer
state, RNG, step; the data position is a function of the step) and a small JSON
'meta' item naming the model and the number of classes, so a workdir that does
not fit the config is refused with a message before anything is restored.
Orbax writes into a temporary directory and renames on completion, so a run
killed mid-save leaves the previous checkpoints readable (the temporary
directory is removed when the next run opens the workdir). Old checkpoints are
retired the same way: renamed into checkpoints/.trash (atomic) and only then deleted, so a kill
during a deletion cannot leave a half-deleted '<step>' directory that looks
complete. A save that fails for lack of space or permission ends the run with
a UserError naming the step, the reason and the intact checkpoint to resume from.
"""
import errno
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from vision.errors import UserError, WriteError

TRASH = ".trash"  # not a step name, so Orbax never lists it
_WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "read-only file system", errno.EFBIG: "file too large",
                 errno.ENOTDIR: "not a directory"}


def _metric_key(best_metric):
  sign = -1.0 if best_metric == "loss" else 1.0  # losses are better small
  return lambda metrics: sign * metrics[best_metric]


class Checkpointer:
  def __init__(self, workdir, keep=3, best_metric="top1", async_save=True, read_only=False):
    keep_policies = [policies.LatestN(n=keep)]
    if best_metric:
      keep_policies.append(policies.BestN(get_metric_fn=_metric_key(best_metric), n=1,
                                          keep_checkpoints_without_metrics=False))
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep_policies), create=not read_only,
        enable_async_checkpointing=async_save, read_only=read_only, cleanup_tmp_directories=False,
        todelete_subdir=None if read_only else TRASH)
    try:
      # Handlers named up front, so a fresh manager can read metadata before any save or restore.
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
          "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    except Exception as e:
      if not read_only and _write_error(e):
        raise UserError(f"cannot create {self.directory} ({_write_error(e)}); choose a writable --workdir") from None
      raise
    self.best_metric = best_metric
    self.read_only = read_only
    self._pending = None  # the step of a save that may still be in flight
    self._remove_leftovers()

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def best_step(self):
    return self.manager.best_step() if self.best_metric else None

  def save(self, step: int, state, meta: dict, metrics: dict | None = None):
    """Starts saving `step` (in the background with async_save) after the previous save has finished."""
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    self.wait()  # Orbax's save waits for the previous one anyway; here its errors get our message
    self._empty_trash()
    self._pending = step
    with self._write_errors():
      self._check_space(step, sum(x.nbytes for x in jax.tree.leaves(state)))
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)),
                        metrics=metrics, force=True)

  def complete_steps(self) -> list:
    """Steps whose checkpoint was committed, read from the directory itself (not the manager's cache)."""
    names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    return sorted(int(n) for n in names if n.isdigit())

  def _check_space(self, step, nbytes):
    """Refuses a save that cannot fit before it starts (one process; several rely on Orbax's own errors).

    A save that fails half-way is safe too (the previous checkpoint stays), but Orbax's background writers
    then log a traceback each; this check turns the common case, a full disk, into the one line alone.
    """
    if jax.process_count() > 1:
      return
    need = int(nbytes * 1.05) + 2**16
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise OSError(errno.ENOSPC, f"{need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free")

  def _empty_trash(self):
    """Deletes retired checkpoints (renamed into TRASH by Orbax; see the module docstring)."""
    trash = os.path.join(self.directory, TRASH)
    if not self.read_only and jax.process_index() == 0 and os.path.isdir(trash):
      for name in os.listdir(trash):
        shutil.rmtree(os.path.join(trash, name), ignore_errors=True)

  def _remove_leftovers(self):
    """Deletes what a run killed mid-save left: its retired checkpoints and its uncommitted temporary directory.

    Here, before anything else, rather than by Orbax's cleanup_tmp_directories: that runs in a thread which only
    the next save waits for, so a run refused before its first save (a checkpoint of another model) exited with
    the thread still listing the directory, and its traceback at interpreter shutdown followed our one-line error.
    """
    self._empty_trash()
    if not self.read_only and jax.process_index() == 0:
      for name in ocp.step.tmp_checkpoints(self.directory):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _write_errors(self):
    return _WriteErrors(self)

  def meta(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_fits(self, step, abstract_state, meta: dict):
    """Raises UserError naming the first difference between the checkpoint and the config."""
    saved_meta = self.meta(step)
    for key in ("model", "num_classes"):
      if key in saved_meta and saved_meta[key] != meta.get(key):
        raise UserError(f"the checkpoint at step {step} in {self.directory} is for {key}={saved_meta[key]!r} but "
                        f"the config gives {meta.get(key)!r}; use another --workdir or the matching config")
    wanted = flat_paths(abstract_state)
    tops = {k.split("/")[0] for k in wanted}  # restoring only {'params', 'batch_stats'} ignores the rest
    saved = {k: v for k, v in flat_paths(self.manager.item_metadata(step)["state"]).items()
             if k.split("/")[0] in tops}
    # In the model's own order (step, params, batch_stats, opt_state, ...) so the first difference
    # named is the parameter itself, not one of its optimizer moments.
    for key in list(wanted) + sorted(set(saved) - set(wanted)):
      if key not in saved or key not in wanted:
        where = "checkpoint" if key not in saved else "config's model"
        raise UserError(f"the checkpoint at step {step} in {self.directory} does not fit the model: {key!r} is "
                        f"missing from the {where}; use another --workdir or the matching config")
      if tuple(saved[key].shape) != tuple(wanted[key].shape):
        raise UserError(f"the checkpoint at step {step} in {self.directory} does not fit the model: {key!r} has "
                        f"shape {tuple(saved[key].shape)} there and {tuple(wanted[key].shape)} in the model; "
                        "use another --workdir or the matching config")

  def restore(self, step, abstract_state, meta: dict):
    """Restores into the shardings of `abstract_state` (a pytree of ShapeDtypeStructs)."""
    self.check_fits(step, abstract_state, meta)
    return self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]

  def restore_variables(self, step, abstract_variables: dict, meta: dict, ema=False) -> dict:
    """Only {'params', 'batch_stats'} (what a forward pass needs), from a training or a converted checkpoint;
    with ema, those of the model EMA (config.train.ema_decay > 0)."""
    if ema:
      have = {k.split("/")[0] for k in flat_paths(self.manager.item_metadata(step)["state"])}
      if "ema" not in have:
        raise UserError(f"the checkpoint at step {step} in {self.directory} holds no model EMA (trained without "
                        "config.train.ema_decay); evaluate the raw weights (no --ema)")
      self.check_fits(step, {"ema": abstract_variables}, meta)
      target = {"ema": {k: v for k, v in abstract_variables.items() if jax.tree.leaves(v)}}
      restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
      path = os.path.join(self.directory, str(step), "state")
      restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
          path, args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))["ema"]
      return {k: restored.get(k, v) for k, v in abstract_variables.items()}
    self.check_fits(step, abstract_variables, meta)
    target = {k: v for k, v in abstract_variables.items() if jax.tree.leaves(v)}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
    path = os.path.join(self.directory, str(step), "state")
    restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
        path, args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))
    return {k: restored.get(k, v) for k, v in abstract_variables.items()}

  def restore_arrays(self, step, mesh):
    """The saved state as a nested dict of arrays replicated on `mesh`, without knowing the model."""
    metadata = self.manager.item_metadata(step)["state"]
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), metadata)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

  def wait(self):
    with self._write_errors():
      self.manager.wait_until_finished()
    self._pending = None

  def close(self):
    with self._write_errors():
      self.manager.close()
    self._pending = None


def _not_a_write_error(record) -> bool:
  """Orbax logs a failed background save with its traceback; our one-line UserError says it instead."""
  return not (record.exc_info and _write_error(record.exc_info[1]))


for _name in ("absl", "asyncio"):  # Orbax logs through absl's logger, its unawaited writes through asyncio's
  logging.getLogger(_name).addFilter(_not_a_write_error)


class _WriteErrors:
  """Turns a failed write (full disk, no permission) into a UserError naming the intact checkpoint."""

  def __init__(self, ckpt):
    self.ckpt = ckpt

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    reason = error is not None and _write_error(error)
    if not reason:
      return False
    c, step = self.ckpt, self.ckpt._pending
    c._pending = None
    for name in os.listdir(c.directory) if os.path.isdir(c.directory) else []:
      if name.startswith(f"{step}.orbax-checkpoint-tmp"):  # give the space back now, not on the next start
        shutil.rmtree(os.path.join(c.directory, name), ignore_errors=True)
    done = [s for s in c.complete_steps() if s != step]
    resume = f"it resumes from step {done[-1]}, which is intact" if done else "no earlier checkpoint exists"
    raise WriteError(f"could not write the checkpoint of step {step} to {c.directory} ({reason}); free space or "
                    f"make the directory writable, then rerun the same command: {resume}") from None


def _write_error(error) -> str:
  """The reason, when `error` (or an exception it was raised from) is a failed write; '' otherwise."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _WRITE_ERRORS:
      detail = error.strerror if error.errno == errno.ENOSPC and "free" in str(error.strerror) else ""
      return _WRITE_ERRORS[error.errno] + (f": {detail}" if detail else "")
    text = str(error).lower()  # tensorstore reports errno text inside its own status messages
    for reason in _WRITE_ERRORS.values():
      if reason in text:
        return reason
    error = error.__cause__ or error.__context__
  return ""


def open_for_eval(workdir: str, step: int | None = None):
  """(read-only Checkpointer of workdir, the latest step or `step`), or a UserError saying what is missing."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"no checkpoints in {workdir} (expected {directory}); train there first or fix --workdir")
  ckpt = Checkpointer(workdir, read_only=True, best_metric="")
  steps_there = ckpt.all_steps()
  if not steps_there:
    raise UserError(f"no complete checkpoint in {directory}; train there first or fix --workdir")
  if step is None:
    step = max(steps_there)
  elif step not in steps_there:
    raise UserError(f"no checkpoint for step {step} in {directory}; available steps: {sorted(steps_there)}")
  return ckpt, step


def path_str(path) -> str:
  """A jax key path as 'params/conv1/kernel' (dict keys, dataclass fields, sequence indices alike)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def flat_paths(tree) -> dict:
  """{'params/conv1/kernel': leaf, ...} for any pytree (state, optax states, Orbax metadata)."""
  return {path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def merge_matching(fresh, loaded, adapt=None):
  """`fresh` with each leaf replaced by `loaded`'s leaf at the same path when shapes agree.

  `adapt(key, loaded_leaf, shape)` may turn a leaf of another shape into this
  one (a ViT's position embeddings at another resolution) or return None.
  Returns (tree, keys that kept their fresh value): a new classifier head when
  the number of classes differs, for example.
  """
  loaded_flat = flat_paths(loaded)
  kept_fresh = []

  def pick(path, leaf):
    key = path_str(path)
    other = loaded_flat.get(key)
    if other is not None and tuple(np.shape(other)) != tuple(np.shape(leaf)) and adapt is not None:
      adapted = adapt(key, np.asarray(other), tuple(np.shape(leaf)))
      other = None if adapted is None else jax.device_put(adapted, other.sharding)
    if other is not None and tuple(np.shape(other)) == tuple(np.shape(leaf)):
      return other
    kept_fresh.append(key)
    return leaf
  return jax.tree_util.tree_map_with_path(pick, fresh), kept_fresh

"""Orbax checkpoints in <workdir>/checkpoints: the last K plus the best by a metric.

Each checkpoint holds the whole TrainState (params, batch statistics, optimizer
state, RNG, step; the data position is a function of the step) and a small JSON
'meta' item naming the model and the number of classes, so a workdir that does
not fit the config is refused with a message before anything is restored.
Orbax writes into a temporary directory and renames on completion, so a run
killed mid-save leaves the previous checkpoints readable.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from vision.errors import UserError


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
        enable_async_checkpointing=async_save, read_only=read_only, cleanup_tmp_directories=True)
    # Handlers named up front, so a fresh manager can read metadata before any save or restore.
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    self.best_metric = best_metric

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def best_step(self):
    return self.manager.best_step() if self.best_metric else None

  def save(self, step: int, state, meta: dict, metrics: dict | None = None):
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)),
                      metrics=metrics, force=True)

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

  def restore_variables(self, step, abstract_variables: dict, meta: dict) -> dict:
    """Only {'params', 'batch_stats'} (what a forward pass needs), from a training or a converted checkpoint."""
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
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


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

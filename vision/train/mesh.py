"""Device mesh and shardings: data parallel by default, FSDP by one switch.

One mesh axis, 'data'. Batches are split over it. Under data parallelism
params and optimizer state are replicated; under FSDP every leaf of at least
`fsdp_min_size` elements is split along its largest dimension that the device
count divides, so optimizer moments (same shapes as params) follow their params.
XLA inserts the all-gathers and reduce-scatters.
"""
import collections

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def leaf_spec(shape, n: int, fsdp: bool, min_size: int) -> P:
  if not fsdp or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = sorted((d for d in range(len(shape)) if shape[d] % n == 0), key=lambda d: -shape[d])
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[dims[0]] = "data"
  return P(*spec)


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool = False, min_size: int = 2**18):
  n = mesh.shape["data"]
  return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, n, fsdp, min_size)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """Per-process numpy batch -> global jax.Array sharded over the 'data' axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_device(batches, sharding: NamedSharding, size: int = 2):
  """Keeps `size` batches in flight to the devices while the step runs."""
  queue = collections.deque()
  for batch in batches:
    queue.append(to_global(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()

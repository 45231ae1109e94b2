"""Data parallelism with `jax.sharding`: one mesh axis "data", batch sharded, state replicated.

The same code runs on one CPU, on all local accelerators, and across hosts of a TPU pod (after
`jax.distributed.initialize()`): every process feeds its slice of the global batch and XLA inserts the
gradient all-reduce because parameters are replicated while the batch axis is sharded.
"""

import os

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

DATA_AXIS = "data"
MULTIHOST_ENV = "BORT_MULTIHOST"


def maybe_initialize_distributed(multi_host: bool) -> bool:
  """Calls `jax.distributed.initialize()` when asked by the config flag or `BORT_MULTIHOST=1`.

  Returns whether it was called. Single-host runs must not call it (it waits for a coordinator).
  """
  if not (multi_host or os.environ.get(MULTIHOST_ENV) == "1"):
    return False
  jax.distributed.initialize()
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) with axis "data"."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "batch_size"):
  """The global batch must split evenly over the devices of the mesh."""
  if batch_size % mesh.size:
    raise ValueError(f"config.{field}={batch_size} is not accepted; accepted values: multiples of "
                     f"the device count {mesh.size}.")


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch, mesh: Mesh):
  """Turns a global host batch (identical on every process) into arrays sharded on axis "data".

  Each process keeps only its own contiguous slice, so the same call works single- and multi-host.
  """
  sharding = batch_sharded(mesh)
  count, index = jax.process_count(), jax.process_index()

  def put(x):
    x = np.asarray(x)
    local = x.shape[0] // count
    return jax.make_array_from_process_local_data(sharding, x[index * local:(index + 1) * local],
                                                  x.shape)
  return jax.tree.map(put, batch)

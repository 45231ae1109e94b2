"""Data parallelism with `jax.sharding`: one mesh axis "data", batch sharded, state replicated.

The same code runs on one CPU, on all local accelerators, and across hosts of a TPU pod (after
`jax.distributed.initialize()`): every process feeds its slice of the global batch (the only rows it reads,
`examples.data`) and XLA inserts the gradient all-reduce because parameters are replicated while the batch
axis is sharded.
"""

import os

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
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


def shard_batch(local_batch, mesh: Mesh):
  """Turns this process's rows of a global batch into global arrays sharded on axis "data".

  Process p passes rows [p * B/P, (p + 1) * B/P) of the global batch of B rows (`examples.data` reads only
  those), so the same call works single- and multi-host.
  """
  sharding = batch_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * jax.process_count(), *x.shape[1:]))
  return jax.tree.map(put, local_batch)

"""Orbax checkpoints of the whole train state and the data position, every N steps and at the end.

A checkpoint holds the train state ("state") and, beside it, the grain iterator's state ("data", one small
JSON file per process, `grain.checkpoint.CheckpointHandler`), so a resumed run reads the very batches an
uninterrupted one would have read.

Orbax writes each checkpoint to a temporary directory and renames it on commit, so a run killed
mid-save leaves the previous checkpoint intact. Typed PRNG keys (e.g. dropout streams inside
`nnx.Rngs`) are stored as their raw `key_data` and re-wrapped on restore.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree):
  def leaf(x):
    if _is_key(x):
      x = jax.random.key_data(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, tree)


def _from_storable(tree, template):
  def leaf(x, t):
    return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x
  return jax.tree.map(leaf, tree, template)


class Checkpointer:
  """Saves and restores a train-state pytree under `directory` (one sub-directory per step)."""

  def __init__(self, directory: str, *, every_steps: int, keep: int):
    """Args: directory to write; every_steps: period of `maybe_save` (0: never); keep: newest K kept."""
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data: grain.DatasetIterator | None = None):
    """Saves `state` and the position of `data` as checkpoint `step` (the state asynchronously)."""
    if self._manager.latest_step() == step:
      return
    items = {"state": ocp.args.StandardSave(_to_storable(state))}
    if data is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data)
    self._manager.save(step, args=ocp.args.Composite(**items))

  def is_due(self, step: int) -> bool:
    """Whether `maybe_save(step, ...)` saves: `step` is a positive multiple of `every_steps`."""
    return bool(self.every_steps) and step % self.every_steps == 0

  def maybe_save(self, step: int, state, data: grain.DatasetIterator | None = None):
    """Saves when `is_due(step)`."""
    if self.is_due(step):
      self.save(step, state, data)

  def restore_latest(self, template, data: grain.DatasetIterator | None = None):
    """Returns the newest checkpoint laid out (structure, dtypes, shardings) like `template`, or None.

    `data`, if given, is moved to the saved position in place.
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    items = {"state": ocp.args.StandardRestore(_abstract(template))}
    if data is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return _from_storable(restored["state"], template)

  def close(self):
    """Blocks until pending writes are committed."""
    self._manager.wait_until_finished()
    self._manager.close()

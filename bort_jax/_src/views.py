"""Matrix views of kernels: which axes are fan-in, which are output units, which are stacked layers.

A :class:`KernelView` is the dimension numbers of one kernel. :func:`to_matrix` moves a kernel to
``(*batch, fan_in, out)`` — the Flax orientation ``M = Wᵀ`` used by :mod:`correction` — and
:func:`from_matrix` undoes it. Which view a kernel gets is decided in :mod:`view_inference`.
"""

import dataclasses
import math
from typing import Any
from typing import Literal
from typing import Sequence
from typing import Tuple
from typing import Union

import jax
import jax.numpy as jnp

from bort_jax._src.kernel_matrix import KernelMatrix

LAYOUTS = ("flax", "torch")
Layout = Literal["flax", "torch"]
TORCH_QKV = "in_proj_weight"  # torch.nn.MultiheadAttention: q, k, v stacked as (3·E, E)

# Rules mapping a path regex to a view, to the stacked axes (a number of leading axes, or their positions), or to
# None (leave the leaf alone); first match wins.
ViewRules = Sequence[Tuple[str, Union["KernelView", int, Tuple[int, ...], None]]]


def check_layout(layout: str) -> str:
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
  return layout


@dataclasses.dataclass(frozen=True)
class KernelView:
  """Dimension numbers of a kernel.

  Attributes:
    in_axes: axes flattened (in this order) into the fan-in dimension.
    out_axes: axes flattened into the output-unit dimension.
    batch_axes: leading axes of stacked (scanned) layers; each index is an independent matrix.
    leading_split: if > 1, axis 0 of the kernel stacks this many matrices along its length (PyTorch's
      ``in_proj_weight`` holds q, k, v as ``(3·E, E)``); it is split into ``(leading_split, -1)`` first and
      the axes above index the split kernel.
  """

  in_axes: Tuple[int, ...]
  out_axes: Tuple[int, ...]
  batch_axes: Tuple[int, ...] = ()
  leading_split: int = 1

  def __post_init__(self):
    axes = self.batch_axes + self.in_axes + self.out_axes
    if not self.in_axes or not self.out_axes:
      raise ValueError(f"KernelView needs at least one in_axes and one out_axes, got {self}.")
    if sorted(axes) != list(range(len(axes))):
      raise ValueError(f"KernelView axes must be a permutation of 0..{len(axes) - 1}, got {self}.")
    if isinstance(self.leading_split, bool) or not isinstance(self.leading_split, int) or self.leading_split < 1:
      raise ValueError(f"KernelView leading_split must be a positive integer, got {self.leading_split!r}.")

  @property
  def ndim(self) -> int:
    """Number of axes of the (split) kernel the axes refer to."""
    return len(self.batch_axes) + len(self.in_axes) + len(self.out_axes)

  @property
  def kernel_ndim(self) -> int:
    """Number of axes of the kernel this view applies to."""
    return self.ndim - (self.leading_split > 1)

  @property
  def order(self) -> Tuple[int, ...]:
    return self.batch_axes + self.in_axes + self.out_axes

  def split_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
    """``shape`` with axis 0 split by ``leading_split``; checks that the view fits the kernel."""
    shape = tuple(shape)
    if len(shape) != self.kernel_ndim or (self.leading_split > 1 and shape[0] % self.leading_split):
      raise ValueError(f"kernel of shape {shape} does not match {self}.")
    if self.leading_split == 1:
      return shape
    return (self.leading_split, shape[0] // self.leading_split) + shape[1:]

  def matrix_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape ``(*batch, fan_in, out)`` of the view of a kernel of ``shape``."""
    shape = self.split_shape(shape)
    batch = tuple(shape[a] for a in self.batch_axes)
    fan_in = math.prod(shape[a] for a in self.in_axes)
    out = math.prod(shape[a] for a in self.out_axes)
    return batch + (fan_in, out)


def to_kernel_matrix(kernel: jax.Array, view: KernelView) -> KernelMatrix:
  """Kernel -> :class:`KernelMatrix` (axes ``(*batch, *fan_in, *out)``): a transpose, no reshape."""
  split = view.split_shape(kernel.shape)
  if split != kernel.shape:
    kernel = kernel.reshape(split)
  return KernelMatrix(jnp.transpose(kernel, view.order), len(view.batch_axes), len(view.in_axes))


def from_kernel_matrix(x: jax.Array, view: KernelView, shape: Sequence[int]) -> jax.Array:
  """Inverse of :func:`to_kernel_matrix` for a kernel of ``shape``."""
  inverse = sorted(range(len(view.order)), key=view.order.__getitem__)
  return jnp.transpose(x, inverse).reshape(tuple(shape))


def to_matrix(kernel: jax.Array, view: KernelView) -> jax.Array:
  """Kernel -> ``(*batch, fan_in, out)`` matrix view (a reshape: unsharded kernels, or sharded on batch)."""
  return to_kernel_matrix(kernel, view).x.reshape(view.matrix_shape(kernel.shape))


def from_matrix(m: jax.Array, view: KernelView, shape: Sequence[int]) -> jax.Array:
  """Inverse of :func:`to_matrix` for a kernel of ``shape``."""
  split = view.split_shape(shape)
  return from_kernel_matrix(m.reshape(tuple(split[a] for a in view.order)), view, shape)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_names(path: Sequence[Any]) -> Tuple[str, ...]:
  """Key path -> tuple of names, without the trailing ``value`` attribute of NNX variables and Linen boxes.

  Dotted string keys are split (``"layer1.0.conv1.weight"`` -> 4 names), so that a flat PyTorch
  ``state_dict`` behaves exactly like the nested tree.
  """
  if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and _key_name(path[-1]) in ("value", "raw_value"):
    path = path[:-1]
  names = []
  for key in path:
    name = _key_name(key)
    names.extend(name.split(".") if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str) else [name])
  return tuple(names)


def path_str(path: Sequence[Any]) -> str:
  """Key path -> ``"module/submodule/kernel"``, the string that regex rules match."""
  return "/".join(path_names(path))

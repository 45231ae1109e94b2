"""Matrix views of kernels: which axes are fan-in, which are output units, which are stacked layers.

A :class:`KernelView` is the dimension numbers of one kernel. :func:`to_matrix` moves a kernel to
``(*batch, fan_in, out)`` — the Flax orientation ``M = Wᵀ`` used by :mod:`correction` — and
:func:`from_matrix` undoes it. :func:`default_view` knows the layouts of the usual Flax (Linen and NNX)
layers and of PyTorch-style ``(out, in, ...)`` trees.
"""

import dataclasses
import math
import re
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

LAYOUTS = ("flax", "torch")
ATTENTION_INPUT_PROJECTIONS = ("query", "key", "value")
ATTENTION_OUTPUT_PROJECTION = "out"

# Rules mapping a path regex to a view (or None to leave that leaf alone); first match wins.
ViewRules = Sequence[Tuple[str, Optional["KernelView"]]]


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
  """

  in_axes: Tuple[int, ...]
  out_axes: Tuple[int, ...]
  batch_axes: Tuple[int, ...] = ()

  def __post_init__(self):
    axes = self.batch_axes + self.in_axes + self.out_axes
    if not self.in_axes or not self.out_axes:
      raise ValueError(f"KernelView needs at least one in_axes and one out_axes, got {self}.")
    if sorted(axes) != list(range(len(axes))):
      raise ValueError(f"KernelView axes must be a permutation of 0..{len(axes) - 1}, got {self}.")

  @property
  def ndim(self) -> int:
    return len(self.batch_axes) + len(self.in_axes) + len(self.out_axes)

  def matrix_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape ``(*batch, fan_in, out)`` of the view of a kernel of ``shape``."""
    if len(shape) != self.ndim:
      raise ValueError(f"kernel of shape {tuple(shape)} does not match {self}.")
    batch = tuple(shape[a] for a in self.batch_axes)
    fan_in = math.prod(shape[a] for a in self.in_axes)
    out = math.prod(shape[a] for a in self.out_axes)
    return batch + (fan_in, out)


def to_matrix(kernel: jax.Array, view: KernelView) -> jax.Array:
  """Kernel -> ``(*batch, fan_in, out)`` matrix view."""
  permuted = jnp.transpose(kernel, view.batch_axes + view.in_axes + view.out_axes)
  return permuted.reshape(view.matrix_shape(kernel.shape))


def from_matrix(m: jax.Array, view: KernelView, shape: Sequence[int]) -> jax.Array:
  """Inverse of :func:`to_matrix` for a kernel of ``shape``."""
  order = view.batch_axes + view.in_axes + view.out_axes
  permuted = m.reshape(tuple(shape[a] for a in order))
  inverse = sorted(range(len(order)), key=order.__getitem__)
  return jnp.transpose(permuted, inverse)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_names(path: Sequence[Any]) -> Tuple[str, ...]:
  """Key path -> tuple of names, without the trailing ``value`` attribute of NNX variables."""
  names = tuple(_key_name(k) for k in path)
  if len(path) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] in ("value", "raw_value"):
    names = names[:-1]
  return names


def path_str(path: Sequence[Any]) -> str:
  """Key path -> ``"module/submodule/kernel"``, the string that regex rules match."""
  return "/".join(path_names(path))


def default_view(names: Sequence[str], ndim: int, layout: str = "flax", num_batch_axes: int = 0) -> KernelView:
  """View of a kernel named ``names`` (its path) with ``ndim`` axes.

  Flax: Dense ``(in, out)``, Conv ``(*window, in, out)``, attention ``query/key/value`` ``(embed, heads,
  head_dim)`` and ``out`` ``(heads, head_dim, embed)``. Torch: ``(out, in, *window)``. ``num_batch_axes``
  leading axes are stacked layers (``nn.scan`` / ``nnx.vmap``).
  """
  check_layout(layout)
  batch = tuple(range(num_batch_axes))
  rest = ndim - num_batch_axes
  if rest < 2:
    raise ValueError(f"kernel {'/'.join(names)} has {rest} non-batch axes; a matrix view needs at least 2.")
  axes = tuple(range(num_batch_axes, ndim))
  module = names[-2] if len(names) >= 2 else ""
  if layout == "torch":
    return KernelView(in_axes=axes[1:], out_axes=axes[:1], batch_axes=batch)
  if rest == 3 and module in ATTENTION_INPUT_PROJECTIONS:
    return KernelView(in_axes=axes[:1], out_axes=axes[1:], batch_axes=batch)
  if rest == 3 and module == ATTENTION_OUTPUT_PROJECTION:
    return KernelView(in_axes=axes[:2], out_axes=axes[2:], batch_axes=batch)
  return KernelView(in_axes=axes[:-1], out_axes=axes[-1:], batch_axes=batch)


def resolve_view(path: str, names: Sequence[str], ndim: int, layout: str, views: Optional[ViewRules]) -> Optional[KernelView]:
  """The view rule matching ``path`` (``re.fullmatch``, first wins), else :func:`default_view`."""
  for pattern, view in views or ():
    if re.fullmatch(pattern, path):
      if view is not None and view.ndim != ndim:
        raise ValueError(f"views rule {pattern!r} gives {view} for {path} which has {ndim} axes.")
      return view
  return default_view(names, ndim, layout)

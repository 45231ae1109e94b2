"""Matrix views of kernels: which axes are fan-in, which are output units, which are stacked layers.

A :class:`KernelView` is the dimension numbers of one kernel. :func:`to_matrix` moves a kernel to
``(*batch, fan_in, out)`` — the Flax orientation ``M = Wᵀ`` used by :mod:`correction` — and
:func:`from_matrix` undoes it. :func:`default_view` knows the layouts of the usual Flax (Linen and NNX)
layers and of PyTorch-style ``(out, in, ...)`` trees.
"""

import dataclasses
import math
import re
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from bort_jax._src.kernel_matrix import KernelMatrix

LAYOUTS = ("flax", "torch")
ATTENTION_INPUT_PROJECTIONS = ("query", "key", "value")
ATTENTION_OUTPUT_PROJECTION = "out"

# Rules mapping a path regex to a view, to a number of leading stacked axes, or to None (leave the leaf
# alone); first match wins.
ViewRules = Sequence[Tuple[str, Union["KernelView", int, None]]]


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


# Logical axis names (flax partitioning metadata) that mark stacked layers and the model (embedding) width.
STACKED_AXIS_NAMES = ("layers", "layer", "stack", "stacked", "scan", "blocks", "repeat", "stage", "stages")
EMBED_AXIS_NAMES = ("embed", "embedding", "model", "d_model", "hidden", "emb")
_CONV = re.compile(r"(?i).*conv.*")
_CONV_LOCAL = re.compile(r"(?i).*conv_?local.*")
_DENSE = re.compile(r"Dense(General)?_\d+")  # Linen's automatic names
TORCH_QKV = "in_proj_weight"  # torch.nn.MultiheadAttention: q, k, v stacked as (3·E, E)


class ViewGuess(NamedTuple):
  """A view and how sure it is: ``certain`` False means a warning is due, with ``reason``."""

  view: KernelView
  certain: bool
  reason: str


def infer_view(names: Sequence[str], ndim: int, layout: str = "flax", num_batch_axes: Optional[int] = None,
               axis_names: Optional[Sequence[Optional[str]]] = None) -> ViewGuess:
  """The view of a kernel from its path ``names``, rank and (optional) logical ``axis_names``.

  Stacked axes come from ``num_batch_axes`` (leading) or from ``axis_names`` in :data:`STACKED_AXIS_NAMES`.
  Flax: Dense ``(in, out)``; Conv ``(*window, in, out)``; ConvLocal ``(*positions, in·window, out)`` (one
  matrix per position); attention ``query/key/value`` ``(embed, heads, head_dim)`` and ``out``
  ``(heads, head_dim, embed)``; other N-D kernels whose axis names include :data:`EMBED_AXIS_NAMES` split
  embed axes from the rest. Torch: ``(out, in, *window)``; ``in_proj_weight`` as three ``(E, E)``.
  Anything else flattens all but the last axis into fan-in and is marked uncertain.
  """
  check_layout(layout)
  path = "/".join(names)
  module = names[-2] if len(names) >= 2 else ""
  if layout == "torch" and names and names[-1] == TORCH_QKV and ndim == 2:
    return ViewGuess(KernelView(in_axes=(2,), out_axes=(1,), batch_axes=(0,), leading_split=3), True, "q, k, v")
  if num_batch_axes is not None:
    batch = tuple(range(num_batch_axes))
  elif axis_names is not None:
    batch = tuple(a for a, n in enumerate(axis_names) if n in STACKED_AXIS_NAMES)
  else:
    batch = ()
  rest = tuple(a for a in range(ndim) if a not in batch)
  if len(rest) < 2:
    raise ValueError(f"kernel {path} has {len(rest)} non-stacked axes; a matrix view needs at least 2.")

  def view(in_axes, out_axes, extra_batch=(), certain=True, reason=""):
    return ViewGuess(KernelView(tuple(in_axes), tuple(out_axes), batch + tuple(extra_batch)), certain, reason)

  if layout == "torch":
    return view(rest[1:], rest[:1])
  if len(rest) == 2:
    return view(rest[:1], rest[1:])
  if _CONV_LOCAL.fullmatch(module):
    return view(rest[-2:-1], rest[-1:], extra_batch=rest[:-2])
  attention_rank = {**{n: 3 for n in ATTENTION_INPUT_PROJECTIONS}, ATTENTION_OUTPUT_PROJECTION: 3}.get(module)
  base_rank = 2 if _DENSE.fullmatch(module) else attention_rank
  if base_rank is not None and len(rest) > base_rank:
    extra = rest[:len(rest) - base_rank]
    reason = (f"a {module} kernel has {base_rank} axes; the leading {len(extra)} of its {ndim} were taken as "
              "stacked layers")
    inner = infer_view(names, base_rank, layout)
    shift = lambda axes: tuple(rest[len(extra) + a] for a in axes)
    return view(shift(inner.view.in_axes), shift(inner.view.out_axes), extra, False, reason)
  if module in ATTENTION_INPUT_PROJECTIONS and len(rest) == 3:
    return view(rest[:1], rest[1:])
  if module == ATTENTION_OUTPUT_PROJECTION and len(rest) == 3:
    return view(rest[:2], rest[2:])
  embed = tuple(a for a in rest if axis_names is not None and axis_names[a] in EMBED_AXIS_NAMES)
  if embed and len(embed) < len(rest):
    others = tuple(a for a in rest if a not in embed)
    return view(others, embed) if embed[-1] == rest[-1] and embed[0] != rest[0] else view(embed, others)
  if _CONV.fullmatch(module) and len(rest) <= 4:
    return view(rest[:-1], rest[-1:])
  reason = (f"{len(rest)} axes of a {'convolution' if _CONV.fullmatch(module) else 'layer'} of unknown kind; all "
            "but the last were flattened into fan-in")
  return view(rest[:-1], rest[-1:], certain=False, reason=reason)


def default_view(names: Sequence[str], ndim: int, layout: str = "flax", num_batch_axes: int = 0) -> KernelView:
  """The view :func:`infer_view` gives a kernel named ``names`` with ``ndim`` axes (``num_batch_axes``
  leading stacked axes)."""
  return infer_view(names, ndim, layout, num_batch_axes).view

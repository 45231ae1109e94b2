"""Exact kernel views of a Flax NNX model, read from its module types instead of guessed from paths.

A params tree alone does not say whether a 4-D kernel is a convolution, a stacked Dense or an einsum; the
model does. :func:`nnx_views` walks the module graph and returns ``views=`` rules for every kernel of a
known layer type (``nnx.Linear``, ``nnx.Conv``, ``nnx.ConvTranspose``, ``nnx.LinearGeneral`` — hence
``nnx.MultiHeadAttention`` — and ``nnx.Einsum``, whose einsum string names the contracted axes). Leading axes
beyond the layer's own rank are stacked layers (``nnx.vmap``/``nnx.scan``). flax is imported lazily.
"""

import re
from typing import Any, List, Optional, Tuple

from bort_jax._src.views import KernelView


def _einsum_view(spec: str, rank: int) -> Optional[KernelView]:
  """``"BTD,NDH->BTNH"``: kernel axes in the input only are fan-in, in the output only are out, in both batch."""
  match = re.fullmatch(r"\s*([^,]+),([^-]+)->(.+)\s*", spec.replace(" ", ""))
  if match is None:
    return None
  inputs, kernel, output = match.groups()
  if len(kernel) != rank or len(set(kernel)) != rank:
    return None
  batch = tuple(a for a, c in enumerate(kernel) if c in inputs and c in output)
  fan_in = tuple(a for a, c in enumerate(kernel) if c in inputs and c not in output)
  out = tuple(a for a, c in enumerate(kernel) if c in output and c not in inputs)
  if not fan_in or not out or len(batch) + len(fan_in) + len(out) != rank:
    return None
  return KernelView(in_axes=fan_in, out_axes=out, batch_axes=batch)


def _layer_view(module: Any, rank: int) -> Optional[KernelView]:
  """The view of ``module``'s own (unstacked) kernel; ``None`` for layer types this module does not know."""
  from flax import nnx  # optional dependency

  if isinstance(module, nnx.Linear):
    return KernelView((0,), (1,))
  if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
    window = len(module.kernel_size) if isinstance(module.kernel_size, (tuple, list)) else 1
    return KernelView(tuple(range(window + 1)), (window + 1,))
  if isinstance(module, nnx.LinearGeneral):
    num_batch, num_in = len(module.batch_axis), len(module.in_features)
    num_out = len(module.out_features)
    return KernelView(tuple(range(num_batch, num_batch + num_in)),
                      tuple(range(num_batch + num_in, num_batch + num_in + num_out)), tuple(range(num_batch)))
  if isinstance(module, nnx.Einsum):
    return _einsum_view(module.einsum_str, len(module.kernel_shape))
  return None


def _stacked(view: KernelView, extra: int) -> KernelView:
  shift = lambda axes: tuple(a + extra for a in axes)
  return KernelView(shift(view.in_axes), shift(view.out_axes), tuple(range(extra)) + shift(view.batch_axes))


def nnx_views(model: Any) -> List[Tuple[str, KernelView]]:
  """``views=`` rules (escaped full paths) for every kernel of a known layer type in an NNX ``model``.

  Kernels of other types are left to the default inference (which warns when it has to guess).

  Example:
    >>> from flax import nnx
    >>> import bort_jax as bj
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.q = nnx.Einsum("BTD,NDH->BTNH", (4, 16, 8), rngs=rngs)
    >>> bj.nnx_views(Net(nnx.Rngs(0)))
    [('q/kernel', KernelView(in_axes=(1,), out_axes=(0, 2), batch_axes=(), leading_split=1))]
  """
  from flax import nnx  # optional dependency

  rules = []
  for path, node in nnx.iter_graph(model):
    kernel = getattr(node, "kernel", None) if isinstance(node, nnx.Module) else None
    if kernel is None or not hasattr(kernel, "shape"):
      continue
    rank = len(kernel.shape)
    view = _layer_view(node, rank)
    if view is None or view.ndim > rank:
      continue
    rules.append((re.escape("/".join(str(p) for p in path) + "/kernel"), _stacked(view, rank - view.ndim)))
  return rules

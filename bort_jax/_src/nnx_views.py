"""Exact kernel views of a Flax NNX model, read from its module types instead of guessed from paths.

A params tree alone does not say whether a 4-D kernel is a convolution, a locally connected layer, a stacked
Dense or an einsum; the model does. :func:`nnx_views` walks the module graph and returns ``views=`` rules for
every kernel of a known layer type (``nnx.Linear``, ``nnx.Conv``, ``nnx.ConvTranspose``, ``nnx.LinearGeneral`` —
hence ``nnx.MultiHeadAttention`` — and ``nnx.Einsum``, whose einsum string names the contracted axes). Axes of
the kernel beyond the layer's own shape are stacked layers (``nnx.vmap``/``nnx.scan``), found wherever they are
by matching the layer's own kernel shape. flax is imported lazily.
"""

import itertools
import re
from typing import Any
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

from bort_jax._src.views import KernelView


def einsum_view(spec: str, rank: int) -> Optional[KernelView]:
  """The view of an einsum's kernel (its second operand) of ``rank`` axes; None if ``spec`` is not read.

  Kernel axes in the input only are fan-in, in the output only are outputs, in both batch (``"BTD,NDH->BTNH"``:
  D in, N·H out). An output-only letter written before the output's first input letter indexes separate
  outputs, not features of each token: gemma's fused ``"BTD,SNDH->SBTNH"`` returns q, k, v along S, so S is a
  batch of separate projections (one Gram each), as torch's ``in_proj_weight`` is split in three.
  """
  match = re.fullmatch(r"([^,]+),([^-]+)->(.+)", spec.replace(" ", ""))
  if match is None:
    return None
  inputs, kernel, output = match.groups()
  if len(kernel) != rank or len(set(kernel)) != rank:
    return None
  first_token_axis = min((output.index(c) for c in inputs if c in output), default=len(output))
  fused = {c for c in output[:first_token_axis] if c in kernel and c not in inputs}
  batch = tuple(a for a, c in enumerate(kernel) if (c in inputs and c in output) or c in fused)
  fan_in = tuple(a for a, c in enumerate(kernel) if c in inputs and c not in output)
  out = tuple(a for a, c in enumerate(kernel) if c in output and c not in inputs and c not in fused)
  if not fan_in or not out or len(batch) + len(fan_in) + len(out) != rank:
    return None
  return KernelView(in_axes=fan_in, out_axes=out, batch_axes=batch)


def place_in_stack(view: KernelView, own_shape: Sequence[int], shape: Sequence[int]) -> Optional[KernelView]:
  """``view`` of a layer's own kernel (``own_shape``) inside a kernel of ``shape`` with stacked axes anywhere.

  None when the stacked axes cannot be told apart (e.g. 4 layers of a 4 × 4 kernel): the plan then infers the
  view from the tree, and warns if that is a guess.
  """
  own_shape, shape = tuple(own_shape), tuple(shape)
  extra = len(shape) - len(own_shape)
  if extra < 0:
    return None
  placements = [stacked for stacked in itertools.combinations(range(len(shape)), extra)
                if tuple(d for a, d in enumerate(shape) if a not in stacked) == own_shape]
  if len(placements) != 1:
    return None
  own_axes = tuple(a for a in range(len(shape)) if a not in placements[0])
  place = lambda axes: tuple(own_axes[a] for a in axes)
  return KernelView(place(view.in_axes), place(view.out_axes), placements[0] + place(view.batch_axes))


def _layer_view(module: Any) -> Optional[Tuple[KernelView, Tuple[int, ...]]]:
  """``(view, own kernel shape)`` of ``module``'s unstacked kernel; None for layer types this module does not know."""
  from flax import nnx  # optional dependency

  if isinstance(module, nnx.Linear):
    return KernelView((0,), (1,)), (module.in_features, module.out_features)
  if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
    window = len(module.kernel_shape) - 2
    return KernelView(tuple(range(window + 1)), (window + 1,)), tuple(module.kernel_shape)
  if isinstance(module, nnx.LinearGeneral):
    batch = tuple(module.batch_axis.values())
    num_batch, num_in, num_out = len(batch), len(module.in_features), len(module.out_features)
    view = KernelView(tuple(range(num_batch, num_batch + num_in)),
                      tuple(range(num_batch + num_in, num_batch + num_in + num_out)), tuple(range(num_batch)))
    return view, batch + tuple(module.in_features) + tuple(module.out_features)
  if isinstance(module, nnx.Einsum):
    view = einsum_view(module.einsum_str, len(module.kernel_shape))
    return None if view is None else (view, tuple(module.kernel_shape))
  return None


def nnx_views(model: Any) -> List[Tuple[str, KernelView]]:
  """``views=`` rules (escaped full paths) for every kernel of a known layer type in an NNX ``model``.

  Kernels of other types, and stacked kernels whose stacked axes are ambiguous, are left to the default
  inference (which warns when it has to guess).

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
    layer = _layer_view(node)
    view = None if layer is None else place_in_stack(*layer, kernel.shape)
    if view is not None:
      rules.append((re.escape("/".join(str(p) for p in path) + "/kernel"), view))
  return rules

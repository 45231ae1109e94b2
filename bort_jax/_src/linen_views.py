"""Exact kernel views of a Flax Linen model, read from its module types while it is traced.

Linen's params tree keeps module names, not module types: a ``conv_init`` kernel of shape ``(h, w, k, out)`` may
be an ``nn.Conv`` or an ``nn.ConvLocal`` (one matrix per position). :func:`linen_views` traces ``module.init``
abstractly (``jax.eval_shape``: no FLOPs, no memory) with every layer's ``__call__`` intercepted, records each
known layer's type and its own kernel shape, and returns ``views=`` rules. Under ``nn.scan``/``nn.vmap`` a layer
sees its own, unstacked kernel, so the stacked axes of the stored kernel are found wherever the transform put
them (MaxText's ``param_scan_axis=1`` included). flax is imported lazily.
"""

import re
from typing import Any
from typing import Dict
from typing import List
from typing import Tuple

import jax

from bort_jax._src import nnx_views
from bort_jax._src import views as views_lib
from bort_jax._src.views import KernelView


def _as_tuple(value) -> Tuple:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _layer_view(layer: Any, own_shape: Tuple[int, ...]):
  """The view of a known Linen layer's own kernel; None for other layer types."""
  import flax.linen as nn

  rank = len(own_shape)
  if isinstance(layer, nn.Dense):
    return KernelView((0,), (1,))
  if isinstance(layer, nn.ConvLocal):  # before nn.Conv: both derive from the same base
    return KernelView((rank - 2,), (rank - 1,), tuple(range(rank - 2)))
  if isinstance(layer, (nn.Conv, nn.ConvTranspose)):
    return KernelView(tuple(range(rank - 1)), (rank - 1,))
  if isinstance(layer, nn.DenseGeneral):
    num_batch, num_in = len(_as_tuple(layer.batch_dims)), len(_as_tuple(layer.axis))
    return KernelView(tuple(range(num_batch, num_batch + num_in)), tuple(range(num_batch + num_in, rank)),
                      tuple(range(num_batch)))
  if isinstance(layer, nn.Einsum):
    return nnx_views.einsum_view(layer.einsum_str, rank)
  return None


def linen_views(module: Any, *args, method=None, **kwargs) -> List[Tuple[str, KernelView]]:
  """``views=`` rules (escaped ``params`` paths) for every kernel of a known layer type in a Linen ``module``.

  Known types: ``nn.Dense``, ``nn.DenseGeneral`` (hence attention projections), ``nn.Conv``,
  ``nn.ConvTranspose``, ``nn.ConvLocal`` and ``nn.Einsum``. ``args``/``kwargs`` are example inputs for
  ``module.init`` (shapes matter, values do not: the trace is abstract). Kernels of other types, and stacked
  kernels whose stacked axes cannot be told apart by shape, are left to the default inference (which warns when
  it has to guess).

  Example:
    >>> import jax.numpy as jnp, flax.linen as nn, bort_jax as bj
    >>> class Stem(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.ConvLocal(4, (3, 3), name="conv_init")(x)
    >>> bj.linen_views(Stem(), jnp.ones((1, 6, 6, 2)))
    [('conv_init/kernel', KernelView(in_axes=(2,), out_axes=(3,), batch_axes=(0, 1), leading_split=1))]
  """
  import flax.linen as nn

  own: Dict[Tuple[str, ...], Tuple[Any, Tuple[int, ...]]] = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    layer = context.module
    if context.method_name == "__call__" and layer.scope is not None and layer.scope.has_variable("params", "kernel"):
      kernel = nn.unbox(layer.scope.get_variable("params", "kernel"))
      own.setdefault(tuple(layer.scope.path), (layer, tuple(kernel.shape)))
    return out

  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, method=method, **kwargs))
  stored = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(variables.get("params", {})))[0]:
    stored[views_lib.path_names(path)] = tuple(leaf.shape)
  rules = []
  for scope_path, (layer, own_shape) in own.items():
    shape = stored.get(scope_path + ("kernel",))
    view = None if shape is None else _layer_view(layer, own_shape)
    view = None if view is None else nnx_views.place_in_stack(view, own_shape, shape)
    if view is not None:
      rules.append((re.escape("/".join(scope_path + ("kernel",))), view))
  return rules

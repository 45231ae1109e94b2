"""Capture the inputs and outputs of every Dense/Conv layer of a Linen model, for :func:`add_dbort_term`.

``capture_intermediates`` records outputs only; DBort's layer-wise gradient ``xᵀy`` also needs each layer's
input, so we intercept the layers' ``__call__`` instead (``flax.linen.intercept_methods``). NNX models
can ``sow`` the same pair and build :class:`LayerIO` with :func:`dense_io` / :func:`conv_io`.
"""

from typing import Any, Dict, Tuple

import jax

from bort_jax._src import dbort


def _conv_io(module, inputs, outputs) -> dbort.LayerIO:
  undilated = all(d is None or set(_as_tuple(d)) == {1} for d in (module.kernel_dilation, module.input_dilation))
  if module.feature_group_count != 1 or not undilated:
    raise ValueError(f"capture_linen_io supports plain convolutions; {module.path} uses groups or dilation.")
  padding = module.padding
  if not isinstance(padding, str):
    padding = [p if isinstance(p, tuple) else (p, p) for p in _as_tuple(padding)]
  elif padding not in ("SAME", "VALID"):
    raise ValueError(f"capture_linen_io supports padding 'SAME', 'VALID' or explicit pairs, got {padding!r}.")
  strides = module.strides if module.strides is not None else 1
  return dbort.conv_io(inputs, outputs, tuple(module.kernel_size), strides, padding)


def _as_tuple(value):
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def capture_linen_io(module: Any, variables: Any, *args, **kwargs) -> Tuple[Any, Dict[str, dbort.LayerIO]]:
  """Runs ``module.apply(variables, *args, **kwargs)`` and records each Dense/Conv layer's input/output.

  Returns:
    ``(output, {"Dense_0/kernel": LayerIO, ...})``, keys matching the paths of the kernels in
    ``variables["params"]``; the activations are under ``stop_gradient`` (DBort's gradient is layer-local).
  """
  import flax.linen as nn  # flax is an optional dependency of bort_jax

  records: Dict[str, dbort.LayerIO] = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    layer = context.module
    if context.method_name == "__call__" and isinstance(layer, (nn.Dense, nn.Conv)):
      inputs, outputs = jax.lax.stop_gradient(call_args[0]), jax.lax.stop_gradient(out)
      path = "/".join(layer.path) + "/kernel"
      if isinstance(layer, nn.Dense):
        records[path] = dbort.dense_io(inputs, outputs)
      else:
        records[path] = _conv_io(layer, inputs, outputs)
    return out

  with nn.intercept_methods(interceptor):
    output = module.apply(variables, *args, **kwargs)
  return output, records

"""Capture the inputs and outputs of every Dense/DenseGeneral/Conv layer of a Linen model, for :func:`add_dbort_term`.

``capture_intermediates`` records outputs only; DBort's layer-wise gradient ``xᵀy`` also needs each layer's
input, so we intercept the layers' ``__call__`` (``flax.linen.intercept_methods``) and ``sow`` the pair into a
private collection: Flax then carries it out of ``nn.remat`` like any variable, and no tracer is kept on the
Python side. NNX models can ``sow`` the same pair and build :class:`LayerIO` with :func:`dense_io` /
:func:`conv_io`.
"""

from collections.abc import Iterable
import math
import re
from typing import Any
from typing import Dict
from typing import Tuple
import warnings

import jax
import jax.numpy as jnp

from bort_jax._src import dbort
from bort_jax._src import plan as plan_lib
from bort_jax._src import view_inference
from bort_jax._src import views as views_lib

_COLLECTION = "bort_jax_capture"
# Flax pads the input itself for these and then runs a VALID convolution.
_PREPADDED = {"CIRCULAR": "wrap", "REFLECT": "reflect", "CAUSAL": "constant"}


def _as_tuple(value):
  """Flax's ``_canonicalize_tuple``: an iterable as a tuple, anything else as a 1-tuple."""
  return tuple(value) if isinstance(value, Iterable) else (value,)


def _per_dim(value, rank):
  """Flax's broadcast of a conv attribute (None, an int or a sequence) to one value per spatial axis."""
  value = 1 if value is None else value
  return (value,) * rank if isinstance(value, int) else tuple(value)


def _conv_io(layer, path, inputs, outputs) -> Tuple[dbort.LayerIO, views_lib.KernelView]:
  from flax.linen.linear import canonicalize_padding  # the layer's own reading of `padding`

  kernel_size = _as_tuple(layer.kernel_size)
  rank = len(kernel_size)
  unsupported = [name for name, used in (
      ("feature_group_count", layer.feature_group_count != 1),
      ("kernel_dilation", set(_per_dim(layer.kernel_dilation, rank)) != {1}),
      ("input_dilation", set(_per_dim(layer.input_dilation, rank)) != {1}),
      ("mask", layer.mask is not None)) if used]
  if unsupported:
    raise ValueError(f"capture_linen_io supports plain convolutions; {path} sets {', '.join(unsupported)}.")
  # Flax folds all leading axes into one batch axis, and adds one to unbatched inputs.
  inputs = inputs.reshape((-1,) + inputs.shape[inputs.ndim - rank - 1:])
  padding = canonicalize_padding(layer.padding, rank)
  if isinstance(padding, str) and padding in _PREPADDED:
    # Flax rejects CAUSAL for rank > 1 before we get here.
    pads = [(k - 1, 0) if padding == "CAUSAL" else ((k - 1) // 2, k // 2) for k in kernel_size]
    inputs = jnp.pad(inputs, [(0, 0)] + pads + [(0, 0)], mode=_PREPADDED[padding])
    padding = "VALID"
  io = dbort.conv_io(inputs, outputs, kernel_size, _per_dim(layer.strides, rank), padding)
  return io, views_lib.KernelView(in_axes=tuple(range(rank + 1)), out_axes=(rank + 1,))


def _dense_general_io(layer, path, inputs, outputs) -> Tuple[dbort.LayerIO, views_lib.KernelView]:
  if _as_tuple(layer.batch_dims):
    raise ValueError(f"capture_linen_io cannot capture {path}: DenseGeneral batch_dims stack one kernel per "
                     "batch index, and add_dbort_term needs a single matrix per kernel.")
  axes = tuple(a % inputs.ndim for a in _as_tuple(layer.axis))
  n_in, n_out = len(axes), len(_as_tuple(layer.features))
  # Contracted axes last, in the kernel's order: the rows of its (contracted, features) matrix view.
  inputs = jnp.moveaxis(inputs, axes, tuple(range(inputs.ndim - n_in, inputs.ndim)))
  io = dbort.LayerIO(inputs.reshape(-1, math.prod(inputs.shape[inputs.ndim - n_in:])),
                     outputs.reshape(-1, math.prod(outputs.shape[outputs.ndim - n_out:])))
  return io, views_lib.KernelView(in_axes=tuple(range(n_in)), out_axes=tuple(range(n_in, n_in + n_out)))


def _layer_io(layer, path, inputs, outputs):
  """``(LayerIO, its kernel view)`` of a supported layer, else None."""
  import flax.linen as nn

  if isinstance(layer, nn.Dense):
    return dbort.dense_io(inputs, outputs), views_lib.KernelView(in_axes=(0,), out_axes=(1,))
  if isinstance(layer, nn.DenseGeneral):
    return _dense_general_io(layer, path, inputs, outputs)
  if isinstance(layer, nn.Conv):
    return _conv_io(layer, path, inputs, outputs)
  return None


def _check_view(path, view, axis_names):
  # add_dbort_term reads each record through the view it infers for the kernel (plan.py); say when they differ.
  inferred = view_inference.infer_view(tuple(path.split("/")), view.ndim, "flax", None, axis_names).view
  if inferred != view:
    warnings.warn(f"capture_linen_io: the LayerIO of {path} is in the view {view}, but add_dbort_term infers "
                  f"{inferred} for this kernel; pass views=[({re.escape(path)!r}, {view})] to add_dbort_term.")


def _transformed_message(path):
  return (f"capture_linen_io cannot capture {path}: it runs under a Flax lifted transform (nn.scan / nn.vmap) that "
          "hides or stacks its activations, and add_dbort_term needs one unstacked kernel per layer. Unroll those "
          "layers (e.g. a Python loop) for DBort; nn.remat is supported.")


def _with_capture(mutable):
  """The ``mutable`` argument of ``apply`` with the capture collection added."""
  from flax.core.scope import in_filter

  if in_filter(mutable, _COLLECTION):
    return mutable
  others = [] if mutable is False else [mutable] if isinstance(mutable, str) else list(mutable)
  return others + [_COLLECTION]


def capture_linen_io(module: Any, variables: Any, *args, **kwargs) -> Tuple[Any, Dict[str, dbort.LayerIO]]:
  """Runs ``module.apply(variables, *args, **kwargs)`` and records each Dense/DenseGeneral/Conv layer's input/output.

  DenseGeneral records are in the kernel's (contracted axes, feature axes) matrix view, e.g. attention
  ``query`` ``(embed, heads·head_dim)`` and ``out`` ``(heads·head_dim, embed)``. Layers under ``nn.remat`` are
  captured; layers under ``nn.scan`` / ``nn.vmap``, layers called more than once, and Conv layers with groups,
  dilation or a mask raise ValueError; other layers with a ``kernel`` are skipped with a warning.

  Returns:
    ``(output, {"Dense_0/kernel": LayerIO, ...})``, keys matching the paths of the kernels in
    ``variables["params"]``; the activations are under ``stop_gradient`` (DBort's gradient is layer-local).
    With ``mutable=...`` the output is ``(y, state)`` as from ``apply``.
  """
  from flax import traverse_util
  import flax.linen as nn  # flax is an optional dependency of bort_jax

  axis_names = plan_lib.axis_names_by_path(variables.get("params", {}))
  shapes: Dict[str, Tuple[tuple, ...]] = {}  # static shapes only: arrays leave through the collection

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    layer = context.module
    if context.method_name != "__call__":
      return out
    path = "/".join(tuple(layer.path) + ("kernel",))
    inputs = call_args[0] if call_args else call_kwargs.get("inputs")  # Dense/Conv: __call__(self, inputs)
    inputs, outputs = jax.lax.stop_gradient(inputs), jax.lax.stop_gradient(out)
    captured = _layer_io(layer, path, inputs, outputs)
    if captured is None:
      if "kernel" in layer.variables.get("params", {}):
        warnings.warn(f"capture_linen_io records Dense, DenseGeneral and Conv layers only; {path} "
                      f"({type(layer).__name__}) gets no LayerIO.")
      return out
    io, view = captured
    if not layer.sow(_COLLECTION, "kernel", io):
      raise ValueError(_transformed_message(path))
    _check_view(path, view, axis_names.get(path))
    shapes[path] = tuple(a.shape for a in io)
    return out

  user_mutable = kwargs.pop("mutable", False)
  with nn.intercept_methods(interceptor):
    output, state = module.apply(variables, *args, mutable=_with_capture(user_mutable), **kwargs)
  state = dict(state)
  records = {}
  for path, calls in traverse_util.flatten_dict(state.pop(_COLLECTION, {}), sep="/").items():
    if len(calls) != 1:
      raise ValueError(f"capture_linen_io: {path} ran {len(calls)} times in one apply, so it has no single "
                       "LayerIO; build one yourself with dense_io / conv_io (e.g. from concatenated calls).")
    if tuple(a.shape for a in calls[0]) != shapes[path]:
      raise ValueError(_transformed_message(path))
    records[path] = calls[0]
  return (output if user_mutable is False else (output, state)), records


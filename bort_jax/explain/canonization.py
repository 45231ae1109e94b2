"""Canonization: fold inference-mode BatchNorm into the preceding Conv/Dense.

With ``s = γ / sqrt(σ² + ε)`` per output unit,

  γ (x M + b − μ) / sqrt(σ² + ε) + β = x (M diag s) + ((b − μ) s + β),

so a layer followed by BatchNorm is one affine layer (Montavon et al., "Layer-wise relevance propagation: an
overview", 2019, Sec. 10.3; Hui & Binder, "BatchNorm decomposition", 2019). Explanation methods that walk the
network layer by layer (reconstruction, backtracking) then see plain conv/dense layers.

Measure orthogonality before folding: ``M diag s`` rescales every output column of ``M`` by its own ``s_j``,
so ``Mᵀ M`` of a folded kernel is no longer the one Bort constrained. Run ``bort_jax.orthogonality_gap`` (and
``kernel_alpha``) on the trained parameters, fold afterwards.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp


def fold_batchnorm(
    kernel: jax.Array,
    bias: jax.Array | None,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None = None,
    offset: jax.Array | None = None,
    epsilon: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
  """Kernel and bias of ``BatchNorm(layer(x))`` as one layer.

  Args:
    kernel: ``(in, out)`` or ``(kh, kw, in, out)`` Flax kernel.
    bias: ``(out,)`` layer bias, or None for a bias-free layer.
    mean: ``(out,)`` BatchNorm running mean.
    var: ``(out,)`` BatchNorm running variance.
    scale: ``(out,)`` BatchNorm scale ``γ``, or None (``use_scale=False``).
    offset: ``(out,)`` BatchNorm bias ``β``, or None (``use_bias=False``).
    epsilon: BatchNorm epsilon.

  Returns:
    ``(kernel', bias')`` with ``kernel' = kernel · s`` on the output axis and ``bias' = (b − μ) s + β``.
  """
  out = kernel.shape[-1]
  for name, value in (("bias", bias), ("mean", mean), ("var", var), ("scale", scale), ("offset", offset)):
    if value is not None and jnp.shape(value) != (out,):
      raise ValueError(f"{name} must have shape ({out},) to match the kernel's output axis, got {jnp.shape(value)}")
  s = jax.lax.rsqrt(var + epsilon)
  if scale is not None:
    s = s * scale
  shifted = -mean if bias is None else bias - mean
  return kernel * s, shifted * s + (0.0 if offset is None else offset)


def _split(path: str) -> list[str]:
  return [part for part in path.split("/") if part]


def _copy_dicts(tree):
  return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _node(tree, path, what):
  for part in _split(path):
    if not isinstance(tree, Mapping) or part not in tree:
      keys = list(tree) if isinstance(tree, Mapping) else []
      raise ValueError(f"{what} path {path!r} not found; keys at that level: {keys}")
    tree = tree[part]
  return tree


def fold_batchnorm_params(
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    pairs: Mapping[str, str],
    epsilon: float = 1e-5,
) -> dict[str, Any]:
  """Fold BatchNorm into the preceding layers of Linen-style nested parameter dicts.

  Args:
    params: ``{"Conv_0": {"kernel", "bias"?}, "BatchNorm_0": {"scale"?, "bias"?}, ...}``, nested.
    batch_stats: ``{"BatchNorm_0": {"mean", "var"}, ...}``, nested like ``params``.
    pairs: layer path -> BatchNorm path, paths ``"/"``-separated (e.g. ``{"block/Conv_0": "block/BatchNorm_0"}``).
    epsilon: BatchNorm epsilon.

  Returns:
    new nested dict: every listed layer carries the folded ``kernel`` and ``bias``, the BatchNorm entries are
    removed (the model that uses it must skip those BatchNorms); the inputs are not modified.
  """
  folded = _copy_dicts(params)
  for layer_path, bn_path in pairs.items():
    layer = _node(folded, layer_path, "layer")
    bn, stats = _node(params, bn_path, "BatchNorm"), _node(batch_stats, bn_path, "batch_stats")
    kernel, bias = fold_batchnorm(layer["kernel"], layer.get("bias"), stats["mean"], stats["var"],
                                  bn.get("scale"), bn.get("bias"), epsilon)
    layer.update(kernel=kernel, bias=bias)
    *parents, leaf = _split(bn_path)
    del _node(folded, "/".join(parents), "BatchNorm")[leaf]
  return folded


class _Identity(nnx.Module):
  """Stands in for a folded BatchNorm; accepts and ignores its call arguments."""

  def __call__(self, x, *args, **kwargs):
    return x


def _get(parent, key: str):
  return parent[int(key)] if key.isdigit() else getattr(parent, key)


def _resolve(model: nnx.Module, path: str) -> tuple[Any, str]:
  """Parent object and last key of an attribute path; digits index lists (``"blocks/0/conv"``)."""
  *parents, last = _split(path)
  node = model
  for part in parents:
    node = _get(node, part)
  return node, last


def canonize(model: nnx.Module, pairs: Mapping[str, str]) -> nnx.Module:
  """Copy of an NNX model with each listed BatchNorm folded into its preceding Conv/Linear.

  Args:
    model: NNX module; its BatchNorms are used with running statistics (inference mode).
    pairs: layer attribute path -> BatchNorm attribute path, ``"/"``-separated, digits index lists
      (e.g. ``{"conv1": "bn1", "blocks/0/conv": "blocks/0/norm"}``).

  Returns:
    a new module (``model`` is untouched) whose listed layers hold the folded kernel and bias (a bias is
    created where the layer had none) and whose listed BatchNorms are identities.
  """
  model = nnx.clone(model)
  for layer_path, bn_path in pairs.items():
    layer, bn = _get(*_resolve(model, layer_path)), _get(*_resolve(model, bn_path))
    if not isinstance(layer, (nnx.Linear, nnx.Conv)):
      raise ValueError(f"pairs key {layer_path!r} must name an nnx.Linear or nnx.Conv, got {type(layer).__name__}")
    if not isinstance(bn, nnx.BatchNorm):
      raise ValueError(f"pairs value {bn_path!r} must name an nnx.BatchNorm, got {type(bn).__name__}")
    if bn.axis != -1:
      raise ValueError(f"BatchNorm {bn_path!r} must normalise the feature axis (axis=-1), got axis={bn.axis}")
    kernel, bias = fold_batchnorm(
        layer.kernel[...], None if layer.bias is None else layer.bias[...], bn.mean[...], bn.var[...],
        None if bn.scale is None else bn.scale[...], None if bn.bias is None else bn.bias[...], bn.epsilon)
    layer.kernel[...] = kernel
    if layer.bias is None:
      layer.bias = nnx.Param(bias)
      layer.use_bias = True
    else:
      layer.bias[...] = bias
    parent, key = _resolve(model, bn_path)
    if key.isdigit():
      parent[int(key)] = _Identity()
    else:
      setattr(parent, key, _Identity())
  return model

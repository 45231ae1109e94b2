"""Reconstruction: map a layer's features back to the input through the transposed network.

Freeze the ReLU masks and max-pool routing of the forward pass at ``x``; a bias-free network is then linear,
``f(x) = J(x) x``, and its transposed network is the vector-Jacobian product ``J(x)ᵀ``. Bort bounds every
layer matrix towards ``M Mᵀ = α I`` (Zhang et al., "Bort", ICLR 2023, Sec. 3.2, invertibility), so

  x̂ = J(x)ᵀ f(x) / ∏_l α_l = J(x)ᵀ J(x) x / ∏_l α_l

is the reconstruction of ``x`` from depth ``L`` (exact when the masks pass everything and every ``M`` is a
scaled orthogonal matrix). ``jax.vjp`` builds ``J(x)ᵀ`` for any JAX/Flax apply function, so no hand-written
inverse layers are needed. Feature functions are ``features_fn(params, x) -> features`` over a batch; samples
must not interact in the forward pass (BatchNorm in inference mode).
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

FeaturesFn = Callable[[Any, jax.Array], jax.Array]


def kernel_alpha(kernel: jax.Array) -> jax.Array:
  """Amplitude α of one layer: the mean squared column norm of its matrix view.

  Args:
    kernel: a Flax kernel, ``(in, out)`` or ``(kh, kw, in, out)``; the matrix view is
      ``M = kernel.reshape(-1, out)`` (columns are output units).

  Returns:
    scalar ``α = mean_j ||M[:, j]||²``: the exact α of ``Mᵀ M = α I`` (orthogonal units, fan_in ≥ out). For
    a tall kernel (fan_in < out) with ``M Mᵀ = α I`` it is ``α · fan_in / out``, which is the exact inverse
    scale of ReLU layers built as ``[Q, −Q]`` (half the units pass each sign) and an estimate otherwise.
  """
  if kernel.ndim < 2:
    raise ValueError(f"kernel must have ndim >= 2 (Dense (in, out) or Conv (..., in, out)), got shape {kernel.shape}")
  m = jnp.reshape(kernel, (-1, kernel.shape[-1]))
  return jnp.mean(jnp.sum(jnp.square(m), axis=0))


def depth_scales(kernels: Sequence[jax.Array]) -> jax.Array:
  """Reconstruction scales ``1 / ∏_{l<=d} α_l`` for depths ``d = 1..L``.

  Args:
    kernels: the layer kernels in forward order.

  Returns:
    ``(L,)`` array; entry ``d-1`` is the scale of the reconstruction from the output of layer ``d``.
  """
  if not kernels:
    raise ValueError("kernels must be a non-empty sequence of layer kernels in forward order")
  alphas = jnp.stack([kernel_alpha(k) for k in kernels])
  return 1.0 / jnp.cumprod(alphas)


def transpose_apply(features_fn: FeaturesFn, params: Any, x: jax.Array, cotangent: jax.Array) -> jax.Array:
  """Transposed network at ``x`` applied to a feature-space signal: ``J(x)ᵀ c``.

  Args:
    features_fn: ``features_fn(params, x) -> features``.
    params: parameters passed to ``features_fn``.
    x: input batch whose forward pass fixes the ReLU masks and pooling routes.
    cotangent: signal with the shape of ``features_fn(params, x)``.

  Returns:
    input-shaped array ``J(x)ᵀ c`` (the transpose of the network linearised at ``x``).
  """
  _, vjp = jax.vjp(lambda inputs: features_fn(params, inputs), x)
  return vjp(cotangent)[0]


def reconstruct(features_fn: FeaturesFn, params: Any, x: jax.Array, scale: float | jax.Array = 1.0) -> jax.Array:
  """Reconstruction ``x̂ = scale · J(x)ᵀ f(x)`` of ``x`` from its features.

  Args:
    features_fn: ``features_fn(params, x) -> features`` of the layer to invert.
    params: parameters passed to ``features_fn``.
    x: input batch (NHWC images or flat vectors).
    scale: ``1 / ∏ α_l`` over the layers up to the feature layer (see ``depth_scales``).

  Returns:
    ``x̂`` with the shape of ``x``.
  """
  features, vjp = jax.vjp(lambda inputs: features_fn(params, inputs), x)
  return scale * vjp(features)[0]


def reconstruction_errors(x: jax.Array, x_hat: jax.Array, peak: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Per-sample MSE and PSNR of a reconstruction.

  Args:
    x: reference batch, values in ``[0, peak]``.
    x_hat: reconstruction, same shape.
    peak: the data range (1 for images in ``[0, 1]``).

  Returns:
    ``(mse, psnr)``, each ``(N,)``; ``psnr = 10 log10(peak² / mse)`` in dB.
  """
  if x.shape != x_hat.shape:
    raise ValueError(f"x and x_hat must have the same shape, got {x.shape} and {x_hat.shape}")
  mse = jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=1)
  psnr = 10.0 * jnp.log10(peak**2 / jnp.maximum(mse, jnp.finfo(mse.dtype).tiny))
  return mse, psnr


def reconstruction_by_depth(
    features_fns: Mapping[str, FeaturesFn],
    params: Any,
    x: jax.Array,
    scales: Mapping[str, float | jax.Array],
    peak: float = 1.0,
) -> dict[str, dict[str, jax.Array]]:
  """Mean MSE and PSNR of the reconstruction from each depth.

  Args:
    features_fns: depth name -> feature function of that depth.
    params: parameters shared by all feature functions.
    x: input batch.
    scales: depth name -> reconstruction scale ``1 / ∏ α`` (e.g. from ``depth_scales``).
    peak: the data range of ``x``.

  Returns:
    depth name -> ``{"mse", "psnr", "psnr_fitted"}`` scalars, means over the batch; ``psnr_fitted`` is the PSNR of
    ``c x̂`` with the least-squares scalar ``c = <x̂, x> / <x̂, x̂>`` per image: it scores the structure of the
    reconstruction apart from the 1/∏α calibration (which is exact for orthogonal dense layers but not for
    convolutions whose patches overlap).
  """
  if set(features_fns) != set(scales):
    raise ValueError(f"scales must have the keys of features_fns {sorted(features_fns)}, got {sorted(scales)}")
  results = {}
  for name, features_fn in features_fns.items():
    x_hat = reconstruct(features_fn, params, x, scales[name])
    mse, psnr = reconstruction_errors(x, x_hat, peak)
    _, psnr_fitted = reconstruction_errors(x, fitted_scale(x, x_hat) * x_hat, peak)
    results[name] = {"mse": jnp.mean(mse), "psnr": jnp.mean(psnr), "psnr_fitted": jnp.mean(psnr_fitted)}
  return results


def fitted_scale(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Per-image least-squares scalar ``c = <x̂, x> / <x̂, x̂>`` (0 for a zero x̂), broadcastable against ``x``."""
  flat_x, flat_hat = x.reshape(x.shape[0], -1), x_hat.reshape(x.shape[0], -1)
  energy = jnp.sum(flat_hat * flat_hat, axis=1)
  c = jnp.where(energy > 0, jnp.sum(flat_hat * flat_x, axis=1) / jnp.where(energy > 0, energy, 1.0), 0.0)
  return c.reshape((-1,) + (1,) * (x.ndim - 1))

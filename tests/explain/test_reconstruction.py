"""Reconstruction through the transposed network: exact cases and a NumPy re-derivation."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax import explain
from bort_jax._src.projection import polar_svd


def _orthogonal(rng, n, alpha=1.0):
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (np.sqrt(alpha) * q).astype(np.float32)


def _linear_features(depth):
  def features_fn(params, x):
    h = x.reshape(x.shape[0], -1)
    for m in params[:depth]:
      h = h @ m
    return h
  return features_fn


def _relu_mlp_features(params, x, depth):
  h = x.reshape(x.shape[0], -1)
  for m in params[:depth]:
    h = jax.nn.relu(h @ m)
  return h


def test_kernel_alpha_matches_numpy_for_dense_and_conv():
  rng = np.random.default_rng(0)
  dense = rng.normal(size=(12, 5)).astype(np.float32)
  conv = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
  np.testing.assert_allclose(explain.kernel_alpha(dense), np.mean(np.sum(dense**2, axis=0)), rtol=1e-6)
  m = conv.reshape(-1, 6)
  np.testing.assert_allclose(explain.kernel_alpha(conv), np.mean(np.sum(m**2, axis=0)), rtol=1e-6)
  np.testing.assert_allclose(explain.kernel_alpha(_orthogonal(rng, 7, alpha=2.5)), 2.5, rtol=1e-5)
  with pytest.raises(ValueError, match="kernel"):
    explain.kernel_alpha(jnp.ones(3))


def test_depth_scales_are_cumulative_inverse_alphas():
  rng = np.random.default_rng(1)
  kernels = [_orthogonal(rng, 6, a) for a in (2.0, 0.5, 4.0)]
  np.testing.assert_allclose(explain.depth_scales(kernels), [1 / 2.0, 1 / 1.0, 1 / 4.0], rtol=1e-5)
  with pytest.raises(ValueError, match="kernels"):
    explain.depth_scales([])


def test_reconstruction_is_exact_for_scaled_orthogonal_linear_network():
  rng = np.random.default_rng(2)
  params = [_orthogonal(rng, 16, a) for a in (2.0, 0.5, 3.0)]
  x = jnp.asarray(rng.uniform(size=(5, 4, 4, 1)), jnp.float32)
  scales = explain.depth_scales(params)
  for depth in (1, 2, 3):
    x_hat = jax.jit(explain.reconstruct, static_argnums=0)(_linear_features(depth), params, x, scales[depth - 1])
    np.testing.assert_allclose(x_hat, x, atol=1e-5)
  fns = {f"layer{d}": _linear_features(d) for d in (1, 2, 3)}
  report = explain.reconstruction_by_depth(fns, params, x, {f"layer{d}": scales[d - 1] for d in (1, 2, 3)})
  for name in fns:
    assert report[name]["mse"] < 1e-10
    assert report[name]["psnr"] > 90.0


def test_reconstruction_is_exact_for_crelu_orthogonal_relu_network():
  # M = [Q, -Q]: relu(xQ) Qᵀ - relu(-xQ) Qᵀ = x Q Qᵀ = x, so ReLU masks lose nothing and α = 1 per layer.
  rng = np.random.default_rng(3)
  q1, q2 = _orthogonal(rng, 8), _orthogonal(rng, 16)
  params = [np.concatenate([q1, -q1], 1), np.concatenate([q2, -q2], 1)]

  def features_fn(params, x):
    h = x
    for m in params:
      h = jax.nn.relu(h @ m)
    return h

  x = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  scale = explain.depth_scales(params)[-1]
  np.testing.assert_allclose(scale, 1.0, rtol=1e-5)
  np.testing.assert_allclose(explain.reconstruct(features_fn, params, x, scale), x, atol=1e-5)


def test_reconstruction_is_exact_for_orthogonal_patch_conv():
  # A 2x2 stride-2 conv whose (4C, 4C) matrix view is orthogonal is an orthogonal map of the image.
  rng = np.random.default_rng(4)
  kernel = _orthogonal(rng, 8, alpha=3.0).reshape(2, 2, 2, 8)

  def features_fn(kernel, x):
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  x = jnp.asarray(rng.uniform(size=(3, 6, 6, 2)), jnp.float32)
  scale = explain.depth_scales([kernel])[0]
  np.testing.assert_allclose(explain.reconstruct(features_fn, kernel, x, scale), x, atol=1e-5)


def test_reconstruction_matches_numpy_transposed_network_with_masks_and_pool_routes():
  rng = np.random.default_rng(5)
  m1 = rng.normal(size=(4, 6)).astype(np.float32)
  b1 = rng.normal(size=6).astype(np.float32)
  m2 = rng.normal(size=(6, 5)).astype(np.float32)
  params = (m1, b1, m2)

  def features_fn(params, x):
    m1, b1, m2 = params
    pooled = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jax.nn.relu(pooled.reshape(x.shape[0], -1) @ m1 + b1)
    return jax.nn.relu(h @ m2)

  x = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
  got = explain.reconstruct(features_fn, params, jnp.asarray(x), 0.5)

  # NumPy: forward with masks, then transposed weights, masks, and max-pool unpooling to the argmax.
  windows = x.reshape(3, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(3, 2, 2, 4)
  h_pre = windows.max(-1).reshape(3, 4) @ m1 + b1
  h = np.maximum(h_pre, 0)
  z_pre = h @ m2
  z = np.maximum(z_pre, 0)
  g_h = ((z * (z_pre > 0)) @ m2.T) * (h_pre > 0)
  g_pool = (g_h @ m1.T).reshape(3, 2, 2)
  routed = np.zeros_like(windows)
  idx = windows.argmax(-1)
  np.put_along_axis(routed, idx[..., None], g_pool[..., None], axis=-1)
  want = 0.5 * routed.reshape(3, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(3, 4, 4, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  # vmap over single samples gives the batched result.
  per_sample = jax.vmap(lambda xi: explain.reconstruct(features_fn, params, xi[None], 0.5)[0])(jnp.asarray(x))
  np.testing.assert_allclose(per_sample, got, rtol=1e-5, atol=1e-6)


def test_transpose_apply_is_the_vjp():
  rng = np.random.default_rng(6)
  m = rng.normal(size=(5, 3)).astype(np.float32)
  x = rng.normal(size=(2, 5)).astype(np.float32)
  c = rng.normal(size=(2, 3)).astype(np.float32)
  got = explain.transpose_apply(lambda m, x: jax.nn.relu(x @ m), m, jnp.asarray(x), jnp.asarray(c))
  np.testing.assert_allclose(got, (c * (x @ m > 0)) @ m.T, rtol=1e-5, atol=1e-6)


def test_reconstruction_errors_match_numpy():
  rng = np.random.default_rng(7)
  x = rng.uniform(size=(4, 3, 3, 1)).astype(np.float32)
  x_hat = x + 0.1 * rng.normal(size=x.shape).astype(np.float32)
  mse, psnr = explain.reconstruction_errors(jnp.asarray(x), jnp.asarray(x_hat), peak=1.0)
  want = ((x - x_hat) ** 2).reshape(4, -1).mean(1)
  np.testing.assert_allclose(mse, want, rtol=1e-5)
  np.testing.assert_allclose(psnr, 10 * np.log10(1.0 / want), rtol=1e-5)
  with pytest.raises(ValueError, match="x_hat"):
    explain.reconstruction_errors(jnp.asarray(x), jnp.asarray(x[:2]))
  with pytest.raises(ValueError, match="scales"):
    explain.reconstruction_by_depth({"a": _linear_features(1)}, [np.eye(9)], jnp.asarray(x), {"b": 1.0})


def test_fitted_psnr_scores_a_scaled_reconstruction_by_its_structure():
  rng = np.random.default_rng(8)
  x = rng.uniform(size=(5, 9)).astype(np.float32)
  noise = 0.05 * rng.normal(size=x.shape).astype(np.float32)
  scale = np.array([3.0, 0.5, 1.0, 10.0, 0.1], np.float32)[:, None]
  x_hat = scale * (x + noise)               # right structure, wrong per-image scale
  # NumPy: least-squares scalar per image, then PSNR.
  c = (x_hat * x).sum(1, keepdims=True) / (x_hat * x_hat).sum(1, keepdims=True)
  want = 10 * np.log10(1.0 / ((c * x_hat - x) ** 2).mean(1))
  # Features z ↦ 2z with scale 1 give x̂ = 4x: a poor raw PSNR, an exact fitted one.
  got = explain.reconstruction_by_depth({"d": lambda p, z: z @ p}, 2 * np.eye(9, dtype=np.float32),
                                        jnp.asarray(x), {"d": 1.0})["d"]
  assert got["psnr"] < 0 and got["psnr_fitted"] > 100
  fitted = explain.reconstruction.fitted_scale(jnp.asarray(x), jnp.asarray(x_hat))
  np.testing.assert_allclose(fitted, c, rtol=1e-5)
  _, psnr = explain.reconstruction_errors(jnp.asarray(x), fitted * x_hat)
  np.testing.assert_allclose(psnr, want, rtol=1e-5)
  assert psnr.mean() > explain.reconstruction_errors(jnp.asarray(x), jnp.asarray(x_hat))[1].mean() + 10
  np.testing.assert_array_equal(explain.reconstruction.fitted_scale(jnp.asarray(x), jnp.zeros_like(x)), 0.0)


def test_orthogonal_kernels_reconstruct_real_digits_better_than_gaussian_ones():
  # Same random ReLU MLP before and after replacing every kernel by its orthogonal polar factor (Bort's target).
  digits = np.load(pathlib.Path(__file__).parents[2] / "examples" / "assets" / "mnist_small.npz")["x_test"][:64]
  x = jnp.asarray(digits.reshape(64, 14, 2, 14, 2, 1).mean((2, 4)), jnp.float32) / 255.0  # 14x14 keeps it fast
  rng = np.random.default_rng(8)
  gaussian = [jnp.asarray(rng.normal(size=(196, 196)) / 14.0, jnp.float32) for _ in range(2)]
  orthogonal = [polar_svd(k) for k in gaussian]

  def psnr_by_depth(params):
    fns = {d: functools.partial(_relu_mlp_features, depth=d) for d in (1, 2)}
    scales = explain.depth_scales(params)
    report = explain.reconstruction_by_depth(fns, params, x, {d: scales[d - 1] for d in fns})
    return [float(report[d]["psnr"]) for d in fns]

  gaussian_psnr, orthogonal_psnr = psnr_by_depth(gaussian), psnr_by_depth(orthogonal)
  assert orthogonal_psnr[0] > gaussian_psnr[0] + 1.0
  assert orthogonal_psnr[1] > gaussian_psnr[1] + 0.3

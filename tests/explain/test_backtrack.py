"""Backtracking saliency of the top-k features, against NumPy re-derivations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax import explain


def _mlp_features(params, x):
  m1, m2 = params
  return jax.nn.relu(jax.nn.relu(x.reshape(x.shape[0], -1) @ m1) @ m2)


def _numpy_mlp(params, x):
  m1, m2 = params
  h_pre = x.reshape(x.shape[0], -1) @ m1
  z_pre = np.maximum(h_pre, 0) @ m2
  return h_pre, z_pre, np.maximum(z_pre, 0)


def _numpy_transpose(params, h_pre, z_pre, c):
  m1, m2 = params
  return (((c * (z_pre > 0)) @ m2.T) * (h_pre > 0)) @ m1.T


def _params(seed):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(9, 12)).astype(np.float32), rng.normal(size=(12, 8)).astype(np.float32)), rng


def test_top_k_mask_by_unit_keeps_the_k_largest_entries():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
  mask = np.asarray(explain.top_k_mask(jnp.asarray(scores), 5))
  flat = scores.reshape(4, -1)
  want = np.zeros_like(flat, bool)
  np.put_along_axis(want, np.argsort(-flat, axis=1)[:, :5], True, axis=1)
  np.testing.assert_array_equal(mask.reshape(4, -1), want)


def test_top_k_mask_by_channel_keeps_whole_channels_with_largest_sums():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(3, 2, 2, 6)).astype(np.float32)
  mask = np.asarray(explain.top_k_mask(jnp.asarray(scores), 2, by="channel"))
  top = np.argsort(-scores.sum((1, 2)), axis=1)[:, :2]
  want = np.zeros((3, 6), bool)
  np.put_along_axis(want, top, True, axis=1)
  np.testing.assert_array_equal(mask, np.broadcast_to(want[:, None, None, :], scores.shape))


def test_top_k_mask_rejects_bad_arguments():
  scores = jnp.ones((2, 4))
  with pytest.raises(ValueError, match="by must be one of"):
    explain.top_k_mask(scores, 1, by="pixel")
  with pytest.raises(ValueError, match="k must be in"):
    explain.top_k_mask(scores, 5)


def test_backtrack_matches_numpy_transposed_network_on_top_k_features():
  params, rng = _params(2)
  x = rng.normal(size=(5, 3, 3, 1)).astype(np.float32)
  got = jax.jit(functools.partial(explain.backtrack, _mlp_features, k=3, scale=0.25))(params, jnp.asarray(x))
  h_pre, z_pre, z = _numpy_mlp(params, x)
  keep = np.zeros_like(z, bool)
  np.put_along_axis(keep, np.argsort(-z, axis=1)[:, :3], True, axis=1)
  want = 0.25 * _numpy_transpose(params, h_pre, z_pre, np.where(keep, z, 0)).reshape(x.shape)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_backtrack_with_all_features_is_the_reconstruction():
  params, rng = _params(3)
  x = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
  got = explain.backtrack(_mlp_features, params, x, 8, scale=0.5)
  np.testing.assert_allclose(got, explain.reconstruct(_mlp_features, params, x, 0.5), rtol=1e-5, atol=1e-6)


def test_backtrack_ranks_by_contribution_to_the_target_logit():
  params, rng = _params(4)
  head = rng.normal(size=(8, 3)).astype(np.float32)
  x = rng.normal(size=(6, 9)).astype(np.float32)
  target = np.array([0, 1, 2, 0, 1, 2])
  got = explain.backtrack(
      _mlp_features, params, jnp.asarray(x), 2, head_fn=lambda p, f: f @ head, target=jnp.asarray(target))
  h_pre, z_pre, z = _numpy_mlp(params, x)
  contribution = z * head[:, target].T
  keep = np.zeros_like(z, bool)
  np.put_along_axis(keep, np.argsort(-contribution, axis=1)[:, :2], True, axis=1)
  np.testing.assert_allclose(got, _numpy_transpose(params, h_pre, z_pre, np.where(keep, z, 0)), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="head_fn and target"):
    explain.backtrack(_mlp_features, params, jnp.asarray(x), 2, head_fn=lambda p, f: f @ head)


def test_backtrack_vmaps_over_samples():
  params, rng = _params(5)
  x = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
  per_sample = jax.vmap(lambda xi: explain.backtrack(_mlp_features, params, xi[None], 3)[0])(x)
  np.testing.assert_allclose(per_sample, explain.backtrack(_mlp_features, params, x, 3), rtol=1e-5, atol=1e-6)

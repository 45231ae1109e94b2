"""B-cos layers against NumPy re-derivations; the network's contributions sum to its logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bort_jax.explain import bcos


def _bcos_reference(x, w, b):
  """|cos(x, ŵ)|^(B−1) ŵᵀx for rows x of (P, D) and columns w of (D, O), in float64 NumPy."""
  w_hat = w / np.linalg.norm(w, axis=0)
  linear = x @ w_hat
  cos = linear / np.linalg.norm(x, axis=1, keepdims=True)
  return np.abs(cos) ** (b - 1) * linear


@pytest.mark.parametrize("b", [1.0, 2.0, 2.5])
def test_bcos_dense_matches_numpy(b):
  layer = bcos.BcosDense(6, 4, b=b, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(5, 6))
  out = layer(jnp.asarray(x, jnp.float32))
  expected = _bcos_reference(x, np.asarray(layer.kernel[...], np.float64), b)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_bcos_conv_matches_numpy_patches():
  layer = bcos.BcosConv(2, 3, (3, 3), padding="VALID", rngs=nnx.Rngs(1))
  x = np.random.default_rng(1).uniform(size=(2, 5, 6, 2))
  out = np.asarray(layer(jnp.asarray(x, jnp.float32)))
  kernel = np.asarray(layer.kernel[...], np.float64)
  patches = np.stack([x[:, i:i + 3, j:j + 3, :].reshape(2, -1) for i in range(3) for j in range(4)], 1)
  expected = _bcos_reference(patches.reshape(-1, 18), kernel.reshape(18, 3), 2.0).reshape(2, 3, 4, 3)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_detach_keeps_the_forward_value():
  model = bcos.BcosNet((4, 6, 8), rngs=nnx.Rngs(2))
  encoded = bcos.encode_input(jnp.asarray(np.random.default_rng(2).uniform(size=(3, 28, 28, 1)), jnp.float32))
  np.testing.assert_allclose(model(encoded, detach=True), model(encoded), rtol=1e-6)


@pytest.mark.parametrize("size", [28, 56])
def test_contributions_sum_to_the_logit(size):
  apply_fn, linear_fn, params = bcos.bcos_apply_fns(bcos.BcosNet((4, 6, 8), rngs=nnx.Rngs(3)))
  x = jnp.asarray(np.random.default_rng(size).uniform(size=(4, size, size, 1)), jnp.float32)
  logits = apply_fn(params, x)
  for target in range(3):
    labels = jnp.full((4,), target)
    contributions = jax.jit(bcos.bcos_contributions, static_argnums=0)(linear_fn, params, x, labels)
    assert contributions.shape == (4, size, size, 2)
    np.testing.assert_allclose(contributions.sum(axis=(1, 2, 3)), logits[:, target], rtol=1e-4, atol=1e-5)


def test_invalid_options_raise():
  with pytest.raises(ValueError, match="b must be >= 1"):
    bcos.BcosDense(2, 2, b=0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding"):
    bcos.BcosConv(2, 2, padding="FULL", rngs=nnx.Rngs(0))

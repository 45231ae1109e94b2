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


class _ConvNet(nnx.Module):
  # B-cos conv → max-pool → B-cos conv → global mean → B-cos dense: pooling keeps the net dynamic linear.
  def __init__(self, rngs):
    self.conv1, self.conv2 = bcos.BcosConv(2, 4, rngs=rngs), bcos.BcosConv(4, 6, strides=2, rngs=rngs)
    self.head = bcos.BcosDense(6, 3, rngs=rngs)

  def __call__(self, encoded, *, detach=False):
    h = nnx.max_pool(self.conv1(encoded, detach=detach), (2, 2), (2, 2))
    return self.head(jnp.mean(self.conv2(h, detach=detach), axis=(1, 2)), detach=detach)


def test_detach_keeps_the_forward_value():
  model = bcos.BcosMLP(2 * 64, (16, 8), rngs=nnx.Rngs(2))
  encoded = bcos.encode_input(jnp.asarray(np.random.default_rng(2).uniform(size=(3, 8, 8, 1)), jnp.float32))
  np.testing.assert_allclose(model(encoded, detach=True), model(encoded), rtol=1e-6)


@pytest.mark.parametrize("net", ["mlp", "conv", "cnn"])
def test_contributions_sum_to_the_logit(net):
  model = {"mlp": lambda r: bcos.BcosMLP(2 * 64, (16, 8), num_classes=3, rngs=r), "conv": _ConvNet,
           "cnn": lambda r: bcos.BcosCNN(channels=(4, 6), strides=(1, 2), num_classes=3, rngs=r)}[net](nnx.Rngs(3))
  apply_fn, linear_fn, params = bcos.bcos_apply_fns(model)
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(4, 8, 8, 1)), jnp.float32)
  logits = jax.jit(apply_fn)(params, x)
  contributions_fn = jax.jit(bcos.bcos_contributions, static_argnums=0)
  for target in range(3):
    labels = jnp.full((4,), target)
    contributions = contributions_fn(linear_fn, params, x, labels)
    assert contributions.shape == (4, 8, 8, 2)
    np.testing.assert_allclose(contributions.sum(axis=(1, 2, 3)), logits[:, target], rtol=1e-4, atol=1e-5)


def test_invalid_options_raise():
  with pytest.raises(ValueError, match="b must be >= 1"):
    bcos.BcosDense(2, 2, b=0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding"):
    bcos.BcosConv(2, 2, padding="FULL", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="channels and strides"):
    bcos.BcosCNN(channels=(4, 6), strides=(1,), rngs=nnx.Rngs(0))

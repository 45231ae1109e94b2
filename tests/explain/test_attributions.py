"""Attribution baselines: gradient identities, IG / BIG completeness, boundary search on a linear model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax.explain import attributions


def _mlp_params(seed=0, sizes=(16, 32, 32, 3)):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32)
          for a, b in zip(sizes[:-1], sizes[1:])]


def _mlp_apply(params, x):
  h = x.reshape(x.shape[0], -1)
  for w in params[:-1]:
    h = jax.nn.relu(h @ w)
  return h @ params[-1]


def _images(seed=1, n=6):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 4, 4, 1)), jnp.float32)


def test_gradient_of_linear_model_is_its_weight_column():
  w = jnp.asarray(np.random.default_rng(2).normal(size=(16, 3)), jnp.float32)
  apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
  x, target = _images(), jnp.array([0, 1, 2, 0, 1, 2])
  grad = attributions.gradient(apply_fn, w, x, target)
  np.testing.assert_allclose(grad.reshape(6, 16), np.asarray(w).T[np.asarray(target)], rtol=1e-6)
  np.testing.assert_allclose(attributions.input_x_gradient(apply_fn, w, x, target), x * grad, rtol=1e-6)


@pytest.mark.parametrize("method", attributions.IG_METHODS)
def test_integrated_gradients_is_exact_for_a_linear_model(method):
  w = jnp.asarray(np.random.default_rng(3).normal(size=(16, 3)), jnp.float32)
  apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
  x, target, baseline = _images(), jnp.array([2, 1, 0, 2, 1, 0]), 0.3
  ig = attributions.integrated_gradients(apply_fn, w, x, target, baseline, steps=3, method=method)
  expected = (np.asarray(x) - baseline).reshape(6, 16) * np.asarray(w).T[np.asarray(target)]
  np.testing.assert_allclose(ig.reshape(6, 16), expected, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_matches_numpy_quadrature_of_a_quadratic():
  # f(x) = Σ x², ∇f = 2x: the left Riemann sum of 2(b + α(x−b)) over α = k/m is known in closed form.
  apply_fn = lambda p, x: jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1, keepdims=True)
  x, target, steps = _images(), jnp.zeros(6, jnp.int32), 4
  ig = attributions.integrated_gradients(apply_fn, None, x, target, 0.0, steps=steps, method="riemann_left")
  mean_alpha = np.mean(np.arange(steps) / steps)
  np.testing.assert_allclose(ig, np.asarray(x) * 2 * mean_alpha * np.asarray(x), rtol=1e-6)


@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_integrated_gradients_completeness_on_relu_mlp(baseline):
  params, x = _mlp_params(), _images()
  target = jnp.argmax(_mlp_apply(params, x), axis=-1)
  ig = jax.jit(functools.partial(attributions.integrated_gradients, _mlp_apply, steps=256))(
      params, x, target, baseline)
  f = lambda z: attributions.target_logit(_mlp_apply, params, z, target)
  expected = f(x) - f(jnp.full_like(x, baseline))
  np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), expected, rtol=1e-2, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("stop_on_success", [False, True])
def test_boundary_search_on_linear_binary_model_picks_smallest_sufficient_radius(stop_on_success):
  # logits = (w·x, −w·x): the boundary is the hyperplane w·x = 0 at distance d = w·x/‖w‖; CE ascent for
  # label 0 walks straight along −ŵ in steps of s = 2.5ε/10, clipped to the ε-sphere, so the radius-ε attack
  # succeeds iff ε > d. It ends at x − ε ŵ, or, when frozen at its first success, at x − min(k* s, ε) ŵ
  # with k* = ⌊d/s⌋ + 1.
  w = jnp.asarray(np.random.default_rng(4).normal(size=(16,)), jnp.float32)
  apply_fn = lambda p, x: jnp.stack([x.reshape(x.shape[0], -1) @ p, -(x.reshape(x.shape[0], -1) @ p)], -1)
  x = _images(5, 20) - 0.5
  x = jnp.where((x.reshape(20, -1) @ w > 0)[:, None, None, None], x, -x)    # every sample predicted 0
  label = jnp.zeros(20, jnp.int32)
  epsilons = (0.1, 0.3, 0.6, 1.0, 2.0, 5.0)
  x_boundary, found = attributions.boundary_search(apply_fn, w, x, label, epsilons, attack_steps=10, clip=None,
                                                   stop_on_success=stop_on_success)
  unit_w = np.asarray(w) / np.linalg.norm(w)
  distance = np.asarray(x).reshape(20, -1) @ unit_w
  eps = np.asarray(epsilons)
  expected_found = distance < eps[-1]
  chosen = np.where(expected_found, eps[np.argmax(eps[None] > distance[:, None], axis=1)], eps[-1])
  if stop_on_success:
    step = 0.25 * chosen
    chosen = np.where(expected_found, np.minimum((np.floor(distance / step) + 1) * step, chosen), chosen)
  expected = np.asarray(x).reshape(20, -1) - chosen[:, None] * unit_w
  np.testing.assert_array_equal(found, expected_found)
  np.testing.assert_allclose(x_boundary.reshape(20, -1), expected, atol=1e-5)


def test_big_completeness_and_bsm_on_relu_mlp():
  params, x = _mlp_params(6), _images(7, 8)
  target = jnp.argmax(_mlp_apply(params, x), axis=-1)
  search = dict(epsilons=(0.5, 1.0, 2.0, 4.0), attack_steps=10)
  big = attributions.boundary_integrated_gradients(_mlp_apply, params, x, target, steps=256, **search)
  x_boundary, found = attributions.boundary_search(_mlp_apply, params, x, target, **search)
  assert bool(found.all())
  f = lambda z: attributions.target_logit(_mlp_apply, params, z, target)
  expected = f(x) - f(x_boundary)
  np.testing.assert_allclose(big.sum(axis=(1, 2, 3)), expected, rtol=1e-2, atol=1e-3 * np.abs(expected).max())
  bsm = attributions.boundary_saliency(_mlp_apply, params, x, target, **search)
  np.testing.assert_allclose(bsm, attributions.gradient(_mlp_apply, params, x_boundary, target), rtol=1e-6)


def test_invalid_options_raise():
  x, target = _images(), jnp.zeros(6, jnp.int32)
  with pytest.raises(ValueError, match="method must be one of"):
    attributions.integrated_gradients(_mlp_apply, _mlp_params(), x, target, method="simpson")
  with pytest.raises(ValueError, match="epsilons"):
    attributions.boundary_search(_mlp_apply, _mlp_params(), x, target, epsilons=(1.0, -1.0))

"""Attribution baselines: gradient identities, IG quadratures (captum's), and the boundary attributions BSM / BIG
of Wang et al. (2022) re-derived in NumPy on a fixed 16-12-3 ReLU net."""

import functools

from fixed_net import net
from fixed_net import net_apply
from fixed_net import net_inputs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax.explain import adversarial
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


def _np_logits(params, x):
  w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in params)
  return np.maximum(x.reshape(len(x), -1) @ w1 + b1, 0) @ w2 + b2


def _np_input_grad(params, x, dlogits):
  """∂(Σ_c dlogits_c · logit_c)/∂x per sample for the 16-12-3 net, by the chain rule."""
  w1, b1, w2, _ = (np.asarray(a, np.float64) for a in params)
  active = (x.reshape(len(x), -1) @ w1 + b1) > 0
  return ((dlogits @ w2.T) * active) @ w1.T


def _np_pgd_l2(params, x, label, eps, steps, step):
  """Untargeted PGD-L2 on the cross-entropy from x, every step: normalised gradient, ball projection."""
  z = x.copy()
  for _ in range(steps):
    logits = _np_logits(params, z)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = _np_input_grad(params, z, p - np.eye(3)[label])
    z = z + step * g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    d = z - x
    z = x + d * np.minimum(1.0, eps / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12))
  return z


def _np_captum_trapezoid_ig(params, x, baseline, target, n):
  alphas = np.linspace(0.0, 1.0, n)
  weights = np.full(n, 1.0 / n)
  weights[0] /= 2
  weights[-1] /= 2
  onehot = np.eye(3)[target]
  total = sum(w * _np_input_grad(params, baseline + a * (x - baseline), onehot) for a, w in zip(alphas, weights))
  return (x - baseline) * total


def _flat(a):
  return np.asarray(a, np.float64).reshape(len(a), -1)


def _distances(a, b):
  return np.linalg.norm(_flat(a) - _flat(b), axis=1)


def test_gradient_of_linear_model_is_its_weight_column():
  w = jnp.asarray(np.random.default_rng(2).normal(size=(16, 3)), jnp.float32)
  apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
  x, target = _images(), jnp.array([0, 1, 2, 0, 1, 2])
  grad = attributions.gradient(apply_fn, w, x, target)
  np.testing.assert_allclose(grad.reshape(6, 16), np.asarray(w).T[np.asarray(target)], rtol=1e-6)
  np.testing.assert_allclose(attributions.input_x_gradient(apply_fn, w, x, target), x * grad, rtol=1e-6)


@pytest.mark.parametrize("method", [m for m in attributions.IG_METHODS if m != "riemann_trapezoid"])
def test_integrated_gradients_is_exact_for_a_linear_model(method):
  w = jnp.asarray(np.random.default_rng(3).normal(size=(16, 3)), jnp.float32)
  apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p
  x, target, baseline = _images(), jnp.array([2, 1, 0, 2, 1, 0]), 0.3
  ig = attributions.integrated_gradients(apply_fn, w, x, target, baseline, steps=3, method=method)
  expected = (np.asarray(x) - baseline).reshape(6, 16) * np.asarray(w).T[np.asarray(target)]
  np.testing.assert_allclose(ig.reshape(6, 16), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 10, 50])
def test_captum_trapezoid_points_and_weights(n):
  # captum: alphas = linspace(0, 1, n), step sizes 1/n with the first and last halved — they sum to (n−1)/n.
  alphas, weights = attributions.path_points(n, "riemann_trapezoid")
  np.testing.assert_allclose(alphas, np.arange(n) / (n - 1), atol=1e-7)
  expected = np.full(n, 1.0 / n)
  expected[[0, -1]] /= 2
  np.testing.assert_allclose(weights, expected, rtol=1e-6)
  np.testing.assert_allclose(weights.sum(), (n - 1) / n, rtol=1e-6)


def test_captum_riemann_and_gauss_legendre_points():
  n = 5
  for method, alphas in (("riemann_left", np.arange(n) / n), ("riemann_right", np.arange(1, n + 1) / n),
                         ("riemann_middle", (np.arange(n) + 0.5) / n)):
    got_alphas, got_weights = attributions.path_points(n, method)
    np.testing.assert_allclose(got_alphas, alphas, atol=1e-7)
    np.testing.assert_allclose(got_weights, np.full(n, 1 / n), rtol=1e-6)
  got_alphas, got_weights = attributions.path_points(n, "gausslegendre")
  poly = lambda a: 3 * a**8 - a**3 + 2                     # degree 8 ≤ 2n − 1: Gauss–Legendre is exact
  np.testing.assert_allclose(np.sum(got_weights * poly(got_alphas.astype(np.float64))), 3 / 9 - 1 / 4 + 2,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="at least 2"):
    attributions.path_points(1, "riemann_trapezoid")


def test_riemann_trapezoid_ig_on_relu_net_matches_numpy():
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  target = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  baseline = jnp.full_like(x, 0.1)
  ig = attributions.integrated_gradients(net_apply, params, x, target, baseline, steps=7,
                                         method="riemann_trapezoid")
  expected = _np_captum_trapezoid_ig(params, _flat(x), _flat(baseline), np.asarray(target), 7)
  np.testing.assert_allclose(_flat(ig), expected, rtol=1e-4, atol=1e-6)


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


def test_full_pgd_stage_matches_numpy_with_foolbox_step_and_smallest_successful_radius():
  # Without random start the PGD stage is deterministic: per radius ε, 40 steps of size r·ε with the authors'
  # relative step r = 2ε/40; the boundary point is the end point of the smallest ε whose end point is
  # misclassified.
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  pred = np.argmax(_np_logits(params, _flat(x)), axis=1)
  epsilons = (0.1, 0.2, 0.4, 0.8)
  x_boundary, found = attributions.boundary_search(net_apply, params, x, None, epsilons, random_start=False,
                                                   cw=False, clip=None)
  ends = [_np_pgd_l2(params, _flat(x), pred, eps, 40, 2 * eps / 40 * eps) for eps in epsilons]
  success = np.stack([np.argmax(_np_logits(params, end), 1) != pred for end in ends])
  assert success.any(0).all()
  first = np.argmax(success, axis=0)
  expected = np.stack([ends[k][i] for i, k in enumerate(first)])
  np.testing.assert_allclose(_flat(x_boundary), expected, atol=2e-5)
  assert bool(found.all())


def test_full_pgd_with_random_start_ends_on_the_sphere_of_the_chosen_radius():
  # Full PGD keeps ascending the cross-entropy after the first success, so the end point sits at distance ε;
  # with 2ε²/40 per step and ε ≥ 0.5 the 40 steps cover the radius from any random start.
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  epsilons = np.array([0.5, 1.0, 2.0])
  search = dict(epsilons=tuple(epsilons), cw=False, clip=None)
  x_boundary, found = attributions.boundary_search(net_apply, params, x, **search)
  distance = _distances(x_boundary, x)
  assert bool(found.all())
  nearest = epsilons[np.argmin(np.abs(distance[:, None] - epsilons[None]), axis=1)]
  np.testing.assert_allclose(distance, nearest, rtol=1e-4)
  other_key, _ = attributions.boundary_search(net_apply, params, x, key=jax.random.PRNGKey(1), **search)
  assert not np.allclose(other_key, x_boundary)
  # The earlier search (no random start, stop at first success, 2.5ε/steps) stops inside the ball.
  legacy, legacy_found = attributions.boundary_search(
      net_apply, params, x, epsilons=tuple(epsilons), pgd_steps=10, pgd_step_size=0.25, random_start=False,
      stop_on_success=True, fallback="largest", cw=False, clip=None)
  assert bool(legacy_found.all())
  assert np.all(_distances(legacy, x) < 0.5 - 1e-3)


def test_fallback_keeps_the_smallest_radius_point_when_no_radius_succeeds():
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  pred = np.argmax(_np_logits(params, _flat(x)), axis=1)
  epsilons = (1e-3, 2e-3)                            # every boundary of this net is farther than 0.005
  kwargs = dict(epsilons=epsilons, random_start=False, cw=False, clip=None)
  x_boundary, found = attributions.boundary_search(net_apply, params, x, **kwargs)
  assert not bool(found.any())
  for fallback, eps in (("smallest", 1e-3), ("largest", 2e-3)):
    got, _ = attributions.boundary_search(net_apply, params, x, fallback=fallback, **kwargs)
    expected = _np_pgd_l2(params, _flat(x), pred, eps, 40, 2 * eps**2 / 40)
    np.testing.assert_allclose(_flat(got) - _flat(x), expected - _flat(x), atol=1e-5)   # 1 % of ε
  # With random start the kept point lies in the smallest ball; CW finds boundary points (farther than the
  # fallback point) that must not replace it.
  x_boundary, found = attributions.boundary_search(net_apply, params, x, epsilons=epsilons, clip=None)
  assert not bool(found.any())
  assert np.all(_distances(x_boundary, x) <= 1e-3 * (1 + 1e-4))


def test_cw_stage_replaces_pgd_points_with_closer_boundary_points():
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  pred = jnp.argmax(net_apply(params, x), axis=-1)
  search = dict(epsilons=(0.1, 0.2, 0.4, 0.8), key=jax.random.PRNGKey(3))
  pgd_only, pgd_found = attributions.boundary_search(net_apply, params, x, cw=False, **search)
  both, both_found = attributions.boundary_search(net_apply, params, x, **search)
  cw = adversarial.cw_l2_attack(net_apply, params, x, pred, clip=(0.0, 1.0))
  assert bool(pgd_found.all()) and bool(both_found.all()) and bool(cw.success.all())
  assert np.all(np.asarray(cw.l2) < 1.0)             # within the authors' CW radius: no clipping
  cw_distance, pgd_distance = np.asarray(cw.l2), _distances(pgd_only, x)
  assert np.all(cw_distance < pgd_distance)          # CW is closer than PGD wherever both succeed here
  np.testing.assert_allclose(both, cw.x_adv, atol=1e-6)
  np.testing.assert_allclose(_distances(both, x), np.minimum(cw_distance, pgd_distance), rtol=1e-5)


def test_bsm_and_big_match_numpy_given_the_same_boundary_point():
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  search = dict(epsilons=(0.1, 0.2, 0.4, 0.8))
  x_boundary, found = attributions.boundary_search(net_apply, params, x, **search)
  assert bool(found.all())
  pred = np.argmax(_np_logits(params, _flat(x)), axis=1)
  big = attributions.boundary_integrated_gradients(net_apply, params, x, **search)      # defaults: 50 points
  expected = _np_captum_trapezoid_ig(params, _flat(x), _flat(x_boundary), pred, 50)
  np.testing.assert_allclose(_flat(big), expected, rtol=1e-4, atol=1e-6)
  given = attributions.boundary_integrated_gradients(net_apply, params, x, x_boundary=x_boundary, steps=50)
  np.testing.assert_allclose(given, big, rtol=1e-6, atol=1e-7)
  bsm = attributions.boundary_saliency(net_apply, params, x, **search)
  np.testing.assert_allclose(_flat(bsm), _np_input_grad(params, _flat(x_boundary), np.eye(3)[pred]),
                             rtol=1e-5, atol=1e-6)
  midpoint = attributions.boundary_integrated_gradients(net_apply, params, x, x_boundary=x_boundary,
                                                        steps=50, method="riemann_middle")
  assert not np.allclose(midpoint, big)


def test_boundary_attributions_explain_the_predicted_class_by_default():
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  pred = jnp.argmax(net_apply(params, x), axis=-1)
  assert len(set(np.asarray(pred).tolist())) == 3
  search = dict(epsilons=(0.1, 0.2, 0.4, 0.8), cw=False)
  x_boundary, found = attributions.boundary_search(net_apply, params, x, **search)
  np.testing.assert_array_equal(x_boundary, attributions.boundary_search(net_apply, params, x, pred, **search)[0])
  assert bool(found.all())
  assert np.all(np.argmax(net_apply(params, x_boundary), -1) != np.asarray(pred))
  for method in (attributions.boundary_saliency, attributions.boundary_integrated_gradients):
    default = method(net_apply, params, x, x_boundary=x_boundary)
    np.testing.assert_array_equal(default, method(net_apply, params, x, pred, x_boundary=x_boundary))
    assert not np.allclose(default, method(net_apply, params, x, (pred + 1) % 3, x_boundary=x_boundary))


def test_boundary_search_jits_with_static_options():
  params, x = net(), jnp.asarray(net_inputs((8, 4, 4, 1)))
  search = jax.jit(attributions.boundary_search, static_argnums=(0, 4),
                   static_argnames=("pgd_steps", "cw", "clip", "cw_steps", "cw_binary_search_steps"))
  x_boundary, found = search(net_apply, params, x, None, (0.1, 0.2, 0.4, 0.8), pgd_steps=10, cw_steps=10,
                             cw_binary_search_steps=3)
  eager = attributions.boundary_search(net_apply, params, x, None, (0.1, 0.2, 0.4, 0.8), pgd_steps=10,
                                       cw_steps=10, cw_binary_search_steps=3)
  np.testing.assert_allclose(x_boundary, eager[0], atol=1e-6)
  np.testing.assert_array_equal(found, eager[1])


@pytest.mark.parametrize("stop_on_success", [False, True])
def test_legacy_boundary_search_on_linear_binary_model_picks_smallest_sufficient_radius(stop_on_success):
  # The earlier search, kept behind options: logits = (w·x, −w·x), the boundary is the hyperplane w·x = 0 at
  # distance d = w·x/‖w‖; CE ascent for label 0 walks straight along −ŵ in steps of s = 2.5ε/10, clipped to
  # the ε-sphere, so the radius-ε attack succeeds iff ε > d. It ends at x − ε ŵ, or, when frozen at its first
  # success, at x − min(k* s, ε) ŵ with k* = ⌊d/s⌋ + 1; without success it keeps the largest radius.
  w = jnp.asarray(np.random.default_rng(4).normal(size=(16,)), jnp.float32)
  apply_fn = lambda p, x: jnp.stack([x.reshape(x.shape[0], -1) @ p, -(x.reshape(x.shape[0], -1) @ p)], -1)
  x = _images(5, 20) - 0.5
  x = jnp.where((x.reshape(20, -1) @ w > 0)[:, None, None, None], x, -x)    # every sample predicted 0
  label = jnp.zeros(20, jnp.int32)
  epsilons = (0.1, 0.3, 0.6, 1.0, 2.0, 5.0)
  x_boundary, found = attributions.boundary_search(
      apply_fn, w, x, label, epsilons, pgd_steps=10, pgd_step_size=0.25, random_start=False,
      fallback="largest", cw=False, clip=None, stop_on_success=stop_on_success)
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
  search = dict(epsilons=(0.5, 1.0, 2.0, 4.0), pgd_steps=10, cw_steps=20)
  x_boundary, found = attributions.boundary_search(_mlp_apply, params, x, **search)
  assert bool(found.all())
  f = lambda z: attributions.target_logit(_mlp_apply, params, z, target)
  gap = f(x) - f(x_boundary)
  for method, steps, total_weight in (("riemann_trapezoid", 256, 255 / 256), ("riemann_middle", 256, 1.0)):
    big = attributions.boundary_integrated_gradients(_mlp_apply, params, x, x_boundary=x_boundary, steps=steps,
                                                     method=method)
    np.testing.assert_allclose(big.sum(axis=(1, 2, 3)), total_weight * gap, rtol=1e-2,
                               atol=1e-3 * np.abs(gap).max())
  bsm = attributions.boundary_saliency(_mlp_apply, params, x, **search)
  np.testing.assert_allclose(bsm, attributions.gradient(_mlp_apply, params, x_boundary, target), rtol=1e-6)
  big = attributions.boundary_integrated_gradients(_mlp_apply, params, x, steps=256, **search)
  np.testing.assert_allclose(big, attributions.boundary_integrated_gradients(
      _mlp_apply, params, x, x_boundary=x_boundary, steps=256), rtol=1e-6, atol=1e-7)


def test_invalid_options_raise():
  x, target = _images(), jnp.zeros(6, jnp.int32)
  with pytest.raises(ValueError, match="method must be one of"):
    attributions.integrated_gradients(_mlp_apply, _mlp_params(), x, target, method="simpson")
  with pytest.raises(ValueError, match="epsilons"):
    attributions.boundary_search(_mlp_apply, _mlp_params(), x, target, epsilons=(1.0, -1.0))
  with pytest.raises(ValueError, match="fallback"):
    attributions.boundary_search(_mlp_apply, _mlp_params(), x, target, fallback="middle")

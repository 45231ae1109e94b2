"""Explainable adversarial samples and PGD, against closed forms on linear models."""

from fixed_net import net
from fixed_net import net_apply
from fixed_net import net_inputs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax import explain

ALPHA = 2.0


def _orthogonal_model(seed):
  """Features f(x) = x M with M Mᵀ = α I; head = dot product with class data means in feature space."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  m = (np.sqrt(ALPHA) * q).astype(np.float32)
  y = np.repeat(np.arange(3), 4)
  x = (0.5 + 0.3 * np.eye(6)[y * 2] + 0.05 * rng.normal(size=(12, 6))).astype(np.float32)
  return m, x, y


def _features(m, x):
  return x @ m


def _softmax(logits):
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_class_prototypes_are_group_means():
  m, x, y = _orthogonal_model(0)
  got = explain.class_prototypes(_features, m, jnp.asarray(x), jnp.asarray(y), 4)
  want = np.stack([(x[y == c] @ m).mean(0) for c in range(3)] + [np.zeros(6)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_full_latent_step_lands_on_the_target_prototype_for_orthogonal_features():
  # x' = x + Mᵀ(μ_t − x M)/α = μ_t Mᵀ/α, so f(x') = μ_t exactly.
  m, x, y = _orthogonal_model(1)
  protos = np.asarray(explain.class_prototypes(_features, m, jnp.asarray(x), jnp.asarray(y), 3))
  apply_fn = lambda m, x: (x @ m) @ protos.T
  target = (y + 1) % 3
  result = jax.jit(
      lambda x, t: explain.explainable_adversarial(
          _features, apply_fn, m, x, t, protos, steps=1, step_size=1.0, scale=1 / ALPHA, clip=None))(
              jnp.asarray(x), jnp.asarray(target))
  np.testing.assert_allclose(result.x_adv, protos[target] @ m.T / ALPHA, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(result.x_adv @ m, protos[target], rtol=1e-5, atol=1e-5)
  assert np.all(result.success)
  np.testing.assert_allclose(result.l2, np.linalg.norm(result.x_adv - x, axis=1), rtol=1e-5)


def test_explainable_adversarial_leaves_samples_already_at_their_target():
  m, x, y = _orthogonal_model(2)
  protos = explain.class_prototypes(_features, m, jnp.asarray(x), jnp.asarray(y), 3)
  apply_fn = lambda m, x: (x @ m) @ protos.T
  target = jnp.argmax(apply_fn(m, jnp.asarray(x)), axis=1)
  result = explain.explainable_adversarial(_features, apply_fn, m, jnp.asarray(x), target, protos, steps=3)
  np.testing.assert_array_equal(result.x_adv, x)
  assert np.all(result.success) and np.all(result.l2 == 0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_single_step_matches_numpy_closed_form(norm):
  rng = np.random.default_rng(3)
  w = rng.normal(size=(6, 4)).astype(np.float32)
  x = rng.uniform(0.2, 0.8, size=(5, 6)).astype(np.float32)
  target = np.array([0, 1, 2, 3, 0])
  eps, eta = 0.05, 0.08
  result = explain.pgd_attack(lambda w, x: x @ w, w, jnp.asarray(x), jnp.asarray(target), eps,
                              norm=norm, steps=1, step_size=eta)
  g = (_softmax(x @ w) - np.eye(4)[target]) @ w.T  # ∂ CE / ∂x of a linear softmax model
  if norm == "linf":
    want = x + np.clip(-eta * np.sign(g), -eps, eps)
  else:
    step = -eta * g / np.linalg.norm(g, axis=1, keepdims=True)
    want = x + step * np.minimum(1.0, eps / np.linalg.norm(step, axis=1, keepdims=True))
  np.testing.assert_allclose(result.x_adv, np.clip(want, 0, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("linf", 0.5), ("l2", 3.0)])
def test_pgd_stays_in_the_ball_and_reaches_targets_on_a_linear_model(norm, eps):
  rng = np.random.default_rng(4)
  w = rng.normal(size=(10, 3)).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(8, 10)).astype(np.float32)
  target = jnp.asarray(rng.integers(0, 3, size=8))
  result = explain.pgd_attack(lambda w, x: x @ w, w, jnp.asarray(x), target, eps, norm=norm, steps=40)
  delta = np.asarray(result.x_adv) - x
  size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  assert np.all(size <= eps * (1 + 1e-5))
  assert np.all(result.success)
  assert np.all((np.asarray(result.x_adv) >= 0) & (np.asarray(result.x_adv) <= 1))


def test_pgd_untargeted_success_means_leaving_the_label_and_stop_freezes_successes():
  rng = np.random.default_rng(5)
  w = rng.normal(size=(10, 3)).astype(np.float32)
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(8, 10)), jnp.float32)
  wrong = (jnp.argmax(x @ w, axis=1) + 1) % 3  # untargeted "label" the model does not predict: already a success
  result = explain.pgd_attack(lambda w, x: x @ w, w, x, wrong, 0.3, targeted=False, stop_on_success=True)
  assert np.all(result.success)
  np.testing.assert_array_equal(result.x_adv, x)
  with pytest.raises(ValueError, match="norm must be one of"):
    explain.pgd_attack(lambda w, x: x @ w, w, x, wrong, 0.3, norm="l1")


def test_summarize_reports_rate_and_l2():
  result = explain.AttackResult(jnp.zeros((4, 2)), jnp.array([True, False, True, False]),
                                jnp.array([1.0, 5.0, 3.0, 7.0]))
  summary = explain.summarize(result)
  np.testing.assert_allclose(summary["success_rate"], 0.5)
  np.testing.assert_allclose(summary["l2_success"], 2.0)
  np.testing.assert_allclose(summary["l2_all"], 4.0)


def _np_logits_and_grad(params, x, dlogits=None):
  """Logits of the 16-12-3 net and, given per-sample weights on the logits, the input gradient of their sum."""
  w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in params)
  pre = x @ w1 + b1
  logits = np.maximum(pre, 0) @ w2 + b2
  return logits, (None if dlogits is None else ((dlogits @ w2.T) * (pre > 0)) @ w1.T)


def _np_cw_l2(params, x, label, *, binary_search_steps, steps, lr, initial_const, lo=0.0, hi=1.0):
  """Untargeted CW-L2 written out from the definition with foolbox's conventions (tanh box with the 0.999999
  shrink, squared distance to the round-tripped input, runner-up re-chosen each step, Adam, batch-summed loss
  for the early abort every ceil(steps/10) steps, ×10 / bisection search over c, closest adversarial kept)."""
  n = len(x)
  mid, half = (lo + hi) / 2, (hi - lo) / 2
  w0 = np.arctanh((x - mid) / half * 0.999999)
  x_ref = np.tanh(w0) * half + mid
  consts, lower, upper = np.full(n, initial_const), np.zeros(n), np.full(n, np.inf)
  best, best_norm = x.astype(np.float64).copy(), np.full(n, np.inf)
  rows = np.arange(n)
  for _ in range(binary_search_steps):
    delta, m, v = np.zeros_like(w0), np.zeros_like(w0), np.zeros_like(w0)
    found, previous = np.zeros(n, bool), np.inf
    for k in range(steps):
      z = np.tanh(w0 + delta) * half + mid
      logits, _ = _np_logits_and_grad(params, z)
      others = logits.copy()
      others[rows, label] = -np.inf
      runner_up = others.argmax(1)
      margin = logits[rows, label] - logits[rows, runner_up]
      loss = np.sum(consts * np.maximum(margin, 0)) + np.sum((z - x_ref) ** 2)
      dlogits = np.zeros_like(logits)
      dlogits[rows, label] = consts * (margin > 0)
      dlogits[rows, runner_up] -= consts * (margin > 0)
      _, grad_z = _np_logits_and_grad(params, z, dlogits)
      g = (grad_z + 2 * (z - x_ref)) * half * (1 - np.tanh(w0 + delta) ** 2)
      m = 0.9 * m + 0.1 * g
      v = 0.999 * v + 0.001 * g * g
      delta = delta - lr * (m / (1 - 0.9 ** (k + 1))) / (np.sqrt(v / (1 - 0.999 ** (k + 1))) + 1e-8)
      if k % int(np.ceil(steps / 10)) == 0:
        if not loss <= 0.9999 * previous:
          break
        previous = loss
      hit = logits.argmax(1) != label
      found |= hit
      norm = np.linalg.norm(z - x, axis=1)
      new_best = hit & (norm < best_norm)
      best[new_best], best_norm[new_best] = z[new_best], norm[new_best]
    upper = np.where(found, consts, upper)
    lower = np.where(found, lower, consts)
    consts = np.where(np.isinf(upper), consts * 10, (lower + upper) / 2)
  return best


def test_random_start_is_uniform_in_the_l2_ball_and_clipped():
  x = jnp.asarray(np.random.default_rng(6).uniform(0.3, 0.7, size=(2000, 16)), jnp.float32)
  start = explain.adversarial.uniform_ball_start(jax.random.PRNGKey(0), x, 0.5, "l2", clip=None)
  radius = np.linalg.norm(np.asarray(start - x), axis=1) / 0.5
  assert radius.max() <= 1 + 1e-6
  # Uniform in the 16-ball: P(r ≤ t) = t^16, i.e. r^16 is uniform on [0, 1].
  np.testing.assert_allclose(np.quantile(radius**16, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75], atol=0.04)
  clipped = explain.adversarial.uniform_ball_start(jax.random.PRNGKey(0), x, 0.5, "l2")
  np.testing.assert_allclose(clipped, np.clip(start, 0, 1))
  linf = explain.adversarial.uniform_ball_start(jax.random.PRNGKey(1), x, 0.1, "linf", clip=None)
  assert np.abs(np.asarray(linf - x)).max() <= 0.1 + 1e-6


def test_pgd_random_start_then_full_run_ends_on_the_sphere():
  params, x = net(), jnp.asarray(net_inputs())
  pred = jnp.argmax(net_apply(params, x), axis=1)
  start_only = explain.pgd_attack(net_apply, params, x, pred, 1.0, norm="l2", targeted=False, steps=0,
                                  step_size=0.0, clip=None, random_start=True, key=jax.random.PRNGKey(2))
  np.testing.assert_allclose(start_only.x_adv, explain.adversarial.uniform_ball_start(
      jax.random.PRNGKey(2), x, 1.0, "l2", clip=None), atol=1e-7)
  full = explain.pgd_attack(net_apply, params, x, pred, 1.0, norm="l2", targeted=False, steps=40,
                            step_size=2 * 1.0 / 40 * 1.0, clip=None, random_start=True, key=jax.random.PRNGKey(2))
  assert np.all(full.success)
  np.testing.assert_allclose(full.l2, 1.0, rtol=1e-5)


def test_cw_l2_matches_numpy_rederivation_of_foolbox_conventions():
  params, x = net(), net_inputs()
  label = np.argmax(_np_logits_and_grad(params, x)[0], axis=1)
  options = dict(binary_search_steps=5, steps=40, initial_const=0.1)
  result = explain.adversarial.cw_l2_attack(net_apply, params, jnp.asarray(x), jnp.asarray(label),
                                            step_size=1e-2, **options)
  expected = _np_cw_l2(params, x, label, lr=1e-2, **options)
  expected_success = np.argmax(_np_logits_and_grad(params, expected)[0], axis=1) != label
  assert expected_success.sum() >= 6                  # the samples whose boundary 40 Adam steps reach
  np.testing.assert_array_equal(result.success, expected_success)
  np.testing.assert_allclose(result.x_adv, expected, atol=1e-5)
  np.testing.assert_allclose(result.l2, np.linalg.norm(expected - x, axis=1), rtol=1e-4, atol=1e-6)
  # The early abort fires on this batch, so the comparison above covers it.
  no_abort = explain.adversarial.cw_l2_attack(net_apply, params, jnp.asarray(x), jnp.asarray(label),
                                              step_size=1e-2, abort_early=False, **options)
  assert np.abs(np.asarray(no_abort.x_adv) - expected).max() > 1e-3


def test_cw_l2_reaches_just_past_the_hyperplane_of_a_linear_model():
  # logits (w·x + b, 0): the nearest class change is at distance d = (w·x + b)/‖w‖ along −w.
  rng = np.random.default_rng(7)
  w = rng.normal(size=16).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(6, 16)).astype(np.float32)
  b = np.float32(-(x @ w).min() + 0.5)
  apply_fn = lambda p, z: jnp.stack([z @ p[0] + p[1], jnp.zeros(len(z))], axis=1)
  distance = (x @ w + b) / np.linalg.norm(w)
  result = explain.adversarial.cw_l2_attack(apply_fn, (w, b), jnp.asarray(x), jnp.zeros(6, jnp.int32),
                                            clip=None, steps=200)
  assert np.all(result.success)
  assert np.all(np.asarray(result.l2) >= distance * (1 - 1e-4))
  np.testing.assert_allclose(result.l2, distance, rtol=0.05)
  direction = (np.asarray(result.x_adv) - x) / np.asarray(result.l2)[:, None]
  np.testing.assert_allclose(direction @ (w / np.linalg.norm(w)), -1.0, atol=0.01)


def test_cw_l2_returns_the_input_where_nothing_is_found_and_clips_to_epsilon():
  params, x = net(), jnp.asarray(net_inputs())
  pred = jnp.argmax(net_apply(params, x), axis=1)
  none = explain.adversarial.cw_l2_attack(net_apply, params, x, pred, binary_search_steps=1, steps=5,
                                          initial_const=1e-6)
  assert not np.any(none.success)
  np.testing.assert_array_equal(none.x_adv, x)
  far = x + 3.0 * jnp.ones_like(x) / 4.0               # ‖δ‖ = 3
  np.testing.assert_allclose(np.linalg.norm(explain.adversarial.clip_l2_perturbation(x, far, 1.0) - x, axis=1),
                             1.0, rtol=1e-6)

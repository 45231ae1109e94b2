"""Explainable adversarial samples and PGD, against closed forms on linear models."""

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

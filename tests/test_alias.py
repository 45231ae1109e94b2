"""bort_sgd / bort_adamw against NumPy re-derivations of the reference BortS / BortA steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax as bj


def delta_l2_full(w, alpha):
  """Reference l2-full on the torch view W (out, fan_in), float64."""
  return w @ w.T @ w - alpha * w


def params_and_grads(steps, seed=0):
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(12, 4)) / 3.5  # Flax (in, out)
  bias = rng.normal(size=4)
  grads = [(rng.normal(size=(12, 4)), rng.normal(size=4)) for _ in range(steps)]
  return kernel, bias, grads


def run_ours(tx, kernel, bias, grads):
  params = {"fc": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for gk, gb in grads:
    g = {"fc": {"kernel": jnp.asarray(gk, jnp.float32), "bias": jnp.asarray(gb, jnp.float32)}}
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params["fc"]["kernel"]), np.asarray(params["fc"]["bias"])


@pytest.mark.parametrize("momentum, dampening, nesterov, weight_decay", [
    (0.0, 0.0, False, 0.0), (0.9, 0.0, False, 5e-4), (0.9, 0.1, False, 1e-3), (0.9, 0.0, True, 5e-4)])
def test_bort_sgd_matches_reference_borts(momentum, dampening, nesterov, weight_decay):
  lr, gamma, alpha, steps = 0.05, 0.3, 1.0, 5
  kernel, bias, grads = params_and_grads(steps)
  ours = run_ours(bj.bort_sgd(lr, gamma, momentum=momentum, dampening=dampening, nesterov=nesterov,
                              weight_decay=weight_decay, alpha=alpha), kernel, bias, grads)
  # Reference BortS, torch orientation, per tensor (bias is not corrected here by design).
  w, b = kernel.T.copy(), bias.copy()
  buffers = [None, None]
  for gk, gb in grads:
    for i, (p, g) in enumerate(((w, gk.T), (b, gb))):
      g = g + gamma * delta_l2_full(p, alpha) if i == 0 else g.copy()
      g = g + weight_decay * p
      if momentum:
        buffers[i] = g.copy() if buffers[i] is None else momentum * buffers[i] + (1 - dampening) * g
        g = g + momentum * buffers[i] if nesterov else buffers[i]
      p -= lr * g
  np.testing.assert_allclose(ours[0], w.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[1], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, "adaptive"])
def test_bort_adamw_matches_reference_borta(alpha):
  lr, gamma, weight_decay, b1, b2, eps, steps = 1e-2, 0.2, 0.05, 0.9, 0.999, 1e-8, 6
  kernel, bias, grads = params_and_grads(steps, seed=1)
  ours = run_ours(bj.bort_adamw(lr, gamma, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, alpha=alpha),
                  kernel, bias, grads)
  w, b = kernel.T.copy(), bias.copy()
  moments = [[np.zeros_like(w), np.zeros_like(w)], [np.zeros_like(b), np.zeros_like(b)]]
  for t, (gk, gb) in enumerate(grads, start=1):
    for i, (p, g) in enumerate(((w, gk.T), (b, gb))):
      p *= 1 - lr * weight_decay
      if i == 0:
        a = np.linalg.norm(p, axis=1).mean() ** 2 if alpha == "adaptive" else alpha
        p -= lr * gamma * delta_l2_full(p, a)
      m, v = moments[i]
      m[...] = b1 * m + (1 - b1) * g
      v[...] = b2 * v + (1 - b2) * g * g
      p -= lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
  np.testing.assert_allclose(ours[0], w.T, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(ours[1], b, rtol=2e-5, atol=2e-6)


def test_bort_adamw_correction_is_not_adam_scaled():
  # With zero gradients Adam moves nothing, so the whole step is −lr·γ·Δ (no weight decay here).
  params = {"fc": {"kernel": jnp.full((5, 2), 0.8)}}
  tx = bj.bort_adamw(0.1, 0.5, weight_decay=0.0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["fc"]["kernel"], -0.1 * 0.5 * bj.bort_correction(params["fc"]["kernel"]),
                             rtol=1e-6)


def test_learning_rate_schedules_are_supported():
  kernel, bias, grads = params_and_grads(3, seed=2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10)
  sgd = run_ours(bj.bort_sgd(schedule, 0.1, momentum=0.9), kernel, bias, grads)
  adamw = run_ours(bj.bort_adamw(schedule, 0.1), kernel, bias, grads)
  assert np.isfinite(sgd[0]).all() and np.isfinite(adamw[0]).all()


@pytest.mark.parametrize("factory, kwargs, message", [
    (bj.bort_sgd, dict(momentum=-0.1), "momentum must be non-negative"),
    (bj.bort_sgd, dict(nesterov=True), "nesterov=True requires momentum > 0"),
    (bj.bort_adamw, dict(weight_decay=-1.0), "weight_decay must be non-negative"),
    (bj.bort_adamw, dict(mode="fullrow"), "mode must be one of"),
])
def test_alias_bad_arguments(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(0.1, 0.1, **kwargs)

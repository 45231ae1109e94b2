"""bort_sgd / bort_adamw against NumPy re-derivations of the reference BortS / BortA steps; bort_lamb against
optax.lamb (γ = 0) and a NumPy LAMB with the correction outside the trust ratio."""

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
    (bj.bort_sgd, dict(momentum=-0.1), r"momentum must be a number in \[0, 1\), got -0.1."),
    (bj.bort_sgd, dict(momentum=1.5), r"momentum must be a number in \[0, 1\), got 1.5."),
    (bj.bort_sgd, dict(momentum=True), r"momentum must be a number in \[0, 1\), got True."),
    (bj.bort_sgd, dict(momentum=0.9, dampening=-0.1), r"dampening must be a number in \[0, 1\], got -0.1."),
    (bj.bort_sgd, dict(weight_decay=np.float32(-1)), "weight_decay must be a non-negative number or an optax schedule"),
    (bj.bort_sgd, dict(learning_rate=-0.1), "learning_rate must be a non-negative number or an optax schedule"),
    (bj.bort_sgd, dict(learning_rate=jnp.asarray(-0.1)), "learning_rate must be a non-negative number"),
    (bj.bort_sgd, dict(nesterov=True), "nesterov=True requires momentum > 0"),
    (bj.bort_sgd, dict(momentum=np.float32(0.9), dampening=np.float32(0.1), nesterov=True),
     "nesterov=True requires momentum > 0 and dampening == 0"),
    (bj.bort_sgd, dict(momentum=0.9, nesterov=1), "nesterov must be True or False, got 1."),
    (bj.bort_sgd, dict(weight_decay_mask=False), "weight_decay_mask must be None, a callable, or a pytree"),
    (bj.bort_adamw, dict(weight_decay=-1.0), "weight_decay must be a non-negative number, got -1.0."),
    (bj.bort_adamw, dict(weight_decay=optax.constant_schedule(0.1)), "weight_decay must be a non-negative number"),
    (bj.bort_adamw, dict(b1=1.5), r"b1 must be a number in \[0, 1\), got 1.5."),
    (bj.bort_adamw, dict(b2=1.0), r"b2 must be a number in \[0, 1\), got 1.0."),
    (bj.bort_adamw, dict(eps=-1e-8), "eps must be a non-negative number"),
    (bj.bort_adamw, dict(learning_rate=np.float32(-1)), "learning_rate must be a non-negative number"),
    (bj.bort_adamw, dict(mode="fullrow"), "mode must be one of"),
])
def test_alias_bad_arguments(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(**{"learning_rate": 0.1, "gamma": 0.1, **kwargs})


def test_alias_accepts_schedules_and_numpy_scalars():
  schedule = optax.linear_schedule(0.1, 0.0, 10)
  bj.bort_sgd(schedule, schedule, momentum=np.float32(0.9), dampening=1.0, weight_decay=schedule)
  bj.bort_adamw(schedule, 0.1, b1=np.float32(0.9), b2=jnp.asarray(0.99), eps=0.0, weight_decay=np.float64(0.1))


def test_bort_adamw_without_gamma_is_optax_adamw():
  # Same default weight decay as optax.adamw (1e-4; the reference BortA uses 1e-2).
  kernel, bias, grads = params_and_grads(3, seed=3)
  ours = run_ours(bj.bort_adamw(0.1, 0.0), kernel, bias, grads)
  theirs = run_ours(optax.adamw(0.1), kernel, bias, grads)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_bort_lamb_without_gamma_is_optax_lamb(weight_decay):
  kernel, bias, grads = params_and_grads(4, seed=4)
  ours = run_ours(bj.bort_lamb(0.05, 0.0, weight_decay=weight_decay), kernel, bias, grads)
  theirs = run_ours(optax.lamb(0.05, weight_decay=weight_decay), kernel, bias, grads)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_zero_gradient_step_is_the_trust_scaled_decay_plus_unscaled_correction(weight_decay):
  # Zero gradients: Adam gives 0, so r = λW and the trust ratio ‖W‖/‖λW‖ turns it into W (λ > 0) or leaves 0.
  lr, gamma = 0.1, 0.5
  kernel, _, _ = params_and_grads(0, seed=5)
  params = {"fc": {"kernel": jnp.asarray(kernel, jnp.float32)}}
  tx = bj.bort_lamb(lr, gamma, weight_decay=weight_decay)
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  w = kernel.T  # torch orientation (out, fan_in)
  expected = -lr * ((w if weight_decay else 0.0) + gamma * delta_l2_full(w, 1.0))
  np.testing.assert_allclose(updates["fc"]["kernel"], expected.T, rtol=1e-5, atol=1e-6)


def test_bort_lamb_matches_a_numpy_lamb_with_the_correction():
  lr, gamma, weight_decay, b1, b2, eps, steps = 1e-2, 0.2, 0.05, 0.9, 0.999, 1e-6, 5
  kernel, bias, grads = params_and_grads(steps, seed=6)
  ours = run_ours(bj.bort_lamb(lr, gamma, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay), kernel, bias, grads)
  w, b = kernel.T.copy(), bias.copy()
  moments = [[np.zeros_like(w), np.zeros_like(w)], [np.zeros_like(b), np.zeros_like(b)]]
  for t, (gk, gb) in enumerate(grads, start=1):
    for i, (p, g) in enumerate(((w, gk.T), (b, gb))):
      m, v = moments[i]
      m[...] = b1 * m + (1 - b1) * g
      v[...] = b2 * v + (1 - b2) * g * g
      r = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + weight_decay * p
      step = np.linalg.norm(p) / np.linalg.norm(r) * r
      if i == 0:
        step = step + gamma * delta_l2_full(p, 1.0)
      p -= lr * step
  np.testing.assert_allclose(ours[0], w.T, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(ours[1], b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(b1=1.5), r"b1 must be a number in \[0, 1\), got 1.5."),
    (dict(eps=-1.0), "eps must be a non-negative number"),
    (dict(weight_decay=-0.1), "weight_decay must be a non-negative number"),
    (dict(mode="fullrow"), "mode must be one of"),
])
def test_bort_lamb_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bj.bort_lamb(0.1, 0.1, **kwargs)


@pytest.mark.parametrize("scale", [optax.scale_by_lion, optax.scale_by_factored_rms])
def test_the_readme_chain_puts_the_correction_outside_any_optimizers_scaling(scale):
  # Zero gradients: Lion's sign and Adafactor's RMS scaling move nothing, so the step is exactly −η·γ·Δ.
  params = {"fc": {"kernel": jnp.full((5, 2), 0.8)}}
  tx = optax.chain(scale(), bj.add_bort_correction(0.5), optax.scale_by_learning_rate(0.1))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["fc"]["kernel"], -0.1 * 0.5 * bj.bort_correction(params["fc"]["kernel"]),
                             rtol=1e-6)

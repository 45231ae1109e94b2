"""Baseline input attributions: gradient, input x gradient, integrated and boundary gradients.

Every function takes ``apply_fn(params, x) -> logits`` with a batch of images ``x`` (NHWC or (N, D)) and an
integer ``target`` of shape (N,), and returns an attribution with the shape of ``x``. Samples must not interact
inside ``apply_fn`` (no batch statistics), so the gradient of the summed target logits is the per-sample
gradient. All functions are pure and jit/vmap-able (``apply_fn`` and the integer options are static).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax.explain.adversarial import pgd_attack

ApplyFn = Callable[..., jax.Array]

IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "trapezoid")


def target_logit(apply_fn: ApplyFn, params, x: jax.Array, target: jax.Array) -> jax.Array:
  """Logit of class ``target[i]`` for every sample i, shape (N,)."""
  logits = apply_fn(params, x)
  return jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]


def gradient(apply_fn: ApplyFn, params, x: jax.Array, target: jax.Array) -> jax.Array:
  """Saliency ∂f_t(x)/∂x (Simonyan et al., 2014)."""
  return jax.grad(lambda z: target_logit(apply_fn, params, z, target).sum())(x)


def input_x_gradient(apply_fn: ApplyFn, params, x: jax.Array, target: jax.Array) -> jax.Array:
  """x ⊙ ∂f_t(x)/∂x (Shrikumar et al., 2016)."""
  return x * gradient(apply_fn, params, x, target)


def _path_points(steps: int, method: str) -> tuple[jax.Array, jax.Array]:
  """Interpolation coefficients α_k and quadrature weights for ∫_0^1 g(α) dα."""
  if method not in IG_METHODS:
    raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
  if steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps}")
  k = jnp.arange(steps, dtype=jnp.float32)
  if method == "trapezoid":
    alphas = jnp.arange(steps + 1, dtype=jnp.float32) / steps
    weights = jnp.full(steps + 1, 1.0 / steps).at[0].mul(0.5).at[-1].mul(0.5)
    return alphas, weights
  offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
  return (k + offset) / steps, jnp.full(steps, 1.0 / steps)


def integrated_gradients(apply_fn: ApplyFn, params, x: jax.Array, target: jax.Array,
                         baseline: jax.Array | float = 0.0, *, steps: int = 32,
                         method: str = "riemann_middle") -> jax.Array:
  """Integrated gradients (Sundararajan et al., 2017) along the straight path from ``baseline`` to ``x``.

  IG(x) = (x − x') ⊙ ∫_0^1 ∇f_t(x' + α(x − x')) dα, approximated with ``steps`` intervals of ``method``
  (one of ``IG_METHODS``). Completeness: Σ IG(x) = f_t(x) − f_t(x') up to the quadrature error.

  The midpoint rule is the default: a bias-free ReLU net is positively homogeneous, so its gradient is
  constant along the ray from a zero baseline except at α = 0 itself, where the ReLU masks are all closed;
  rules that sample α = 0 (left Riemann, trapezoid) are biased there, the midpoint rule is exact.

  Args:
    baseline: x' — a scalar or an array broadcastable to ``x`` (e.g. a per-sample boundary point).
  """
  alphas, weights = _path_points(steps, method)
  baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  delta = x - baseline

  def accumulate(total, alpha_weight):
    alpha, weight = alpha_weight
    return total + weight * gradient(apply_fn, params, baseline + alpha * delta, target), None

  mean_grad, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), (alphas, weights))
  return delta * mean_grad


def boundary_search(apply_fn: ApplyFn, params, x: jax.Array, label: jax.Array,
                    epsilons: Sequence[float] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), *,
                    attack_steps: int = 20, stop_on_success: bool = True,
                    clip: tuple[float, float] | None = (0.0, 1.0)) -> tuple[jax.Array, jax.Array]:
  """Nearest decision-boundary point found by PGD-L2 over an increasing ε schedule.

  Runs untargeted L2 :func:`~bort_jax.explain.adversarial.pgd_attack` (``attack_steps`` steps, by default
  freezing a sample at its first successful step so it stays close to the boundary) for every ε and keeps,
  per sample, the adversarial of the smallest ε that changes the prediction away from ``label`` (Wang et al.,
  2022, "Robust models are more interpretable because attributions look normal", BIG). Samples with no
  success keep the largest-ε point.

  Returns:
    (x_boundary, found): boundary points shaped like ``x`` and a bool (N,) success mask.
  """
  radii = np.asarray(epsilons, np.float32)
  if radii.ndim != 1 or radii.size == 0 or np.any(radii <= 0):
    raise ValueError(f"epsilons must be a non-empty sequence of positive radii, got {epsilons}")
  epsilons = jnp.asarray(radii)
  attack = lambda eps: pgd_attack(apply_fn, params, x, label, eps, norm="l2", targeted=False,
                                  steps=attack_steps, clip=clip, stop_on_success=stop_on_success)
  results = jax.vmap(attack)(epsilons)                            # fields stacked over ε: (E, N, ...)
  candidates, success = results.x_adv, results.success
  first = jnp.where(success.any(0), jnp.argmax(success, axis=0), epsilons.size - 1)
  index = first.reshape((1, -1) + (1,) * (x.ndim - 1))
  x_boundary = jnp.take_along_axis(candidates, index, axis=0)[0]
  return x_boundary, success.any(0)


def boundary_saliency(apply_fn: ApplyFn, params, x: jax.Array, target: jax.Array, **search_kwargs
                      ) -> jax.Array:
  """BSM: gradient of f_t at the nearest boundary point x' of :func:`boundary_search` (Wang et al., 2022)."""
  x_boundary, _ = boundary_search(apply_fn, params, x, target, **search_kwargs)
  return gradient(apply_fn, params, x_boundary, target)


def boundary_integrated_gradients(apply_fn: ApplyFn, params, x: jax.Array, target: jax.Array, *,
                                  steps: int = 32, method: str = "riemann_middle", **search_kwargs
                                  ) -> jax.Array:
  """BIG: integrated gradients from the nearest boundary point x' to x (Wang et al., 2022).

  Σ BIG(x) = f_t(x) − f_t(x'); ``search_kwargs`` go to :func:`boundary_search`.
  """
  x_boundary, _ = boundary_search(apply_fn, params, x, target, **search_kwargs)
  return integrated_gradients(apply_fn, params, x, target, jax.lax.stop_gradient(x_boundary),
                              steps=steps, method=method)

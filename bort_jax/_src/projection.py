"""Projections that land kernels on the Bort constraint set after a step.

Put them last in a chain: they rewrite the updates so that ``params + updates`` is projected.

* :func:`project_row_norms` — boundedness: every output unit satisfies ``‖wᵢ‖ ≤ max_norm``.
* :func:`orthogonalize` — orthogonality: ``W ← √α · polar(W)``, the nearest (scaled) orthogonal matrix in
  Frobenius norm, with orthonormal rows for wide kernels and orthonormal columns for tall ones (the feasible
  side). ``method="svd"`` is exact (``U Vᵀ``); ``method="newton_schulz"`` uses only matmuls
  (``X ← 1.5 X − 0.5 X XᵀX`` from ``X₀ = W/‖W‖_F``), which suits accelerators and large kernels.

Reference: Higham, "Functions of Matrices", 2008, §8.3 (Newton–Schulz iteration for the polar factor).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from bort_jax._src import masking
from bort_jax._src import transform
from bort_jax._src import views as views_lib

METHODS = ("newton_schulz", "svd")


def polar_newton_schulz(m: jax.Array, steps: int = 20) -> jax.Array:
  """Orthogonal polar factor of ``m`` (``(..., n, k)``) by Newton–Schulz, computed on the smaller Gram."""
  x = m.astype(jnp.float32)
  x = x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
  tall = x.shape[-1] > x.shape[-2]

  def step(_, x):
    xt = jnp.swapaxes(x, -1, -2)
    return 1.5 * x - 0.5 * ((x @ xt) @ x if tall else x @ (xt @ x))

  return jax.lax.fori_loop(0, steps, step, x).astype(m.dtype)


def polar_svd(m: jax.Array) -> jax.Array:
  """Orthogonal polar factor ``U Vᵀ`` of ``m`` by a thin SVD."""
  u, _, vt = jnp.linalg.svd(m.astype(jnp.float32), full_matrices=False)
  return (u @ vt).astype(m.dtype)


def _projection(project_matrix, mask, layout, views) -> optax.GradientTransformation:
  views_lib.check_layout(layout)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("projections need params: call update(updates, state, params).")
    plan, treedef = transform.plan_kernels(params, mask, None, layout, views)
    param_leaves = treedef.flatten_up_to(params)
    update_leaves = treedef.flatten_up_to(updates)
    for item in plan:
      p, u = param_leaves[item.index], update_leaves[item.index]
      stepped = views_lib.to_matrix(p + u, item.view)
      landed = views_lib.from_matrix(project_matrix(stepped), item.view, p.shape)
      update_leaves[item.index] = (landed - p).astype(u.dtype)
    return jax.tree_util.tree_unflatten(treedef, update_leaves), state

  return optax.GradientTransformation(init_fn, update_fn)


def project_row_norms(
    max_norm: float = 1.0,
    *,
    mask: masking.Mask = None,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
) -> optax.GradientTransformation:
  """Rescales every output unit with ``‖wᵢ‖ > max_norm`` back to ``max_norm`` after the step."""
  if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or max_norm <= 0:
    raise ValueError(f"max_norm must be a positive number, got {max_norm!r}.")

  def project(m):
    norms = jnp.linalg.norm(m.astype(jnp.float32), axis=-2, keepdims=True)  # output units are m's columns
    return (m * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30))).astype(m.dtype)

  return _projection(project, mask, layout, views)


def orthogonalize(
    alpha: float = 1.0,
    *,
    method: str = "newton_schulz",
    steps: int = 20,
    mask: masking.Mask = None,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
) -> optax.GradientTransformation:
  """Replaces each kernel after the step by ``√α · polar(W)`` (``WWᵀ = αI``, or ``WᵀW = αI`` when tall).

  Args:
    alpha: α > 0, the squared row norm of the result.
    method: ``"newton_schulz"`` (matmuls only; ``steps`` iterations) or ``"svd"`` (exact; small kernels).
    steps: Newton–Schulz iterations; quadratic convergence once singular values are near 1, slower for
      ill-conditioned kernels.
    mask, layout, views: see :func:`bort_jax.add_bort_correction`.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
    raise ValueError(f"alpha must be a positive number, got {alpha!r}.")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}.")
  scale = alpha ** 0.5
  if method == "svd":
    return _projection(lambda m: scale * polar_svd(m), mask, layout, views)
  return _projection(lambda m: scale * polar_newton_schulz(m, steps), mask, layout, views)

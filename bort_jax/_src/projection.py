"""Projections that land kernels on the Bort constraint set after a step.

Put them last in a chain: they rewrite the updates so that ``params + updates`` is projected.

* :func:`project_row_norms` — boundedness: every output unit satisfies ``‖wᵢ‖ ≤ max_norm``.
* :func:`orthogonalize` — orthogonality: ``W ← √α · polar(W)``, the nearest (scaled) orthogonal matrix in
  Frobenius norm, with orthonormal rows for wide kernels and orthonormal columns for tall ones (the feasible
  side). ``method="svd"`` is exact (``U Vᵀ``); ``method="newton_schulz"`` uses only matmuls
  (``X ← 1.5 X − 0.5 X XᵀX`` from ``X₀ = W/‖W‖_F``), which suits accelerators and large kernels.

Reference: Higham, "Functions of Matrices", 2008, §8.3 (Newton–Schulz iteration for the polar factor).
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from bort_jax._src import kernel_matrix as km
from bort_jax._src import masking
from bort_jax._src import plan as plan_lib
from bort_jax._src import validation
from bort_jax._src import views as views_lib

METHODS = ("newton_schulz", "svd")


def newton_schulz(k: km.KernelMatrix, steps: int = 20, precision: km.Precision = "highest") -> jax.Array:
  """Polar factor of a :class:`KernelMatrix` by Newton–Schulz, float32, with ``k.x``'s axes and sharding.

  ``X ← X + ½ X (I − XᵀX)``: the residual form of ``1.5 X − 0.5 X XᵀX``, with the Gram at ``precision``,
  so that reduced-precision matmuls do not stop the iteration short of orthogonality. The Gram is taken on
  the side that contracts over sharded axes, else on the smaller side (both give the same iterate).
  """
  x = k.x.astype(jnp.float32)
  x = x / jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(k.num_batch, x.ndim)), keepdims=True))
  side = km.contracting_side(k)

  def step(_, x):
    current = k.with_x(x)
    residual = km.identity(current, side) - km.gram(current, side, precision)
    return x + 0.5 * km.times(current, residual, side)

  return jax.lax.fori_loop(0, steps, step, x)


def polar_newton_schulz(m: jax.Array, steps: int = 20, precision: km.Precision = "highest") -> jax.Array:
  """Orthogonal polar factor of ``m`` (``(..., n, k)``) by Newton–Schulz (see :func:`newton_schulz`)."""
  return newton_schulz(km.KernelMatrix.from_matrix(m), steps, precision).astype(m.dtype)


def polar_svd(m: jax.Array) -> jax.Array:
  """Orthogonal polar factor ``U Vᵀ`` of ``m`` by a thin SVD."""
  u, _, vt = jnp.linalg.svd(m.astype(jnp.float32), full_matrices=False)
  return (u @ vt).astype(m.dtype)


def _svd_of(k: km.KernelMatrix) -> jax.Array:
  """:func:`polar_svd` of a :class:`KernelMatrix`; a sharded kernel is gathered first (SVD needs it whole)."""
  x, spec = k.x, k.spec
  if spec is not None:
    x = jax.sharding.reshard(x, jax.sharding.PartitionSpec())
  batch = x.shape[:k.num_batch]
  polar = polar_svd(x.reshape(batch + (k.fan_in, k.out)).astype(jnp.float32)).reshape(x.shape)
  return polar if spec is None else jax.sharding.reshard(polar, jax.sharding.PartitionSpec(*spec))


def _projection(project, mask, layout, views) -> optax.GradientTransformation:
  views_lib.check_layout(layout)
  validation.check_views(views)
  validation.check_mask("mask", mask)

  def init_fn(params):
    plan_lib.leaf_infos(params, mask, None, layout, views)  # bad views/rules fail here, not at update
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    validation.require_params("the projection", params)
    plan, treedef = plan_lib.plan_kernels(params, mask, None, layout, views)
    param_leaves = treedef.flatten_up_to(params)
    update_leaves = treedef.flatten_up_to(updates)
    for item in plan:
      p, u = param_leaves[item.index], update_leaves[item.index]
      stepped = views_lib.to_kernel_matrix(p + u, item.view)
      landed = views_lib.from_kernel_matrix(project(stepped), item.view, p.shape)
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
  """Rescales every output unit with ``‖wᵢ‖ > max_norm`` back to ``max_norm`` after the step.

  Example:
    >>> import jax.numpy as jnp, optax, bort_jax as bj
    >>> params = {"fc": {"kernel": jnp.array([[3.0, 0.5], [4.0, 0.0]])}}  # unit norms 5 and 0.5
    >>> tx = bj.project_row_norms(1.0)
    >>> u, _ = tx.update({"fc": {"kernel": jnp.zeros((2, 2))}}, tx.init(params), params)
    >>> [[round(v, 4) for v in row] for row in optax.apply_updates(params, u)["fc"]["kernel"].tolist()]
    [[0.6, 0.5], [0.8, 0.0]]
  """
  validation.check_positive("max_norm", max_norm)

  def project(k):
    norms = jnp.sqrt(km.unit_sq_norms(k, "row", keepdims=True))  # output units: sums over fan-in
    return k.x.astype(jnp.float32) * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30))

  return _projection(project, mask, layout, views)


def orthogonalize(
    alpha: float = 1.0,
    *,
    method: str = "newton_schulz",
    steps: int = 20,
    precision: km.Precision = "highest",
    mask: masking.Mask = None,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
) -> optax.GradientTransformation:
  """Replaces each kernel after the step by ``√α · polar(W)`` (``WWᵀ = αI``, or ``WᵀW = αI`` when tall).

  Args:
    alpha: α > 0, the squared row norm of the result.
    method: ``"newton_schulz"`` (matmuls only; ``steps`` iterations; sharded kernels stay sharded) or
      ``"svd"`` (exact; small kernels; a sharded kernel is gathered for its SVD).
    steps: Newton–Schulz iterations; quadratic convergence once singular values are near 1, slower for
      ill-conditioned kernels.
    precision: matmul precision of the Newton–Schulz Gram (``"highest"`` by default).
    mask, layout, views: see :func:`bort_jax.add_bort_correction`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, bort_jax as bj
    >>> params = {"fc": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (8, 4))}}
    >>> tx = bj.orthogonalize(alpha=1.0, method="svd")
    >>> u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    >>> w = optax.apply_updates(params, u)["fc"]["kernel"]
    >>> bool(jnp.allclose(w.T @ w, jnp.eye(4), atol=1e-5))  # orthonormal output units
    True
  """
  validation.check_one_of("method", method, METHODS)
  validation.check_positive("alpha", alpha)
  validation.check_positive_int("steps", steps)
  km.check_precision(precision)
  scale = math.sqrt(alpha)
  if method == "svd":
    return _projection(lambda k: scale * _svd_of(k), mask, layout, views)
  return _projection(lambda k: scale * newton_schulz(k, steps, precision), mask, layout, views)

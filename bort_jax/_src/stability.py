"""``stable_gamma``: the largest γ at which the correction step η·γ·Δ does not diverge.

Derivation (l2 modes; the Flax view ``M`` of a kernel, α as in :mod:`correction`). With no task gradient the
optimizer runs gradient descent on ηγ·P, P = ¼‖MᵀM − αI‖² (l2-full). Linearised at M, every Hessian
eigenvalue λ of P gives a scalar recursion in h = ηγλ whose characteristic polynomial is

* plain steps (``bort_sgd`` without momentum; ``bort_adamw``, which moves the weights by −ηγΔ with no
  momentum on Δ): z − (1 − h), stable iff h < 2;
* heavy ball (``bort_sgd``, momentum μ): z² − (1 + μ − h) z + μ, stable iff h < 2(1 + μ);
* Nesterov (optax's ``trace(nesterov=True)``): z² − (1 + μ)(1 − h) z + μ(1 − h), stable iff
  h < 2(1 + μ)/(1 + 2μ).

The heavy-ball limit is not kept: on the cubic Δ the discrete heavy ball overshoots its starting point
(|σ| grows by up to 1.2× before it turns), and measured runs diverge from h ≈ 0.76·2(1 + μ) at μ = 0.9 and
0.56·2(1 + μ) at μ = 0.99. Momentum therefore never raises the gain: g = min(2, linear limit).

Hessian. With M = UΣVᵀ, H[E] = E(MᵀM − αI) + M(EᵀM + MᵀE); E = uᵢvᵢᵀ is an eigenvector with eigenvalue
3σᵢ² − α, and ⟨E, H[E]⟩ ≤ (σ₁² − α) + 2σ₁², so λ_max = 3σ_max² − α. The iterate moves, though:
Δ = UΣ(Σ² − αI)Vᵀ acts on each singular value alone, and σᵢ stays where ¼(σᵢ² − α)² is at most its start
(gradient descent decreases it), i.e. σᵢ² ≤ α + ρ with ρ = ‖MᵀM − αI‖₂ = maxᵢ |σᵢ² − α|. The curvature
used is therefore

  λ = 3(α + ρ) − α = 2α + 3ρ,

which is 3σ_max² − α when the large singular values dominate, 2α at the constraint, and 5α − 3σ_min² when a
small singular value overshoots √α under momentum. l2-row/l2-col: each unit w has penalty ¼(‖w‖² − α)²,
Hessian (‖w‖² − α)I + 2wwᵀ, so the same λ with ρ = maxᵢ |‖wᵢ‖² − α| (exact; no iteration). Adaptive α is
(mean unit norm)² at ``params``, held fixed. The l1 modes' Δ is a sign, not the gradient of a
twice-differentiable penalty: no curvature, no bound (``ValueError``).

ρ of l2-full comes from power iteration with matvecs v ↦ Mᵀ(Mv) − αv on the smaller side (the larger side's
extra zero eigenvalues belong to directions that Δ never moves), so a sharded kernel is never gathered.

Measured tightness (zero gradients; wide, square, tall and conv kernels, l2-full and l2-row, every optimizer form):
``benchmarks/results/gamma_stability.md``, written by ``python -m benchmarks.gamma_stability``. A scalar model of
the same iteration puts the threshold above γ* for every μ ≤ 0.99; heavy ball at μ = 0.999 can diverge slightly
below it.
Coupled weight decay λ_wd adds λ_wd to every curvature (negligible at usual values) and is left out.

Reference: Polyak, "Some methods of speeding up the convergence of iteration methods", 1964 (heavy ball);
Lessard, Recht & Packard, "Analysis and design of optimization algorithms via IQCs", 2016 (heavy ball can fail
on non-quadratic functions where its linearisation converges);
Zhang et al., "Bort", ICLR 2023 (the correction).
"""

import functools
from typing import Dict
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp

from bort_jax._src import correction
from bort_jax._src import kernel_matrix as km
from bort_jax._src import masking
from bort_jax._src import plan as plan_lib
from bort_jax._src import validation
from bort_jax._src import views as views_lib

OPTIMIZERS = ("sgd", "adamw")


class GammaBound(NamedTuple):
  """Result of :func:`stable_gamma`: ``gamma`` (the smallest over kernels), per-path bound and curvature λ.

  ``per_kernel[path]`` is already divided by the path's ``rules`` scale: it is a bound on the global γ.
  """

  gamma: float
  per_kernel: Dict[str, float]
  curvature: Dict[str, float]


def step_gain(optimizer: str = "sgd", momentum: float = 0.0, nesterov: bool = False) -> float:
  """The largest stable η·γ·λ: 2(1 + μ)/(1 + 2μ) with Nesterov momentum, 2 otherwise (see the module doc)."""
  if optimizer == "sgd" and nesterov:
    return 2.0 * (1.0 + momentum) / (1.0 + 2.0 * momentum)
  return 2.0


def _vector_sharding(k: km.KernelMatrix, num_axes: int):
  """Vectors over units are tiny: replicated, keeping the batch axes' sharding (Explicit meshes only)."""
  spec = k.spec
  if spec is None:
    return None
  return jax.sharding.PartitionSpec(*(spec[a] for a in k.batch_axes), *(None,) * num_axes)


def residual_norm(k: km.KernelMatrix, a: jax.Array, side: str, num_iters: int) -> jax.Array:
  """ρ = ‖G − αI‖₂ of the Gram of ``side``, shape ``(*batch)``, by power iteration with matvecs only.

  ‖Rv‖ of a unit vector v never exceeds ρ, so the estimate approaches ρ from below.
  """
  x = k.x.astype(jnp.float32)
  units, contracted = k.unit_axes(side), k.contracted_axes(side)
  nb = k.num_batch
  batch = (k.batch_axes, k.batch_axes)
  highest = jax.lax.Precision.HIGHEST
  vector_axes = tuple(range(nb, nb + len(units)))

  def apply(v):
    y = jax.lax.dot_general(x, v, ((units, vector_axes), batch), precision=highest,
                            out_sharding=_vector_sharding(k, len(contracted)))
    gv = jax.lax.dot_general(x, y, ((contracted, tuple(range(nb, nb + len(contracted)))), batch),
                             precision=highest, out_sharding=_vector_sharding(k, len(units)))
    return gv - km.expand(a, len(units)) * v

  def normalized(v):
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=vector_axes, keepdims=True))
    return v / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)

  shape = tuple(x.shape[i] for i in k.batch_axes + units)
  v = normalized(jax.random.normal(jax.random.key(0), shape, jnp.float32))
  v = jax.lax.fori_loop(0, num_iters, lambda _, v: normalized(apply(v)), v)
  return jnp.sqrt(jnp.sum(jnp.square(apply(v)), axis=vector_axes))


@functools.partial(jax.jit, static_argnames=("view", "mode", "adaptive", "num_iters"))
def _curvature(kernel, alpha, *, view, mode, adaptive, num_iters):
  """λ = 2α + 3ρ of one kernel, the largest over its stacked matrices."""
  k = views_lib.to_kernel_matrix(kernel, view)
  side = correction.side_for(mode, k.is_tall)
  a = correction.amplitude(k, adaptive or alpha, side)
  if correction.MODE_SPECS[mode].full:
    rho = residual_norm(k, a, side, num_iters)
  else:
    excess = km.unit_sq_norms(k, side) - km.expand(a, len(k.unit_axes(side)))
    rho = jnp.max(jnp.abs(excess), axis=tuple(range(k.num_batch, excess.ndim)))
  return jnp.max(2.0 * a + 3.0 * rho)


def stable_gamma(
    params,
    learning_rate: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    optimizer: str = "sgd",
    mode: str = "l2-full",
    alpha: correction.Amplitude = 1.0,
    mask: masking.Mask = None,
    rules: Optional[masking.Rules] = None,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
    num_iters: int = 50,
) -> GammaBound:
  """The largest γ for which the Bort step at ``params`` is linearly stable, per kernel and overall.

  .. math::
    \\gamma^* = \\frac{g}{\\eta\\, s_\\ell\\, \\lambda_\\ell}, \\quad
    \\lambda = 2\\alpha + 3\\|M^\\top M - \\alpha I\\|_2,
    \\quad g = \\frac{2(1+\\mu)}{1+2\\mu} \\text{ (Nesterov)}, \\ 2 \\text{ (otherwise)}

  (derivation and measured tightness in :mod:`bort_jax._src.stability`).

  Args:
    params: the parameters the run starts from (the bound moves with the weights).
    learning_rate: η > 0, the peak of the schedule.
    momentum, nesterov: ``bort_sgd``'s; ignored for ``optimizer="adamw"``.
    optimizer: ``"sgd"`` (:func:`bort_jax.bort_sgd`) or ``"adamw"`` (:func:`bort_jax.bort_adamw`).
    mode: an l2 mode (``"l2-full"``, ``"l2-row"``, ``"l2-col"``); l1 modes raise ``ValueError``.
    alpha, mask, rules, layout, views: as in :func:`bort_jax.add_bort_correction`; ``rules`` scales divide
      the bound of their kernels.
    num_iters: power iterations for ‖MᵀM − αI‖₂ (l2-full).

  Returns:
    A :class:`GammaBound`: ``gamma`` (the smallest bound, ``inf`` if every kernel is switched off),
    ``per_kernel`` and ``curvature`` (λ) by ``"module/kernel"`` path.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> bound = bj.stable_gamma({"fc": {"kernel": 2.0 * jnp.eye(4)}}, 0.1)  # ρ = 3, λ = 2 + 9
    >>> round(bound.gamma, 4)  # 2 / (0.1 · 11)
    1.8182

  References:
    Polyak, 1964 (heavy-ball stability); Zhang et al., "Bort", ICLR 2023.
  """
  validation.check_positive("learning_rate", learning_rate)
  validation.check_in_range("momentum", momentum, 0, 1)
  validation.check_bool("nesterov", nesterov)
  validation.check_one_of("optimizer", optimizer, OPTIMIZERS)
  validation.check_alpha(alpha)
  validation.check_positive_int("num_iters", num_iters)
  if correction.MODE_SPECS[correction.check_mode(mode)].norm != "l2":
    raise ValueError(f"stable_gamma covers the l2 modes only, got mode={mode!r}: an l1 correction is a sign, "
                     "with no curvature to bound.")
  gain = step_gain(optimizer, momentum, nesterov)
  plan, treedef = plan_lib.plan_kernels(params, mask, rules, layout, views)
  leaves = treedef.flatten_up_to(params)
  adaptive = alpha if isinstance(alpha, str) else None
  value = jnp.asarray(1.0 if adaptive else alpha, jnp.float32)
  curvature, per_kernel = {}, {}
  for item in plan:
    lam = float(_curvature(leaves[item.index], value, view=item.view, mode=mode, adaptive=adaptive,
                           num_iters=num_iters))
    curvature[item.path] = lam
    per_kernel[item.path] = gain / (float(learning_rate) * item.scale * lam) if lam > 0 else float("inf")
  return GammaBound(min(per_kernel.values(), default=float("inf")), per_kernel, curvature)


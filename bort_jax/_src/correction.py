"""The Bort correction Δ on one matrix view of a kernel.

Orientation: ``m`` is the Flax view of a kernel, shape ``(..., fan_in, out)``, i.e. the transpose of the
paper's ``W`` (``out × fan_in``). Mode names keep the paper's meaning: a *row* is an output unit (a column of
``m``), a *col* is a fan-in coordinate (a row of ``m``). Leading axes are batch axes (stacked layers).

Each mode is the gradient of a penalty, with the amplitude α held constant (``stop_gradient``):

=============  ===========================================  =====================================
mode           penalty                                      correction Δ_W
=============  ===========================================  =====================================
l2-full        ¼‖WWᵀ − αI‖²  (= ¼‖WᵀW − αI‖² + const)     WWᵀW − αW
l2-row         ¼ Σᵢ (‖wᵢ‖² − α)²  over output units         diag(WWᵀ)W − αW
l2-col         ¼ Σⱼ (‖w:ⱼ‖² − α)² over fan-in coordinates   W diag(WᵀW) − αW
l1-fullrow     ½‖WWᵀ − αI‖₁  (entrywise)                    sign(WWᵀ − αI) W
l1-fullcol     ½‖WᵀW − αI‖₁                                 W sign(WᵀW − αI)
l1-row         ½ Σᵢ |‖wᵢ‖² − α|                             sign(diag(WWᵀ) − α) W
l1-col         ½ Σⱼ |‖w:ⱼ‖² − α|                            W sign(diag(WᵀW) − α)
l1-full        l1-fullrow, or l1-fullcol for tall kernels   (feasible side, see below)
=============  ===========================================  =====================================

Feasible side: a tall kernel (out > fan_in) cannot have orthonormal rows (rank WWᵀ ≤ fan_in), so
``WWᵀ = αI`` has no solution; its columns can be orthonormal. ``l1-full`` therefore constrains the smaller
Gram. ``l2-full`` needs no choice: its two penalties differ by a constant, so the gradient is the same and its
minimiser is the feasible one; we only evaluate it on the cheaper side (``M(MᵀM) `` or ``(MMᵀ)M``).

Amplitude. ``alpha="adaptive"`` is (mean norm of the constrained units)²: output units (rows of W) for
row-side modes; fan-in coordinates for col-side modes and for full modes on tall kernels, because there the
row norms cannot all reach α and the amplitude would shrink towards zero step after step.
``alpha="ada"`` is the reference's amplitude exactly: (mean row norm)² of the torch-layout W (output units),
whatever the mode or shape, so that a ported reference run reproduces.

Precision: the Gram is formed at ``precision`` (``"highest"`` by default) and Δ as W·(Gram − αI); see
:mod:`bort_jax._src.kernel_matrix` for why and for sharded kernels.

Reference: Zhang et al., "Bort: Towards Explainable Neural Networks with Bounded Orthogonal Constraint",
ICLR 2023, Eq. (9)-(10).
"""

from typing import Literal
from typing import NamedTuple
from typing import Union

import jax
import jax.numpy as jnp

from bort_jax._src import kernel_matrix as km
from bort_jax._src import validation


class ModeSpec(NamedTuple):
  """What a mode constrains: ``side`` ("row", "col", or "feasible": the side a kernel's shape allows),
  ``norm`` ("l2" or "l1") and ``full`` (the whole Gram, or only its diagonal: the unit norms)."""

  side: str
  norm: str
  full: bool


MODE_SPECS = {
    "l2-full": ModeSpec("feasible", "l2", True),
    "l2-row": ModeSpec("row", "l2", False),
    "l2-col": ModeSpec("col", "l2", False),
    "l1-full": ModeSpec("feasible", "l1", True),
    "l1-fullrow": ModeSpec("row", "l1", True),
    "l1-fullcol": ModeSpec("col", "l1", True),
    "l1-row": ModeSpec("row", "l1", False),
    "l1-col": ModeSpec("col", "l1", False),
}
MODES = tuple(MODE_SPECS)
Mode = Literal["l2-full", "l2-row", "l2-col", "l1-full", "l1-fullrow", "l1-fullcol", "l1-row", "l1-col"]
REFERENCE_ADAPTIVE = "ada"

Amplitude = Union[float, jax.Array, str]


def check_mode(mode: str) -> str:
  return validation.check_one_of("mode", mode, MODES)


check_alpha = validation.check_alpha


def side_for(mode: str, tall: bool) -> str:
  """``"row"`` (output units, Gram WWᵀ) or ``"col"`` (fan-in, Gram WᵀW) that ``mode`` constrains on a kernel
  that is ``tall`` (out > fan_in) or not."""
  side = MODE_SPECS[check_mode(mode)].side
  if side == "feasible":
    return "col" if tall else "row"
  return side


def amplitude(k: km.KernelMatrix, alpha: Amplitude, side: str) -> jax.Array:
  """α per matrix, float32 of shape ``(*batch)``; adaptive α is (mean unit norm)² of ``side``."""
  batch_shape = tuple(k.x.shape[a] for a in k.batch_axes)
  if isinstance(alpha, str):
    if alpha == REFERENCE_ADAPTIVE:
      side = "row"
    units = tuple(range(k.num_batch, k.num_batch + len(k.unit_axes(side))))
    norms = jnp.sqrt(km.unit_sq_norms(k, side))
    return jax.lax.stop_gradient(jnp.square(jnp.mean(norms, axis=units)))
  return jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), batch_shape)


def residual(k: km.KernelMatrix, a: jax.Array, side: str, precision: km.Precision = "highest") -> jax.Array:
  """Gram − αI of ``side``, with the Gram at ``precision``: shape ``(*batch, *units, *units)``."""
  units = len(k.unit_axes(side))
  return km.gram(k, side, precision) - km.expand(a, 2 * units) * km.identity(k, side)


def _norm_excess(k: km.KernelMatrix, a: jax.Array, side: str) -> jax.Array:
  """‖unit‖² − α for each unit of ``side``, broadcastable against ``k.x``."""
  return km.unit_sq_norms(k, side, keepdims=True) - km.expand(a, k.x.ndim - k.num_batch)


def correction_of(k: km.KernelMatrix, alpha: Amplitude, mode: str, precision: km.Precision = "highest") -> jax.Array:
  """Δ of a :class:`~kernel_matrix.KernelMatrix`, float32, with ``k.x``'s axes (and sharding)."""
  spec = MODE_SPECS[check_mode(mode)]
  side = side_for(mode, k.is_tall)
  a = amplitude(k, alpha, side)
  if not spec.full:
    excess = _norm_excess(k, a, side)
    return (excess if spec.norm == "l2" else jnp.sign(excess)) * k.x.astype(jnp.float32)
  # l2-full is the same Δ from either Gram; use the one that avoids gathering a sharded kernel.
  gram_side = km.contracting_side(k) if spec.norm == "l2" else side
  k = km.gather_units(k, gram_side)  # one all-gather (if any) for both products
  r = residual(k, a, gram_side, precision)
  return km.times(k, r if spec.norm == "l2" else jnp.sign(r), gram_side)


def bort_correction(m: jax.Array, alpha: Amplitude = 1.0, mode: str = "l2-full",
                    precision: km.Precision = "highest") -> jax.Array:
  """Bort correction Δ of a matrix view ``m`` of shape ``(..., fan_in, out)``.

  Computed in float32 whatever the input dtype; returned in ``m.dtype``.

  Args:
    m: Flax-oriented matrix view (``Wᵀ``), with optional leading batch axes.
    alpha: amplitude α > 0, ``"adaptive"`` or ``"ada"`` (see the module docstring).
    mode: one of :data:`MODES`.
    precision: matmul precision of the Gram: ``"highest"`` (default; exact near the constraint on
      TPU/GPU), ``"high"`` or ``"default"``.

  Returns:
    Δ with the shape and dtype of ``m``: the gradient of the mode's penalty with respect to ``m``.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> bj.bort_correction(jnp.eye(3) * 2.0, alpha=1.0).diagonal()  # (4 - 1) * 2 = 6 per unit
    Array([6., 6., 6.], dtype=float32)
  """
  check_alpha(alpha)
  km.check_precision(precision)
  if m.ndim < 2:
    raise ValueError(f"m must have at least 2 dimensions (fan_in, out), got shape {m.shape}.")
  return correction_of(km.KernelMatrix.from_matrix(m), alpha, mode, precision).astype(m.dtype)


def bort_penalty(m: jax.Array, alpha: Amplitude = 1.0, mode: str = "l2-full") -> jax.Array:
  """The penalty whose gradient is :func:`bort_correction` (α held constant); summed over batch axes."""
  check_alpha(alpha)
  spec = MODE_SPECS[check_mode(mode)]
  k = km.KernelMatrix.from_matrix(m)
  side = side_for(mode, k.is_tall)
  a = amplitude(k, alpha, side)
  terms = _norm_excess(k, a, side) if not spec.full else residual(k, a, side)
  return jnp.sum(0.25 * jnp.square(terms) if spec.norm == "l2" else 0.5 * jnp.abs(terms))

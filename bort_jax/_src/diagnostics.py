"""Orthogonality diagnostics per constrained layer, cheap enough to log every N steps.

For each kernel, with G the Gram of the feasible side (WWᵀ, or WᵀW when the kernel is tall) and α the
reference amplitude (mean of diag G unless given):

* ``offdiag`` = RMS of the off-diagonal entries of G/α (0 for orthogonal units),
* ``diag``    = RMS of diag(G)/α − 1 (0 when every unit has squared norm α),
* ``norm_spread`` = std/mean of the unit norms (boundedness).
"""

from typing import Dict
from typing import NamedTuple
from typing import Optional
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import kernel_matrix as km
from bort_jax._src import masking
from bort_jax._src import plan as plan_lib
from bort_jax._src import validation
from bort_jax._src import views as views_lib

SIDES = ("auto", "row", "col")


class GapStats(NamedTuple):
  """Orthogonality gap of one kernel (arrays with the kernel's batch shape; scalars for plain kernels)."""

  offdiag: jax.Array
  diag: jax.Array
  norm_spread: jax.Array


def gap_of(k: km.KernelMatrix, alpha: Union[float, str] = "adaptive", side: str = "auto",
           precision: km.Precision = "highest") -> GapStats:
  """:class:`GapStats` of a :class:`KernelMatrix`; the Gram at ``precision`` (a gap of 1e-5 needs HIGHEST)."""
  validation.check_one_of("side", side, SIDES)
  validation.check_alpha(alpha)
  if side == "auto":
    side = "col" if k.is_tall else "row"
  unit_axes = tuple(range(k.num_batch, k.num_batch + len(k.unit_axes(side))))
  diagonal = km.unit_sq_norms(k, side)  # exact: no matmul
  if isinstance(alpha, str):
    a = jnp.mean(diagonal, axis=unit_axes)
  else:
    a = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), diagonal.shape[:k.num_batch])
  a = jnp.maximum(a, jnp.finfo(jnp.float32).tiny)
  units = diagonal.size // max(a.size, 1)
  off = km.gram(k, side, precision) * (1.0 - km.identity(k, side)) / km.expand(a, 2 * len(unit_axes))
  gram_axes = tuple(range(k.num_batch, k.num_batch + 2 * len(unit_axes)))
  offdiag = jnp.sqrt(jnp.sum(jnp.square(off), axis=gram_axes) / max(units * (units - 1), 1))
  diag = jnp.sqrt(jnp.mean(jnp.square(diagonal / km.expand(a, len(unit_axes)) - 1.0), axis=unit_axes))
  norms = jnp.sqrt(diagonal)
  mean_norm = jnp.maximum(jnp.mean(norms, axis=unit_axes), jnp.finfo(jnp.float32).tiny)
  norm_spread = jnp.std(norms, axis=unit_axes) / mean_norm
  return GapStats(offdiag, diag, norm_spread)


def matrix_gap(m: jax.Array, alpha: Union[float, str] = "adaptive", side: str = "auto",
               precision: km.Precision = "highest") -> GapStats:
  """:class:`GapStats` of a matrix view ``m`` (``(..., fan_in, out)``)."""
  return gap_of(km.KernelMatrix.from_matrix(m), alpha, side, precision)


def orthogonality_gap(
    params,
    *,
    alpha: Union[float, str] = "adaptive",
    side: str = "auto",
    precision: km.Precision = "highest",
    mask: masking.Mask = None,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
) -> Dict[str, GapStats]:
  """``{"module/kernel": GapStats}`` for every constrained kernel of ``params``; jit-able, sharding-aware.

  Measure it on the trained weights before any BatchNorm folding: folding rescales units.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> gaps = bj.orthogonality_gap({"fc": {"kernel": jnp.eye(3)}})
    >>> float(gaps["fc/kernel"].offdiag), float(gaps["fc/kernel"].diag)
    (0.0, 0.0)
  """
  km.check_precision(precision)
  plan, treedef = plan_lib.plan_kernels(params, mask, None, layout, views)
  leaves = treedef.flatten_up_to(params)
  return {item.path: gap_of(views_lib.to_kernel_matrix(leaves[item.index], item.view), alpha, side, precision)
          for item in plan}
def gap_summary(gaps: Dict[str, GapStats]) -> str:
  """One line: mean and worst layer of each statistic (fetches the values to the host)."""
  if not gaps:
    return "orthogonality gap: no constrained layers"
  host = {name: GapStats(*(float(np.mean(np.asarray(v))) for v in stats)) for name, stats in gaps.items()}
  parts = []
  for field in GapStats._fields:
    values = {name: getattr(stats, field) for name, stats in host.items()}
    worst = max(values, key=values.get)
    parts.append(f"{field} mean {np.mean(list(values.values())):.4f} max {values[worst]:.4f} ({worst})")
  return f"orthogonality gap over {len(host)} layers: " + " | ".join(parts)

"""Orthogonality diagnostics per constrained layer, cheap enough to log every N steps.

For each kernel, with G the Gram of the feasible side (WWᵀ, or WᵀW when the kernel is tall) and α the
reference amplitude (mean of diag G unless given):

* ``offdiag`` = RMS of the off-diagonal entries of G/α (0 for orthogonal units),
* ``diag``    = RMS of diag(G)/α − 1 (0 when every unit has squared norm α),
* ``norm_spread`` = std/mean of the unit norms (boundedness).
"""

from typing import Dict, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import correction
from bort_jax._src import masking
from bort_jax._src import transform
from bort_jax._src import views as views_lib

SIDES = ("auto", "row", "col")


class GapStats(NamedTuple):
  """Orthogonality gap of one kernel (arrays with the kernel's batch shape; scalars for plain kernels)."""

  offdiag: jax.Array
  diag: jax.Array
  norm_spread: jax.Array


def matrix_gap(m: jax.Array, alpha: Union[float, str] = "adaptive", side: str = "auto") -> GapStats:
  """:class:`GapStats` of a matrix view ``m`` (``(..., fan_in, out)``)."""
  if side not in SIDES:
    raise ValueError(f"side must be one of {SIDES}, got {side!r}.")
  x = m.astype(jnp.float32)
  if side == "auto":
    side = "col" if correction.is_tall(x) else "row"
  gram = correction.gram(x, side)
  units = gram.shape[-1]
  diagonal = jnp.diagonal(gram, axis1=-2, axis2=-1)
  correction.check_alpha(alpha)
  if isinstance(alpha, str):
    a = jnp.mean(diagonal, axis=-1)
  else:
    a = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), diagonal.shape[:-1])
  a = jnp.maximum(a, jnp.finfo(jnp.float32).tiny)
  normalized = gram / a[..., None, None]
  off = normalized - normalized * jnp.eye(units, dtype=normalized.dtype)
  offdiag = jnp.sqrt(jnp.sum(jnp.square(off), axis=(-2, -1)) / max(units * (units - 1), 1))
  diag = jnp.sqrt(jnp.mean(jnp.square(diagonal / a[..., None] - 1.0), axis=-1))
  norms = jnp.sqrt(diagonal)
  norm_spread = jnp.std(norms, axis=-1) / jnp.maximum(jnp.mean(norms, axis=-1), jnp.finfo(jnp.float32).tiny)
  return GapStats(offdiag, diag, norm_spread)


def orthogonality_gap(
    params,
    *,
    alpha: Union[float, str] = "adaptive",
    side: str = "auto",
    mask: masking.Mask = None,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
) -> Dict[str, GapStats]:
  """``{"module/kernel": GapStats}`` for every constrained kernel of ``params``; jit-able.

  Measure it on the trained weights before any BatchNorm folding: folding rescales units.
  """
  views_lib.check_layout(layout)
  plan, treedef = transform.plan_kernels(params, mask, None, layout, views)
  leaves = treedef.flatten_up_to(params)
  return {item.path: matrix_gap(views_lib.to_matrix(leaves[item.index], item.view), alpha, side) for item in plan}


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

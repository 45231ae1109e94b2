"""Which leaves Bort constrains, through which matrix view and with what γ scale — and :func:`describe`.

The plan is made at trace time from the params tree alone (paths, shapes and, when present, the logical axis
names of flax partitioning metadata: Linen ``nn.Partitioned`` boxes, NNX variables' ``out_sharding``). It is
shared by the correction, the projections and the diagnostics, so all three see the same kernels the same way.

Nothing is silent: a ``rules`` or ``views`` regex that matches no kernel raises ``ValueError``; a tree in which
nothing is a kernel raises ``ValueError``; a view that is a guess (an N-D kernel of unknown kind) warns with
:class:`ViewGuessWarning`, naming the path and how to declare it.
"""

import re
from typing import Any
from typing import Dict
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Tuple
import warnings

import jax

from bort_jax._src import correction
from bort_jax._src import masking
from bort_jax._src import validation
from bort_jax._src import view_inference
from bort_jax._src import views as views_lib


class ViewGuessWarning(UserWarning):
  """A kernel's matrix view was guessed; declare it with ``views=`` to silence this."""


class LeafInfo(NamedTuple):
  """One leaf of a params tree as Bort sees it (a row of :func:`describe`)."""

  index: int
  path: str
  shape: Tuple[int, ...]
  view: Optional[views_lib.KernelView]  # None: not constrained
  scale: float
  status: str  # "constrained", or why not
  guessed: str  # the reason, when the view is a guess; "" otherwise
  source: str  # where the view came from: a views= rule, axis names, the layer kind, or a guess


class KernelPlan(NamedTuple):
  """A constrained leaf: its index in the flat params, path, view and per-layer γ scale."""

  index: int
  path: str
  view: views_lib.KernelView
  scale: float


def is_box(x: Any) -> bool:
  """Linen metadata boxes (``nn.Partitioned``) and NNX variables carry axis names."""
  linen_box = hasattr(x, "names") and hasattr(x, "unbox")
  return linen_box or (hasattr(type(x), "get_metadata") and hasattr(type(x), "value"))


def _box_axis_names(box: Any) -> Optional[Tuple[Optional[str], ...]]:
  names = getattr(box, "names", None)
  if names is None and hasattr(box, "get_metadata"):
    metadata = box.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):  # flax renamed it across versions
      names = metadata.get(key)
      if names is not None:
        break
  names = getattr(names, "spec", names)  # a NamedSharding
  if isinstance(names, jax.sharding.PartitionSpec):  # no longer a tuple in current jax
    names = tuple(names)
  if not isinstance(names, (tuple, list)):
    return None
  return tuple(n if isinstance(n, str) else None for n in names)


def axis_names_by_path(params: Any) -> Dict[str, Tuple[Optional[str], ...]]:
  """``{"module/kernel": logical axis names}`` for the leaves of ``params`` that carry them."""
  boxes = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_box)[0]
  found = {}
  for path, box in boxes:
    if is_box(box):
      names = _box_axis_names(box)
      if names is not None:
        found["/".join(views_lib.path_names(path))] = names
  return found


def _first_match(path: str, rules: Sequence[Tuple[str, Any]]) -> Optional[int]:
  for i, (pattern, _) in enumerate(rules or ()):
    if re.fullmatch(pattern, path):
      return i
  return None


def _unmatched(kind: str, rules, used, kernel_paths) -> None:
  missing = [rules[i][0] for i in range(len(rules or ())) if i not in used]
  if missing:
    sample = ", ".join(kernel_paths[:6]) + (", ..." if len(kernel_paths) > 6 else "")
    raise ValueError(f"{kind} regex {missing[0]!r} matches no kernel (re.fullmatch on paths such as "
                     f"{sample or 'none'}); fix or remove it.")


def leaf_infos(params, mask=None, rules=None, layout="flax", views=None) -> Tuple[list, Any]:
  """A :class:`LeafInfo` for every leaf of ``params`` (flattened like ``jax.tree_util.tree_flatten``)."""
  views_lib.check_layout(layout)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  mask_tree = masking.resolve_mask(mask, params, layout)
  validation.check_trees(mask_tree, params, name="mask", check_shapes=False)
  mask_leaves = treedef.flatten_up_to(mask_tree)
  names_by_path = axis_names_by_path(params)
  infos, used_rules, used_views, kernel_paths = [], set(), set(), []
  for index, ((path, leaf), selected) in enumerate(zip(leaves_with_path, mask_leaves)):
    names = views_lib.path_names(path)
    path_string = "/".join(names)
    shape = tuple(getattr(leaf, "shape", ()))
    if not selected:
      status = "not a kernel" if mask is None else "masked out"
      infos.append(LeafInfo(index, path_string, shape, None, 0.0, status, "", ""))
      continue
    kernel_paths.append(path_string)
    rule = _first_match(path_string, rules)
    scale = 1.0 if rule is None else float(rules[rule][1])
    used_rules.update(() if rule is None else (rule,))
    view_rule = _first_match(path_string, views)
    used_views.update(() if view_rule is None else (view_rule,))
    declared = None if view_rule is None else views[view_rule][1]
    if view_rule is not None and declared is None:
      status = f"left out by views rule {views[view_rule][0]!r}"
      infos.append(LeafInfo(index, path_string, shape, None, scale, status, "", ""))
      continue
    if isinstance(declared, views_lib.KernelView):
      if declared.kernel_ndim != len(shape):
        raise ValueError(f"views rule {views[view_rule][0]!r} gives {declared} for {path_string} which has "
                         f"{len(shape)} axes {shape}.")
      view, guessed, source = declared, "", f"views rule {views[view_rule][0]!r}"
    else:
      guess = view_inference.infer_view(names, len(shape), layout, declared, names_by_path.get(path_string))
      view, guessed, source = guess.view, ("" if guess.certain else guess.reason), guess.source
    view.split_shape(shape)
    status = "constrained" if scale > 0 else "off (rules scale 0)"
    infos.append(LeafInfo(index, path_string, shape, view, scale, status, guessed, source))
  _unmatched("rules", rules, used_rules, kernel_paths)
  _unmatched("views", views, used_views, kernel_paths)
  if not kernel_paths:
    hint = " (leaves named 'weight' suggest layout='torch')" if layout == "flax" and any(
        i.path.rsplit("/", 1)[-1] == "weight" for i in infos) else ""
    raise ValueError(f"no kernel to constrain among {len(infos)} leaves with layout={layout!r}{hint}; "
                     "pass mask= to choose leaves.")
  return infos, treedef


def plan_kernels(params, mask=None, rules=None, layout="flax", views=None) -> Tuple[list, Any]:
  """The :class:`KernelPlan` of each constrained leaf; warns once per guessed view."""
  infos, treedef = leaf_infos(params, mask, rules, layout, views)
  for info in infos:
    if info.view is not None and info.scale > 0 and info.guessed:
      warnings.warn(
          f"bort_jax: the matrix view of {info.path} {info.shape} is a guess ({info.guessed}): {info.view}. "
          "Read the layer kinds from the model with views=bj.nnx_views(model) or bj.linen_views(module, *inputs), "
          f"or declare it: views=[({info.path!r}, KernelView(...))], or views=[(regex, stacked axes)] with the "
          "number of leading stacked-layer axes or their positions, e.g. (1,).", ViewGuessWarning, stacklevel=3)
  plan = [KernelPlan(i.index, i.path, i.view, i.scale) for i in infos if i.view is not None and i.scale > 0]
  return plan, treedef


HEADER = ("path", "shape", "matrix (batch × fan_in × out)", "side", "γ scale", "status", "view from")
STABLE_GAMMA_COLUMN = "stable γ ≤"


class Description(tuple):
  """Rows of :func:`describe`; ``str()`` is a fixed-width table."""

  def __str__(self) -> str:
    header = HEADER + ((STABLE_GAMMA_COLUMN,) if self and len(self[0]) > len(HEADER) else ())
    rows = [header] + [tuple(str(c) for c in row) for row in self]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _side(view: views_lib.KernelView, shape, mode: str) -> str:
  *_, fan_in, out = view.matrix_shape(shape)
  tall = out > fan_in
  side = correction.side_for(mode, tall)
  if correction.MODE_SPECS[mode].side == "feasible":
    return side + (" (tall)" if tall else "")
  return side + (" (tall: rows cannot be orthonormal; l1-full/l2-full use the feasible side)"
                 if side == "row" and tall else "")


def describe(params, *, mode: str = "l2-full", mask=None, rules=None, layout: str = "flax", views=None,
             learning_rate: Optional[float] = None, momentum: float = 0.0, nesterov: bool = False,
             optimizer: str = "sgd", alpha=1.0) -> Description:
  """One row per leaf: path, shape, matrix view, constrained side, γ scale, why a leaf is left out, and where its
  view came from (a ``views=`` rule, axis names, the layer kind, or a guess).

  Takes the same selection arguments as :func:`bort_jax.add_bort_correction`. A guessed view says so in the
  status column. Given ``learning_rate`` (and ``momentum``, ``nesterov``, ``optimizer``, ``alpha`` as in
  :func:`bort_jax.stable_gamma`), a last column gives each kernel's largest stable γ (l2 modes).
  ``print(bort_jax.describe(params))`` shows the table.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> rows = bj.describe({"fc": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}})
    >>> [(r[0], r[2], r[5]) for r in rows]
    [('fc/bias', '', 'not a kernel'), ('fc/kernel', '4 × 2', 'constrained')]
  """
  correction.check_mode(mode)
  infos, _ = leaf_infos(params, mask, rules, layout, views)
  bounds = None
  if learning_rate is not None:
    if correction.MODE_SPECS[mode].norm == "l2":
      from bort_jax._src import stability  # imported here: stability builds on this module's plan

      bounds = stability.stable_gamma(params, learning_rate, momentum=momentum, nesterov=nesterov,
                                      optimizer=optimizer, mode=mode, alpha=alpha, mask=mask, rules=rules,
                                      layout=layout, views=views).per_kernel
    else:
      bounds = {}  # an l1 correction is a sign: no curvature to bound
  rows = []
  for info in infos:
    if info.view is None:
      row = (info.path, info.shape, "", "", "", info.status, "")
    else:
      matrix = " × ".join(str(d) for d in info.view.matrix_shape(info.shape))
      status = info.status + (f"; view guessed: {info.guessed}" if info.guessed else "")
      row = (info.path, info.shape, matrix, _side(info.view, info.shape, mode), info.scale, status, info.source)
    if bounds is not None:
      bound = bounds.get(info.path)
      row += ("" if info.view is None else "n/a (l1 mode)" if bound is None else f"{bound:.4g}",)
    rows.append(row)
  return Description(rows)

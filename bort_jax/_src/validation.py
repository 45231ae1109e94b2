"""Argument checks shared by the bort_jax factories.

Each check raises ``ValueError("<name> must be <accepted values>, got <repr>.")``. Numbers may be Python,
NumPy or JAX scalars. A traced number (under ``jax.jit``, or a hyperparameter that ``optax.inject_hyperparams``
turned into an array) is known only at run time: its type and shape are checked, its value is not.

Every factory module may import this one; it imports only :mod:`views` (which must not import it back).
"""

import re
from typing import Any
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import views as views_lib

ADAPTIVE = ("adaptive", "ada")


def is_number(value: Any) -> bool:
  """A real scalar: Python, NumPy or JAX, possibly traced. Booleans are not numbers."""
  if isinstance(value, bool):
    return False
  if isinstance(value, (int, float)):
    return True
  dtype = getattr(value, "dtype", None)
  return (dtype is not None and getattr(value, "shape", None) == ()
          and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)))


def concrete(value: Any) -> Optional[float]:
  """The value of a number from :func:`is_number`, or None while it is traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  return float(value)


def _check_number(name: str, value: Any, accepted: str, ok) -> Any:
  if not is_number(value):
    raise ValueError(f"{name} must be {accepted}, got {value!r}.")
  v = concrete(value)
  if v is not None and not ok(v):  # written so that NaN fails
    raise ValueError(f"{name} must be {accepted}, got {value!r}.")
  return value


def check_nonnegative(name: str, value: Any, allow_schedule: bool = False) -> Any:
  """``value >= 0``; with ``allow_schedule`` a callable (an optax schedule) is accepted unchecked."""
  if allow_schedule and callable(value):
    return value
  accepted = "a non-negative number or an optax schedule" if allow_schedule else "a non-negative number"
  return _check_number(name, value, accepted, lambda v: v >= 0)


def check_positive(name: str, value: Any) -> Any:
  """``value > 0``."""
  return _check_number(name, value, "a positive number", lambda v: v > 0)


def check_in_range(name: str, value: Any, low: float, high: float, include_high: bool = False) -> Any:
  """``low <= value < high``, or ``<= high`` with ``include_high``."""
  accepted = f"a number in [{low}, {high}{']' if include_high else ')'}"
  return _check_number(name, value, accepted, lambda v: low <= v and (v <= high if include_high else v < high))


def check_positive_int(name: str, value: Any) -> Any:
  """A positive integer: Python int or integer-dtype scalar (``every_k``, iteration counts)."""
  if is_number(value) and jnp.issubdtype(jnp.result_type(value), jnp.integer):
    return _check_number(name, value, "a positive integer", lambda v: v >= 1)
  raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_alpha(alpha: Any) -> Any:
  """A fixed amplitude (positive number) or an adaptive one (``"adaptive"`` or ``"ada"``)."""
  accepted = f"a positive number or one of {ADAPTIVE}"
  if isinstance(alpha, str):
    if alpha not in ADAPTIVE:
      raise ValueError(f"alpha must be {accepted}, got {alpha!r}.")
    return alpha
  return _check_number("alpha", alpha, accepted, lambda v: v > 0)


def check_one_of(name: str, value: Any, choices: Sequence[str]) -> str:
  """One of the strings ``choices`` (``mode``, ``method``, ``side``, ...)."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
  return value


def check_bool(name: str, value: Any) -> bool:
  """A Python or NumPy bool. Not a number: ``inject_hyperparams`` would trace it, and flags steer Python code."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return value


def check_mask(name: str, mask: Any) -> Any:
  """None, a callable, or a pytree (checked against params at update time by :func:`check_trees`).

  A single leaf is refused: it is what ``optax.inject_hyperparams`` passes when it takes a callable mask for
  a schedule and calls it on the step count.
  """
  if mask is None or callable(mask) or not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(mask)):
    return mask
  raise ValueError(
      f"{name} must be None, a callable, or a pytree of booleans with the structure of params, got {mask!r}. "
      f"Under optax.inject_hyperparams a callable {name} is taken for a schedule: list it in static_args, "
      f"e.g. optax.inject_hyperparams(bort_jax.bort_sgd, static_args=({name!r},)).")


def _check_pairs(name: str, pairs: Any, accepted: str, value_ok) -> Any:
  """None or a list/tuple of ``(regex, value)`` pairs whose regexes compile and whose values pass ``value_ok``."""
  if pairs is None:
    return pairs
  message = f"{name} must be a sequence of {accepted} pairs"
  if not isinstance(pairs, (list, tuple)):
    raise ValueError(f"{message}, got {pairs!r}.")
  for pair in pairs:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str) or not value_ok(pair[1]):
      raise ValueError(f"{message}, got {pair!r}.")
    try:
      re.compile(pair[0])
    except re.error as e:
      raise ValueError(f"{message} with valid regexes, got {pair!r} ({e}).") from e
  return pairs


def check_rules(rules: Any) -> Any:
  """Returns ``rules`` if it is None or a sequence of ``(regex, scale >= 0)`` pairs; ValueError otherwise."""
  # Scales are read with float() while tracing, so they must be concrete.
  def scale_ok(scale):
    value = concrete(scale) if is_number(scale) else None
    return value is not None and value >= 0

  return _check_pairs("rules", rules, "(regex, non-negative scale)", scale_ok)


def check_views(views: Any) -> Any:
  """Returns ``views`` if it is None or a sequence of ``(regex, KernelView | None | int >= 0 | tuple of ints)``
  pairs (an int: the number of leading stacked axes; a tuple: their positions)."""
  def is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0

  def view_ok(view):
    if view is None or isinstance(view, views_lib.KernelView) or is_count(view):
      return True
    return isinstance(view, tuple) and len(view) > 0 and all(is_count(a) for a in view)

  return _check_pairs("views", views, "(regex, KernelView | None | int >= 0 | tuple of stacked axis positions)",
                      view_ok)


def require_params(transform: str, params: Any, call: str = "update(updates, state, params)") -> None:
  """The one error for a transform whose ``update`` was called without ``params`` (Δ depends on them)."""
  if params is None:
    raise ValueError(f"{transform} needs params: call {call}.")


def check_trees(tree: Any, params: Any, name: str = "updates", check_shapes: bool = True) -> None:
  """Raises ValueError if ``tree`` and ``params`` differ in structure or, with ``check_shapes``, leaf shapes.

  The message names the first path where they differ, with what each tree has there.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  param_leaves, param_treedef = jax.tree_util.tree_flatten(params)
  if treedef != param_treedef:
    raise ValueError(_structure_difference(tree, params, name))
  if not check_shapes:
    return
  for index, (leaf, param) in enumerate(zip(leaves, param_leaves)):
    if jnp.shape(leaf) != jnp.shape(param):
      path = views_lib.path_str(jax.tree_util.tree_flatten_with_path(params)[0][index][0])
      raise ValueError(f"{name} and params must have the same shapes; at {path!r}: {name} has shape "
                       f"{jnp.shape(leaf)}, params has shape {jnp.shape(param)}.")


def _structure_difference(tree: Any, params: Any, name: str) -> str:
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  param_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  prefix = f"{name} and params must have the same tree structure"
  for path, param_path in zip(paths, param_paths):
    if path != param_path:
      return (f"{prefix}; they first differ at {name} leaf {views_lib.path_str(path)!r} where params has "
              f"{views_lib.path_str(param_path)!r}.")
  if len(paths) != len(param_paths):
    owner, extra = (name, paths) if len(paths) > len(param_paths) else ("params", param_paths)
    return (f"{prefix}; {owner} has the extra leaf {views_lib.path_str(extra[min(len(paths), len(param_paths))])!r} "
            f"({name}: {len(paths)} leaves, params: {len(param_paths)}).")
  # Same leaf paths, different node types (e.g. dict vs FrozenDict, list vs tuple).
  return (f"{prefix}; {name}: {jax.tree_util.tree_structure(tree)}, "
          f"params: {jax.tree_util.tree_structure(params)}.")

"""Which leaves Bort constrains, and with what per-layer weight.

Only convolution, dense and attention kernels are constrained; never biases, normalisation scales or
embeddings. Selection is by path and shape, so it works on Linen ``params`` dicts and on NNX ``State``.
Per-layer weights follow big_vision's convention: an ordered list of ``(regex, scale)`` rules matched with
``re.fullmatch`` against ``"module/submodule/kernel"`` paths; the first match wins.
"""

import re
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax

from bort_jax._src import views

# Module names that hold 2-D embedding tables in PyTorch-layout trees (Flax calls the leaf `embedding`).
_TORCH_EMBEDDING = re.compile(r"(?i).*(embed|wte|wpe).*")

Rules = Sequence[Tuple[str, float]]
Mask = Union[None, Any, Callable[[Any], Any]]


def is_kernel(names: Sequence[str], ndim: int, layout: str = "flax") -> bool:
  """Whether the leaf at path ``names`` is a conv/dense/attention kernel."""
  if ndim < 2 or not names:
    return False
  if layout == "torch":
    return names[-1] == "weight" and not any(_TORCH_EMBEDDING.fullmatch(n) for n in names[:-1])
  return names[-1] == "kernel"


def kernel_mask(params: Any, layout: str = "flax") -> Any:
  """Boolean pytree: ``True`` at conv/dense/attention kernels of ``params``."""
  views.check_layout(layout)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: is_kernel(views.path_names(path), getattr(leaf, "ndim", 0), layout), params)


def resolve_mask(mask: Mask, params: Any, layout: str) -> Any:
  """``None`` -> :func:`kernel_mask`; a callable is called on ``params``; a pytree is used as is."""
  if mask is None:
    return kernel_mask(params, layout)
  return mask(params) if callable(mask) else mask


def check_rules(rules: Optional[Rules]) -> Optional[Rules]:
  """Returns ``rules`` if it is None or a sequence of ``(regex, scale >= 0)`` pairs; ValueError otherwise."""
  for rule in rules or ():
    if (not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str)
        or isinstance(rule[1], bool) or not isinstance(rule[1], (int, float)) or rule[1] < 0):
      raise ValueError(f"rules must be a sequence of (regex, non-negative scale) pairs, got {rule!r}.")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"rules must be a sequence of (regex, non-negative scale) pairs with valid regexes, "
                       f"got {rule!r} ({e}).") from e
  return rules


def rule_scale(path: str, rules: Optional[Rules]) -> float:
  """Scale of the first rule whose regex fully matches ``path``; 1.0 when none does."""
  for pattern, scale in rules or ():
    if re.fullmatch(pattern, path):
      return float(scale)
  return 1.0

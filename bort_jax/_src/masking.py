"""Which leaves Bort constrains, and with what per-layer weight.

Only convolution, dense and attention kernels are constrained; never biases, normalisation scales or
embeddings. Selection is by path and shape, so it works on Linen ``params`` dicts and on NNX ``State``.
Per-layer weights follow big_vision's convention: an ordered list of ``(regex, scale)`` rules matched with
``re.fullmatch`` against ``"module/submodule/kernel"`` paths; the first match wins.
"""

import re
from typing import Any
from typing import Callable
from typing import Sequence
from typing import Tuple
from typing import Union

import jax

from bort_jax._src import validation
from bort_jax._src import views

# Modules whose 2-D `weight` is an embedding table in PyTorch-layout trees (Flax calls the leaf `embedding`):
# nn.Embedding under names like `embed_tokens`, `word_embeddings`, `wte`, `wpe`. A conv patch embedding
# (`patch_embed.proj.weight`, 4-D) or a linear one is a kernel.
_TORCH_EMBEDDING = re.compile(r"(?i).*(embed|wte|wpe).*")

Rules = Sequence[Tuple[str, float]]
Mask = Union[None, Any, Callable[[Any], Any]]


def is_kernel(names: Sequence[str], ndim: int, layout: str = "flax") -> bool:
  """Whether the leaf at path ``names`` is a conv/dense/attention kernel."""
  if ndim < 2 or not names:
    return False
  if layout == "torch":
    if names[-1] == views.TORCH_QKV:
      return ndim == 2
    table = ndim == 2 and len(names) >= 2 and _TORCH_EMBEDDING.fullmatch(names[-2]) is not None
    return names[-1] == "weight" and not table
  return names[-1] == "kernel"


def kernel_mask(params: Any, layout: str = "flax") -> Any:
  """Boolean pytree: ``True`` at conv/dense/attention kernels of ``params``.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> bj.kernel_mask({"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}})
    {'fc': {'bias': False, 'kernel': True}}
  """
  views.check_layout(layout)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: is_kernel(views.path_names(path), getattr(leaf, "ndim", 0), layout), params)


def resolve_mask(mask: Mask, params: Any, layout: str) -> Any:
  """``None`` -> :func:`kernel_mask`; a callable is called on ``params``; a pytree is used as is."""
  if mask is None:
    return kernel_mask(params, layout)
  return mask(params) if callable(mask) else mask


check_rules = validation.check_rules

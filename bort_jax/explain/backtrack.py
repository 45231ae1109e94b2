"""Backtracking saliency: trace the top-k activated features of a layer back to the pixels.

Keep the ``k`` strongest features ``f_S`` of a layer and send them through the transposed network at ``x``:

  s = J(x)ᵀ (m_S ⊙ f(x)) / ∏_l α_l,

with ``m_S`` the indicator of the selected features (Zhang et al., "Bort", ICLR 2023, Sec. 4.2, backtracking).
For a Bort network ``s`` is the part of the input that the selected features encode. Features are ranked by
their activation, or by their contribution ``f_j ∂logit_t/∂f_j`` to a target logit for a class-specific map.
The result has the shape of ``x``; sum it over channels for a 2-D map.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bort_jax.explain.reconstruction import FeaturesFn

BY = ("unit", "channel")


def top_k_mask(scores: jax.Array, k: int, by: str = "unit") -> jax.Array:
  """Per-sample indicator of the ``k`` highest-scoring features.

  Args:
    scores: ``(N, ...)`` feature scores; the last axis is the channel axis.
    k: number of units (``by="unit"``) or channels (``by="channel"``) to keep per sample.
    by: ``"unit"`` ranks every entry (position × channel); ``"channel"`` ranks channels by their score summed
      over positions and keeps all positions of the chosen channels.

  Returns:
    boolean mask with the shape of ``scores``.
  """
  if by not in BY:
    raise ValueError(f"by must be one of {BY}, got {by!r}")
  n = scores.shape[0]
  ranked = scores.reshape(n, -1) if by == "unit" else scores.reshape(n, -1, scores.shape[-1]).sum(1)
  if not 1 <= k <= ranked.shape[1]:
    raise ValueError(f"k must be in [1, {ranked.shape[1]}] for by={by!r} and scores of shape {scores.shape}, got {k}")
  _, idx = jax.lax.top_k(ranked, k)
  chosen = jnp.zeros(ranked.shape, bool).at[jnp.arange(n)[:, None], idx].set(True)
  if by == "unit":
    return chosen.reshape(scores.shape)
  return jnp.broadcast_to(chosen.reshape(n, *([1] * (scores.ndim - 2)), -1), scores.shape)


def backtrack(
    features_fn: FeaturesFn,
    params: Any,
    x: jax.Array,
    k: int,
    *,
    by: str = "unit",
    scale: float | jax.Array = 1.0,
    head_fn: Callable[[Any, jax.Array], jax.Array] | None = None,
    target: jax.Array | None = None,
) -> jax.Array:
  """Backtracked saliency ``scale · J(x)ᵀ (m_S ⊙ f(x))`` of the top-k features of a layer.

  Args:
    features_fn: ``features_fn(params, x) -> features`` of the layer.
    params: parameters passed to ``features_fn`` and ``head_fn``.
    x: input batch.
    k: number of features kept per sample (static).
    by: ``"unit"`` or ``"channel"``, see ``top_k_mask``.
    scale: ``1 / ∏ α_l`` of the layers up to the feature layer.
    head_fn: optional ``head_fn(params, features) -> logits``, the rest of the network; with ``target`` the
      features are ranked by their contribution ``f ⊙ ∂logit_target/∂f`` instead of their activation.
    target: ``(N,)`` integer classes, required with ``head_fn``.

  Returns:
    input-shaped saliency.
  """
  if (head_fn is None) != (target is None):
    raise ValueError("head_fn and target must be given together (class-specific ranking) or both left None")
  features, vjp = jax.vjp(lambda inputs: features_fn(params, inputs), x)
  scores = features
  if head_fn is not None:
    logit = lambda f: jnp.sum(jnp.take_along_axis(head_fn(params, f), target[:, None], axis=1))
    scores = features * jax.grad(logit)(features)
  mask = top_k_mask(scores, k, by)
  return scale * vjp(jnp.where(mask, features, 0))[0]

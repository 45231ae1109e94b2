"""Attribution metrics: grid pointing game and deletion / insertion AUC.

Attribution maps are (N, H, W) or NHWC (channels are summed to one value per pixel). Reconstruction
PSNR / MSE live in :func:`bort_jax.explain.reconstruction.reconstruction_errors`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

CURVE_MODES = ("deletion", "insertion")
CURVE_SCORES = ("softmax", "logit")


def pixel_map(attribution: jax.Array) -> jax.Array:
  """(N, H, W) per-pixel attribution: NHWC maps are summed over channels."""
  if attribution.ndim not in (3, 4):
    raise ValueError(f"attribution must be (N, H, W) or (N, H, W, C), got shape {attribution.shape}")
  return attribution.sum(-1) if attribution.ndim == 4 else attribution


def make_grids(images: np.ndarray, labels: np.ndarray, grid_size: int, num_grids: int, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
  """Tile ``grid_size²`` images of distinct classes into grids (Böhm et al., 2022, grid pointing game).

  Every grid draws its classes without replacement and one random image per class (NumPy generator
  seeded with ``seed``, so the grids are reproducible).

  Returns:
    (grids, cell_labels): (G, g·H, g·W, C) images and (G, g²) class of each cell in row-major order.
  """
  classes = np.unique(labels)
  cells = grid_size * grid_size
  if grid_size < 2 or cells > classes.size:
    raise ValueError(f"grid_size must be >= 2 with grid_size² <= {classes.size} classes, got {grid_size}")
  rng = np.random.default_rng(seed)
  by_class = {c: np.flatnonzero(labels == c) for c in classes}
  cell_labels = np.stack([rng.choice(classes, cells, replace=False) for _ in range(num_grids)])
  picks = np.vectorize(lambda c: rng.choice(by_class[c]))(cell_labels)     # (G, g²) image indices
  _, h, w, c = images.shape
  tiles = images[picks].reshape(num_grids, grid_size, grid_size, h, w, c)
  grids = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(num_grids, grid_size * h, grid_size * w, c)
  return grids, cell_labels


def pointing_game_score(attribution: jax.Array, grid_size: int, cell: jax.Array) -> jax.Array:
  """Share of positive attribution that falls in the correct grid cell, per sample (N,).

  score = Σ_{p ∈ cell} max(a_p, 0) / Σ_p max(a_p, 0) (Böhm et al., 2022); 1 for a perfect map, 1/g² for a
  uniform one, 0 for a map without positive mass. ``cell`` is the row-major index of the target cell.
  """
  positive = jnp.maximum(pixel_map(attribution), 0.0)
  n, h, w = positive.shape
  if h % grid_size or w % grid_size:
    raise ValueError(f"grid_size must divide the map size {(h, w)}, got {grid_size}")
  per_cell = positive.reshape(n, grid_size, h // grid_size, grid_size, w // grid_size).sum((2, 4))
  per_cell = per_cell.reshape(n, grid_size * grid_size)
  total = per_cell.sum(-1)
  inside = jnp.take_along_axis(per_cell, cell[:, None], axis=-1)[:, 0]
  return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), 0.0)


def perturbation_curve(apply_fn: Callable, params, x: jax.Array, attribution: jax.Array, target: jax.Array, *,
                       mode: str = "deletion", steps: int = 28, baseline: float = 0.0,
                       score: str = "softmax") -> jax.Array:
  """Class score while pixels are removed (deletion) or revealed (insertion) by decreasing attribution.

  Petsiuk et al., "RISE", BMVC 2018. Step k of ``steps`` replaces (deletion) or keeps (insertion) the
  round(k·P/steps) most-attributed of the P pixels, the others being set to / left at ``baseline``.

  Returns:
    (N, steps + 1) curve of the target's softmax probability or logit (``score``).
  """
  if mode not in CURVE_MODES:
    raise ValueError(f"mode must be one of {CURVE_MODES}, got {mode!r}")
  if score not in CURVE_SCORES:
    raise ValueError(f"score must be one of {CURVE_SCORES}, got {score!r}")
  n, h, w = x.shape[:3]
  flat = pixel_map(attribution).reshape(n, h * w)
  order = jnp.argsort(-flat, axis=-1, stable=True)
  rank = jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(jnp.arange(h * w))
  rank = rank.reshape(n, h, w, 1)

  def evaluate(k):
    count = jnp.round(k * (h * w) / steps)
    top = rank < count
    visible = ~top if mode == "deletion" else top
    logits = apply_fn(params, jnp.where(visible, x, baseline))
    values = jax.nn.softmax(logits) if score == "softmax" else logits
    return jnp.take_along_axis(values, target[:, None], axis=-1)[:, 0]

  return jax.lax.map(evaluate, jnp.arange(steps + 1)).T


def curve_auc(curve: jax.Array) -> jax.Array:
  """Trapezoidal area under a curve sampled at equally spaced fractions of [0, 1], over the last axis."""
  return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * (curve.shape[-1] - 1))

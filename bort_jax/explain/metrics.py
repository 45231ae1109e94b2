"""Attribution metrics: grid pointing game (B-cos localisation) and deletion / insertion (RISE).

Both follow their authors' published protocols by default; the earlier, simpler variants stay available behind
explicit options.

* Grid pointing game — Böhle, Fritz & Schiele, "B-cos Networks: Alignment is All We Need for Interpretability",
  CVPR 2022, and Böhle et al., "B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers",
  TPAMI 2024 (B-cos v2); the metric goes back to their CoDA-Nets (CVPR 2021) "localisation metric".
  :func:`make_grids` (``selection="bcos"``) + :func:`grid_cells` (``cells="all"``) +
  :func:`pointing_game_score` (``smooth``).
* Deletion / insertion — Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
  Models", BMVC 2018. :func:`perturbation_curve` (``substrate="rise"``) + :func:`curve_auc`.

Attribution maps are (N, H, W) or NHWC (channels are summed to one value per pixel). Images are NHWC. Nothing
here depends on how the model was built: callers pass ``apply_fn(params, x) -> logits`` or the model's logits
as arrays. Reconstruction PSNR / MSE live in :func:`bort_jax.explain.reconstruction.reconstruction_errors`.
"""

from collections.abc import Callable
import warnings

import jax
import jax.numpy as jnp
import numpy as np

CURVE_MODES = ("deletion", "insertion")
CURVE_SCORES = ("softmax", "logit")
CURVE_SUBSTRATES = ("rise", "constant")
GRID_SELECTIONS = ("bcos", "random")
GRID_CELLS = ("all", "random")
RISE_STEPS = 28            # RISE's ImageNet evaluation: 224·8 = 1792 = 224²/28 pixels per step


def pixel_map(attribution: jax.Array) -> jax.Array:
  """(N, H, W) per-pixel attribution: NHWC maps are summed over channels."""
  if attribution.ndim not in (3, 4):
    raise ValueError(f"attribution must be (N, H, W) or (N, H, W, C), got shape {attribution.shape}")
  return attribution.sum(-1) if attribution.ndim == 4 else attribution


# ----------------------------------------------------------------------------------------------------------------
# Grid pointing game (B-cos localisation metric)
# ----------------------------------------------------------------------------------------------------------------

def _confident_correct_queues(labels: np.ndarray, logits, predictions, confidences, threshold: float
                              ) -> list[np.ndarray]:
  """Per class: indices of correctly classified images above the threshold, by decreasing confidence."""
  if logits is not None:
    if predictions is not None or confidences is not None:
      raise ValueError("pass either logits or predictions and confidences, not both")
    logits = np.asarray(logits, np.float64)
    predictions = logits.argmax(-1)
    rank_key = logits.max(-1)                          # the authors rank by the top logit ...
    with np.errstate(over="ignore"):
      confident = 1.0 / (1.0 + np.exp(-rank_key)) > threshold   # ... and threshold its sigmoid
  elif predictions is not None and confidences is not None:
    predictions = np.asarray(predictions)
    rank_key = np.asarray(confidences, np.float64)
    confident = rank_key > threshold
  else:
    raise ValueError('selection="bcos" needs the model\'s logits, or its predictions and confidences')
  if predictions.shape != labels.shape or rank_key.shape != labels.shape:
    raise ValueError(f"predictions / confidences must have the labels' shape {labels.shape}, got "
                     f"{predictions.shape} and {rank_key.shape}")
  keep = (predictions == labels) & confident
  order = np.argsort(-rank_key, kind="stable")         # ties keep the dataset order
  ordered = order[keep[order]]
  return [ordered[labels[ordered] == c] for c in range(int(labels.max()) + 1)]


def _bcos_sequence(queues: list[np.ndarray], cells: int, seed: int) -> np.ndarray:
  """The authors' index list: blocks of ``cells`` distinct classes, each class's images in decreasing confidence.

  While more than ``cells`` classes still have an unused confident image, draw ``cells`` of them without
  replacement (legacy NumPy ``RandomState(seed).choice`` — the generator behind the authors'
  ``np.random.seed(42); np.random.choice``) and append each drawn class's next image.
  """
  rng = np.random.RandomState(seed)
  classes = np.arange(len(queues))
  used = np.zeros(len(queues), np.int64)
  available = np.array([len(q) > 0 for q in queues])
  sequence = []
  while available.sum() > cells:
    for c in rng.choice(classes[available], size=cells, replace=False):
      sequence.append(queues[c][used[c]])
      used[c] += 1
      available[c] = used[c] < len(queues[c])
  return np.asarray(sequence, np.int64)


def _read_grids(sequence: np.ndarray, labels: np.ndarray, cells: int, num_grids: int, reference_offset: bool
                ) -> list[np.ndarray]:
  """Cut the index list into grids of ``cells`` images (in the order they are read)."""
  if not reference_offset:
    blocks = len(sequence) // cells
    return [sequence[i * cells:(i + 1) * cells] for i in range(min(blocks, num_grids))]
  grids, offset = [], 0
  while len(grids) < num_grids:
    picks, read = [], 0
    while len(picks) < cells and offset + read < len(sequence):
      index = sequence[offset + read]
      read += 1
      if labels[index] not in labels[picks]:
        picks.append(index)
    if len(picks) < cells:
      break
    grids.append(np.asarray(picks))
    offset += read + 1                                 # the reference code skips one index after each grid
  return grids


def _grid_indices(labels: np.ndarray, grid_size: int, num_grids: int, logits, predictions, confidences,
                  threshold: float, seed: int, selection: str, reference_offset: bool) -> np.ndarray:
  if selection not in GRID_SELECTIONS:
    raise ValueError(f"selection must be one of {GRID_SELECTIONS}, got {selection!r}")
  classes = np.unique(labels)
  cells = grid_size * grid_size
  if grid_size < 2 or cells > classes.size:
    raise ValueError(f"grid_size must be >= 2 with grid_size² <= {classes.size} classes, got {grid_size}")
  if selection == "random":
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    cell_labels = np.stack([rng.choice(classes, cells, replace=False) for _ in range(num_grids)])
    return np.vectorize(lambda c: rng.choice(by_class[c]))(cell_labels).reshape(num_grids, cells)
  queues = _confident_correct_queues(labels, logits, predictions, confidences, threshold)
  grids = _read_grids(_bcos_sequence(queues, cells, seed), labels, cells, num_grids, reference_offset)
  if len(grids) < num_grids:
    warnings.warn(f"only {len(grids)} of {num_grids} {grid_size}x{grid_size} grids: too few confident, correctly "
                  "classified images", stacklevel=3)
  if not grids:
    return np.zeros((0, cells), np.int64)
  # The reference code tiles the k-th image of a grid at row k mod g, column k div g (column-major fill).
  return np.stack([g.reshape(grid_size, grid_size).T.reshape(cells) for g in grids])


def grid_indices(labels: np.ndarray, grid_size: int, num_grids: int, *, logits=None, predictions=None,
                 confidences=None, threshold: float = 0.5, seed: int = 42, selection: str = "bcos",
                 reference_offset: bool = True) -> np.ndarray:
  """(G, g²) indices of the images tiled into each grid, cells in row-major order (see :func:`make_grids`)."""
  return _grid_indices(np.asarray(labels), grid_size, num_grids, logits, predictions, confidences, threshold, seed,
                       selection, reference_offset)


def make_grids(images: np.ndarray, labels: np.ndarray, grid_size: int, num_grids: int, *, logits=None,
               predictions=None, confidences=None, threshold: float = 0.5, seed: int = 42,
               selection: str = "bcos", reference_offset: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Tile ``grid_size²`` images of distinct classes into grids for the grid pointing game.

  ``selection="bcos"`` (default) builds the grids of the B-cos localisation metric (Böhle et al., CVPR 2022;
  B-cos v2, TPAMI 2024), as their ``localisation`` analysis does (``interpretability/analyses/localisation.py``
  in moboehle/B-cos and B-cos/B-cos-v2):

  1. Only correctly classified images whose confidence exceeds ``threshold`` are used. With ``logits`` (N, C)
     this is the authors' convention: prediction = argmax, images ranked by the top logit and kept while
     sigmoid(top logit) > ``threshold`` (0.5 in both reference implementations; B-cos v2's "noconfthresh"
     configs use 0). Callers may instead pass ``predictions`` (N,) and ``confidences`` (N,), ranked and
     thresholded as given (pass logits to rank exactly as the authors: float32 probabilities saturate at 1).
  2. Each class's images are taken in decreasing confidence (ties in dataset order).
  3. With a fixed seed (the authors' 42, legacy ``np.random.RandomState``), while more than g² classes still
     have an unused confident image, g² distinct such classes are drawn without replacement and the next image
     of each is appended to an index list (so the list is made of blocks of g² distinct classes).
  4. Grids are read from that list. ``reference_offset=True`` reads it as the reference code does: each grid
     takes the next images whose class is not yet in the grid, and the read offset then advances one index
     further, so one image is skipped after every grid and later grids straddle two blocks (classes stay
     distinct and per-class order stays decreasing). ``reference_offset=False`` uses one block per grid, the
     layout the reference code's docstring describes.
  5. The k-th image of a grid goes to row k mod g, column k div g (the reference code's tiling); ``cell_labels``
     is returned in row-major cell order whatever the fill order.

  Fewer than ``num_grids`` grids are returned (with a warning) when the confident images run out.

  ``selection="random"`` is the earlier variant: classes drawn without replacement and one random image per
  class (``np.random.default_rng(seed)``), misclassified images included; no predictions needed.

  Returns:
    (grids, cell_labels): (G, g·H, g·W, C) images and (G, g²) class of each cell in row-major order.
  """
  labels = np.asarray(labels)
  picks = _grid_indices(labels, grid_size, num_grids, logits, predictions, confidences, threshold, seed, selection,
                        reference_offset)
  g, (_, h, w, c) = len(picks), images.shape
  tiles = np.asarray(images)[picks].reshape(g, grid_size, grid_size, h, w, c)
  grids = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(g, grid_size * h, grid_size * w, c)
  return grids, labels[picks]


def grid_cells(cell_labels: np.ndarray, cells: str = "all", seed: int = 1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Which (grid, target class, cell) triples to score.

  ``cells="all"`` (default, the B-cos protocol): every cell of every grid is scored, each with an explanation
  of its own class — G·g² triples, grid-major. ``cells="random"``: the earlier variant, one random cell per grid
  (``np.random.default_rng(seed)``).

  Returns:
    (grid_index, target, cell) int32 arrays: explain ``grids[grid_index]`` for class ``target`` and score it
    with :func:`pointing_game_score` at row-major cell ``cell``.
  """
  if cells not in GRID_CELLS:
    raise ValueError(f"cells must be one of {GRID_CELLS}, got {cells!r}")
  num_grids, per_grid = cell_labels.shape
  if cells == "all":
    grid_index = np.repeat(np.arange(num_grids), per_grid)
    cell = np.tile(np.arange(per_grid), num_grids)
  else:
    grid_index = np.arange(num_grids)
    cell = np.random.default_rng(seed).integers(per_grid, size=num_grids)
  target = cell_labels[grid_index, cell]
  return grid_index.astype(np.int32), target.astype(np.int32), cell.astype(np.int32)


def box_smooth(maps: jax.Array, size: int) -> jax.Array:
  """Mean over a ``size``×``size`` window centred on each pixel of (N, H, W) maps, zeros outside the map.

  The B-cos localisation smoothing: stride-1 average pooling with (size − 1)/2 zero padding that counts the
  padding (PyTorch ``avg_pool2d`` defaults), so every output is the window sum / size². ``size`` must be odd;
  1 is the identity.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"smooth must be an odd kernel size >= 1, got {size}")
  if size == 1:
    return maps
  pad = (size - 1) // 2
  total = jax.lax.reduce_window(maps, jnp.zeros((), maps.dtype), jax.lax.add, (1, size, size), (1, 1, 1),
                                ((0, 0), (pad, pad), (pad, pad)))
  return total / (size * size)


def pointing_game_score(attribution: jax.Array, grid_size: int, cell: jax.Array, *, smooth: int = 1) -> jax.Array:
  """Share of positive attribution that falls in the target grid cell, per sample (N,).

  The B-cos localisation metric (Böhle et al., CVPR 2022; B-cos v2): channels summed, the map optionally
  smoothed by a ``smooth``×``smooth`` box filter (:func:`box_smooth`; the authors use 15 on ImageNet, 1 — no
  smoothing — on CIFAR-10), then score = Σ_{p ∈ cell} max(a_p, 0) / Σ_p max(a_p, 0). Smoothing comes before the
  clamp, as in their code. 1 for a perfect map, 1/g² for a uniform one, 0 for a map without positive mass.
  ``cell`` is the row-major index of the target cell.
  """
  maps = box_smooth(pixel_map(attribution), smooth)
  positive = jnp.maximum(maps, 0.0)
  n, h, w = positive.shape
  if h % grid_size or w % grid_size:
    raise ValueError(f"grid_size must divide the map size {(h, w)}, got {grid_size}")
  per_cell = positive.reshape(n, grid_size, h // grid_size, grid_size, w // grid_size).sum((2, 4))
  per_cell = per_cell.reshape(n, grid_size * grid_size)
  total = per_cell.sum(-1)
  inside = jnp.take_along_axis(per_cell, jnp.asarray(cell)[:, None], axis=-1)[:, 0]
  return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Deletion / insertion (RISE)
# ----------------------------------------------------------------------------------------------------------------

def gaussian_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
  """RISE's (size, size) blur kernel: a size×size unit impulse smoothed by a Gaussian of std ``sigma``.

  The Gaussian follows SciPy's ``gaussian_filter`` conventions (radius int(4σ + 0.5), weights normalised over
  it) and the impulse's border is mirrored half-sample-symmetrically ("reflect"), so the tails beyond the
  window fold back into it: the kernel sums to 1 and is much flatter than a truncated Gaussian (size 11, σ 5:
  0.0088 at the centre, 0.0077 at the corners). Separable: the outer product of the 1-D kernel with itself.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"blur kernel size must be odd and >= 1, got {size}")
  radius = int(4.0 * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * (offsets / sigma) ** 2)
  weights /= weights.sum()
  centre, period = size // 2, 2 * size
  kernel = np.zeros(size)
  for p in range(size):
    source = np.mod(p + offsets, period)
    source = np.where(source < size, source, period - 1 - source)      # half-sample mirror into [0, size)
    kernel[p] = weights[source == centre].sum()
  return np.outer(kernel, kernel)


def rise_blur(x: jax.Array, baseline=0.0, size: int = 11, sigma: float = 5.0) -> jax.Array:
  """RISE's insertion start image: each channel of NHWC ``x`` convolved with :func:`gaussian_kernel`.

  RISE blurs the normalised image with zero padding of size // 2. Here ``baseline`` is the value that is zero
  in the model's normalised space (the per-channel dataset mean for a model that takes raw images; 0 for one
  that takes normalised images), so the image is blurred as ``baseline + conv(x − baseline)`` with zero padding.
  """
  pad = size // 2
  kernel = jnp.asarray(gaussian_kernel(size, sigma), x.dtype)
  channels = x.shape[-1]
  rhs = jnp.broadcast_to(kernel[:, :, None, None], (size, size, 1, channels))
  baseline = jnp.asarray(baseline, x.dtype)
  out = jax.lax.conv_general_dilated(x - baseline, rhs, (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
                                     precision=jax.lax.Precision.HIGHEST)
  return out + baseline


def perturbation_counts(num_pixels: int, *, pixels_per_step: int | None = None, steps: int | None = None
                        ) -> np.ndarray:
  """How many pixels are changed at each point of a deletion / insertion curve.

  Default (RISE): ``pixels_per_step`` pixels per step (default ⌈P/28⌉, RISE's ImageNet evaluation step
  224·8 = 1792 = 224²/28); point i after min(i·step, P) pixels, ⌈P/step⌉ + 1 points. ``steps`` instead gives the
  earlier variant, point k after round(k·P/steps) pixels. The two agree when the step divides P.
  """
  if steps is not None:
    if pixels_per_step is not None:
      raise ValueError("pass pixels_per_step or steps, not both")
    return np.round(np.arange(steps + 1) * num_pixels / steps).astype(np.int64)
  step = pixels_per_step if pixels_per_step is not None else -(-num_pixels // RISE_STEPS)
  if step < 1:
    raise ValueError(f"pixels_per_step must be >= 1, got {step}")
  return np.minimum(np.arange(-(-num_pixels // step) + 1) * step, num_pixels)


def perturbation_curve(apply_fn: Callable, params, x: jax.Array, attribution: jax.Array,
                       target: jax.Array | None = None, *, mode: str = "deletion", substrate: str = "rise",
                       baseline=0.0, pixels_per_step: int | None = None, steps: int | None = None,
                       score: str = "softmax", blur_size: int = 11, blur_sigma: float = 5.0) -> jax.Array:
  """Class score while pixels are deleted or inserted in order of decreasing attribution (RISE).

  Petsiuk, Das & Saenko, "RISE", BMVC 2018. Conventions of the default ``substrate="rise"``:

  * target: the model's top predicted class on the unperturbed image (``target=None``); pass labels to override.
  * score: the softmax probability of the target (``score="logit"`` for the raw logit).
  * order: pixels by decreasing channel-summed attribution (ties in row-major pixel order; RISE's NumPy
    quicksort leaves the order of ties unspecified); a changed pixel changes in every channel.
  * deletion: starts from ``x``, changed pixels take the value 0 of the normalised image space, i.e.
    ``baseline`` = the per-channel dataset mean for a model on raw images (0 for a model on normalised inputs).
  * insertion: starts from :func:`rise_blur` of ``x`` (kernel ``blur_size`` = 11, σ ``blur_sigma`` = 5, zero
    padding in normalised space), changed pixels take their value in ``x``.
  * schedule: :func:`perturbation_counts` — ``pixels_per_step`` pixels per step, default ⌈H·W/28⌉ (RISE's
    224·8 pixels per step on 224×224 ImageNet, 28 steps), the last step possibly partial.

  ``substrate="constant"`` is the earlier variant: deletion and insertion both use the constant ``baseline``.
  ``steps`` selects the earlier schedule (round(k·H·W/steps) pixels at point k).

  Returns:
    (N, points) curve; its area is :func:`curve_auc`.
  """
  if mode not in CURVE_MODES:
    raise ValueError(f"mode must be one of {CURVE_MODES}, got {mode!r}")
  if score not in CURVE_SCORES:
    raise ValueError(f"score must be one of {CURVE_SCORES}, got {score!r}")
  if substrate not in CURVE_SUBSTRATES:
    raise ValueError(f"substrate must be one of {CURVE_SUBSTRATES}, got {substrate!r}")
  n, h, w = x.shape[:3]
  counts = jnp.asarray(perturbation_counts(h * w, pixels_per_step=pixels_per_step, steps=steps))
  if target is None:
    target = jnp.argmax(apply_fn(params, x), axis=-1)
  flat = pixel_map(attribution).reshape(n, h * w)
  order = jnp.argsort(-flat, axis=-1, stable=True)
  rank = jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(jnp.arange(h * w))
  rank = rank.reshape(n, h, w, 1)
  background = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
  if mode == "deletion":
    start, finish = x, background
  else:
    start = rise_blur(x, baseline, blur_size, blur_sigma) if substrate == "rise" else background
    finish = x

  def evaluate(count):
    logits = apply_fn(params, jnp.where(rank < count, finish, start))
    values = jax.nn.softmax(logits) if score == "softmax" else logits
    return jnp.take_along_axis(values, target[:, None], axis=-1)[:, 0]

  return jax.lax.map(evaluate, counts).T


def curve_auc(curve: jax.Array) -> jax.Array:
  """Area under a curve over the last axis, its points equally spaced on [0, 1] (RISE's AUC).

  RISE: (Σ_i s_i − s_0/2 − s_n/2) / n for points s_0..s_n — the trapezoid rule with point i at i/n, also when
  the last step changes fewer pixels. The AUC of the mean curve equals the mean of the AUCs.
  """
  return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * (curve.shape[-1] - 1))

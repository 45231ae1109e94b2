"""Grid pointing game (B-cos protocol) and deletion / insertion (RISE protocol), each re-derived in NumPy / SciPy.

The references below are written from the protocols' definitions (see the docstrings of
``bort_jax.explain.metrics``), independently of the implementation: explicit loops over images, pixels and steps.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from bort_jax.explain import metrics

# ------------------------------------------------------------------------------------------------------------------
# Grid construction
# ------------------------------------------------------------------------------------------------------------------

def _toy_dataset():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 3)
  images = rng.uniform(size=(30, 4, 5, 1)).astype(np.float32)
  return images, labels


def _classified_dataset(num_classes=8, per_class=12, seed=0):
  """Images tagged by their index (constant value i), labels, and logits with misclassified / unconfident ones."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class)
  n = labels.size
  logits = rng.normal(size=(n, num_classes)) - 3.0
  top = rng.uniform(-1.5, 4.0, size=n)                     # sigmoid(top) > 0.5 iff top > 0
  wrong = rng.uniform(size=n) < 0.2
  predicted = np.where(wrong, (labels + 1 + rng.integers(num_classes - 1, size=n)) % num_classes, labels)
  logits[np.arange(n), predicted] = top + 0.0
  logits = np.minimum(logits, top[:, None])                # the predicted class holds the top logit
  images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, 4, 1)).copy()
  return images, labels, logits


def _reference_grid_indices(labels, logits, grid_size, num_grids, seed, skip_after_grid, threshold=0.5):
  """The B-cos grid protocol, step by step (lists and pops), cells returned in row-major order."""
  n, num_classes = logits.shape
  cells = grid_size * grid_size
  predicted, top = logits.argmax(1), logits.max(1)
  usable = [i for i in range(n) if predicted[i] == labels[i] and 1 / (1 + math.exp(-top[i])) > threshold]
  queue = {c: sorted((i for i in usable if labels[i] == c), key=lambda i: (-top[i], i)) for c in range(num_classes)}
  draw = np.random.RandomState(seed)                       # the authors: np.random.seed(42); np.random.choice
  sequence = []
  while sum(1 for c in queue if queue[c]) > cells:
    available = [c for c in range(num_classes) if queue[c]]
    for c in draw.choice(available, size=cells, replace=False):
      sequence.append(queue[c].pop(0))
  grids, position = [], 0
  while len(grids) < num_grids:
    if skip_after_grid:
      chosen = []
      while len(chosen) < cells and position < len(sequence):
        i = sequence[position]
        position += 1
        if labels[i] not in [labels[j] for j in chosen]:
          chosen.append(i)
      if len(chosen) < cells:
        break
      position += 1
    else:
      if position + cells > len(sequence):
        break
      chosen, position = sequence[position:position + cells], position + cells
    layout = np.zeros((grid_size, grid_size), np.int64)
    for k, i in enumerate(chosen):                         # k-th image at row k mod g, column k div g
      layout[k % grid_size, k // grid_size] = i
    grids.append(layout.reshape(-1))
  return np.array(grids).reshape(len(grids), cells)


@pytest.mark.parametrize("grid_size", [2, 3])
@pytest.mark.parametrize("reference_offset", [True, False])
def test_bcos_grids_hold_confident_correct_images_of_distinct_classes(grid_size, reference_offset):
  images, labels, logits = _classified_dataset(num_classes=10 if grid_size == 3 else 8, per_class=24)
  with pytest.warns(UserWarning, match="grids"):
    grids, cell_labels = metrics.make_grids(images, labels, grid_size, 50, logits=logits,
                                            reference_offset=reference_offset)
  top = logits.max(1)
  confident_correct = (logits.argmax(1) == labels) & (1 / (1 + np.exp(-top)) > 0.5)
  assert len(grids) >= 3
  seen_by_class = {}
  for g in range(len(grids)):
    tiles = grids[g].reshape(grid_size, 3, grid_size, 4).transpose(0, 2, 1, 3).reshape(grid_size**2, 3, 4)
    picks = tiles[:, 0, 0].astype(int)
    for tile, i in zip(tiles, picks):
      np.testing.assert_array_equal(tile, images[i, ..., 0])
    np.testing.assert_array_equal(cell_labels[g], labels[picks])
    assert len(set(cell_labels[g])) == grid_size**2       # distinct classes
    assert confident_correct[picks].all()                 # only confident, correctly classified images
    for i in picks:
      seen_by_class.setdefault(labels[i], []).append(i)
  for indices in seen_by_class.values():                  # each class in decreasing confidence, never reused
    assert len(set(indices)) == len(indices)
    assert np.all(np.diff(top[indices]) <= 0)
    if not reference_offset:                              # block layout: a prefix of the class's ranking
      ranking = np.flatnonzero(confident_correct & (labels == labels[indices[0]]))
      ranking = ranking[np.argsort(-top[ranking], kind="stable")]
      np.testing.assert_array_equal(indices, ranking[:len(indices)])


@pytest.mark.parametrize("grid_size", [2, 3])
@pytest.mark.parametrize("reference_offset", [True, False])
@pytest.mark.parametrize("seed", [42, 7])
def test_bcos_grids_match_the_protocol_step_by_step(grid_size, reference_offset, seed):
  _, labels, logits = _classified_dataset(num_classes=10, per_class=15, seed=seed)
  expected = _reference_grid_indices(labels, logits, grid_size, 1000, seed, reference_offset)
  with pytest.warns(UserWarning):
    picks = metrics.grid_indices(labels, grid_size, 1000, logits=logits, seed=seed,
                                 reference_offset=reference_offset)
  np.testing.assert_array_equal(picks, expected)
  fewer = metrics.grid_indices(labels, grid_size, 3, logits=logits, seed=seed, reference_offset=reference_offset)
  np.testing.assert_array_equal(fewer, expected[:3])      # deterministic under the seed, a prefix of the full run


def test_bcos_grids_accept_predictions_and_confidences():
  images, labels, logits = _classified_dataset()
  by_logits = metrics.make_grids(images, labels, 2, 4, logits=logits)
  probability = 1 / (1 + np.exp(-logits.max(1)))
  by_confidence = metrics.make_grids(images, labels, 2, 4, predictions=logits.argmax(1), confidences=probability)
  np.testing.assert_array_equal(by_logits[0], by_confidence[0])
  np.testing.assert_array_equal(by_logits[1], by_confidence[1])
  again = metrics.make_grids(images, labels, 2, 4, logits=logits)
  np.testing.assert_array_equal(again[0], by_logits[0])
  other_seed = metrics.make_grids(images, labels, 2, 4, logits=logits, seed=0)
  assert not np.array_equal(other_seed[1], by_logits[1])
  # No threshold: unconfident (but correct) images join, misclassified ones still do not.
  picks = metrics.grid_indices(labels, 2, 4, logits=logits, threshold=0.0)
  assert (logits.argmax(1) == labels)[picks].all()


@pytest.mark.parametrize("grid_size", [2, 3])
def test_random_grids_tile_distinct_classes_reproducibly(grid_size):
  images, labels = _toy_dataset()
  grids, cell_labels = metrics.make_grids(images, labels, grid_size, num_grids=7, seed=3, selection="random")
  assert grids.shape == (7, 4 * grid_size, 5 * grid_size, 1)
  assert all(len(set(row)) == grid_size**2 for row in cell_labels)
  for g in range(7):
    for cell, label in enumerate(cell_labels[g]):
      i, j = divmod(cell, grid_size)
      tile = grids[g, 4 * i:4 * i + 4, 5 * j:5 * j + 5]
      matches = [k for k in np.flatnonzero(labels == label) if np.array_equal(images[k], tile)]
      assert len(matches) == 1
  again, again_labels = metrics.make_grids(images, labels, grid_size, num_grids=7, seed=3, selection="random")
  np.testing.assert_array_equal(again, grids)
  np.testing.assert_array_equal(again_labels, cell_labels)


# ------------------------------------------------------------------------------------------------------------------
# Pointing-game score
# ------------------------------------------------------------------------------------------------------------------

def test_grid_cells_scores_every_cell_once():
  cell_labels = np.array([[3, 1, 4, 0], [2, 7, 5, 6], [9, 8, 1, 2]])
  grid_index, target, cell = metrics.grid_cells(cell_labels)
  assert len(grid_index) == cell_labels.size
  assert sorted(zip(grid_index.tolist(), cell.tolist())) == [(g, c) for g in range(3) for c in range(4)]
  np.testing.assert_array_equal(target, cell_labels[grid_index, cell])
  grid_index, target, cell = metrics.grid_cells(cell_labels, cells="random", seed=1)
  np.testing.assert_array_equal(grid_index, np.arange(3))
  np.testing.assert_array_equal(cell, np.random.default_rng(1).integers(4, size=3))
  np.testing.assert_array_equal(target, cell_labels[np.arange(3), cell])


@pytest.mark.parametrize("size", [1, 3, 5])
def test_box_smooth_matches_scipy_uniform_filter(size):
  maps = np.random.default_rng(5).normal(size=(3, 12, 9)).astype(np.float32)
  expected = np.stack([ndimage.uniform_filter(m.astype(np.float64), size=size, mode="constant", cval=0.0)
                       for m in maps])
  np.testing.assert_allclose(metrics.box_smooth(jnp.asarray(maps), size), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid_size,smooth", [(2, 1), (2, 5), (3, 3)])
def test_every_cell_score_matches_numpy(grid_size, smooth):
  side = 8
  rng = np.random.default_rng(6)
  cell_labels = np.stack([rng.permutation(10)[:grid_size**2] for _ in range(4)])
  grid_index, target, cell = metrics.grid_cells(cell_labels)
  maps = rng.normal(size=(len(cell), side * grid_size, side * grid_size, 2)).astype(np.float32)
  scores = metrics.pointing_game_score(jnp.asarray(maps), grid_size, jnp.asarray(cell), smooth=smooth)
  expected = []
  for k, c in enumerate(cell):
    summed = maps[k].astype(np.float64).sum(-1)
    smoothed = ndimage.uniform_filter(summed, size=smooth, mode="constant", cval=0.0)   # smoothing, then clamp
    positive = np.maximum(smoothed, 0.0)
    row, col = divmod(int(c), grid_size)
    inside = positive[side * row:side * (row + 1), side * col:side * (col + 1)].sum()
    expected.append(inside / positive.sum())
  assert scores.shape == (grid_size**2 * 4,)
  np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("grid_size", [2, 3])
def test_pointing_game_oracle_is_one_and_uniform_is_one_over_n(grid_size):
  n, size = 2 * grid_size**2, 6 * grid_size
  cells = jnp.arange(n) % grid_size**2
  block = np.arange(size) // 6                                   # grid row (or column) of each pixel
  cell_of_pixel = block[:, None] * grid_size + block[None, :]
  oracle = (cell_of_pixel[None] == np.asarray(cells)[:, None, None]).astype(np.float32)
  noise = np.random.default_rng(1).normal(size=(n, size, size, 3)).astype(np.float32)
  oracle_nhwc = oracle[..., None] * np.abs(noise) - (1 - oracle[..., None]) * np.abs(noise)  # negatives ignored
  np.testing.assert_allclose(metrics.pointing_game_score(jnp.asarray(oracle), grid_size, cells), 1.0)
  np.testing.assert_allclose(metrics.pointing_game_score(jnp.asarray(oracle_nhwc), grid_size, cells), 1.0,
                             rtol=1e-6)
  uniform = jnp.ones((n, size, size))
  np.testing.assert_allclose(metrics.pointing_game_score(uniform, grid_size, cells), 1 / grid_size**2, rtol=1e-6)
  np.testing.assert_allclose(metrics.pointing_game_score(-uniform, grid_size, cells), 0.0)


# ------------------------------------------------------------------------------------------------------------------
# Deletion / insertion
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,sigma", [(11, 5.0), (5, 1.5), (1, 5.0)])
def test_gaussian_kernel_is_the_gaussian_filtered_impulse(size, sigma):
  impulse = np.zeros((size, size))
  impulse[size // 2, size // 2] = 1.0
  np.testing.assert_allclose(metrics.gaussian_kernel(size, sigma), ndimage.gaussian_filter(impulse, sigma),
                             rtol=1e-12, atol=1e-15)


def _scipy_blur(x, baseline, size=11, sigma=5.0):
  """Per image and channel: correlate (x − b) with the impulse-response kernel, zeros outside, then add b back."""
  impulse = np.zeros((size, size))
  impulse[size // 2, size // 2] = 1.0
  kernel = ndimage.gaussian_filter(impulse, sigma)
  baseline = np.broadcast_to(np.asarray(baseline, np.float64), (x.shape[-1],))
  out = np.empty(x.shape, np.float64)
  for i in range(x.shape[0]):
    for c in range(x.shape[-1]):
      out[i, ..., c] = ndimage.correlate(x[i, ..., c] - baseline[c], kernel, mode="constant", cval=0.0) + baseline[c]
  return out


@pytest.mark.parametrize("baseline", [0.0, (0.2, 0.7)])
def test_rise_blur_matches_scipy(baseline):
  x = np.random.default_rng(7).uniform(size=(2, 16, 13, 2)).astype(np.float32)
  np.testing.assert_allclose(metrics.rise_blur(jnp.asarray(x), jnp.asarray(baseline)), _scipy_blur(x, baseline),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics.rise_blur(jnp.asarray(x), 0.0, 5, 1.0), _scipy_blur(x, 0.0, 5, 1.0),
                             rtol=1e-5, atol=1e-6)


def test_perturbation_counts_follow_rise_steps():
  np.testing.assert_array_equal(metrics.perturbation_counts(784), np.arange(29) * 28)
  np.testing.assert_array_equal(metrics.perturbation_counts(224 * 224), np.arange(29) * 1792)
  cifar = metrics.perturbation_counts(32 * 32)                       # step ⌈1024/28⌉ = 37, the last one partial
  np.testing.assert_array_equal(cifar, np.minimum(np.arange(29) * 37, 1024))
  np.testing.assert_array_equal(metrics.perturbation_counts(30, pixels_per_step=4), [0, 4, 8, 12, 16, 20, 24, 28, 30])
  np.testing.assert_array_equal(metrics.perturbation_counts(784, steps=14), np.arange(15) * 56)


# A small fixed model: two dense layers with a ReLU, in NumPy and in JAX.
_W1 = np.random.default_rng(8).normal(size=(6 * 5 * 2, 7)) / 4
_W2 = np.random.default_rng(9).normal(size=(7, 4))


def _mlp_numpy(x):
  return np.maximum(x.reshape(len(x), -1) @ _W1, 0.0) @ _W2


def _mlp_apply(params, x):
  w1, w2 = params
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ w1) @ w2


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _rise_curve(x, saliency, start, finish, step, target):
  """RISE's game on one image: move ``step`` most salient pixels per step from ``finish`` into the image."""
  h, w, c = x.shape
  order = np.argsort(-saliency.reshape(-1), kind="stable")
  image, finish = start.reshape(h * w, c).copy(), finish.reshape(h * w, c)
  scores = []
  for i in range(math.ceil(h * w / step) + 1):
    scores.append(_softmax(_mlp_numpy(image.reshape(1, h, w, c)))[0, target])
    moved = order[step * i:step * (i + 1)]
    image[moved] = finish[moved]
  return np.array(scores)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("pixels_per_step", [4, 7])
def test_rise_curves_and_auc_match_numpy(mode, pixels_per_step):
  rng = np.random.default_rng(10)
  x = rng.uniform(size=(3, 6, 5, 2)).astype(np.float32)
  attribution = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
  mean = np.array([0.45, 0.55], np.float32)                 # "zero in normalised space" for raw inputs
  params = (jnp.asarray(_W1, jnp.float32), jnp.asarray(_W2, jnp.float32))
  curve = metrics.perturbation_curve(_mlp_apply, params, jnp.asarray(x), jnp.asarray(attribution), mode=mode,
                                     baseline=jnp.asarray(mean), pixels_per_step=pixels_per_step)
  blurred = _scipy_blur(x, mean)
  expected = []
  for k in range(3):
    target = _mlp_numpy(x[k:k + 1].astype(np.float64)).argmax()          # the top predicted class
    deleted = np.broadcast_to(mean, x[k].shape)
    start, finish = (x[k], deleted) if mode == "deletion" else (blurred[k], x[k])
    expected.append(_rise_curve(x[k].astype(np.float64), attribution[k].sum(-1), start.astype(np.float64),
                                finish.astype(np.float64), pixels_per_step, target))
  expected = np.array(expected)
  assert curve.shape == (3, math.ceil(30 / pixels_per_step) + 1)
  np.testing.assert_allclose(curve, expected, rtol=1e-5, atol=1e-6)
  auc = np.array([np.trapezoid(e, np.linspace(0, 1, len(e))) for e in expected])
  np.testing.assert_allclose(metrics.curve_auc(curve), auc, rtol=1e-5, atol=1e-6)
  # Start: the image (deletion) or its blur (insertion); end: the mean image (deletion) or the image (insertion).
  targets = _mlp_numpy(x.astype(np.float64)).argmax(1)
  first, last = (x, np.broadcast_to(mean, x.shape)) if mode == "deletion" else (blurred, x)
  np.testing.assert_allclose(curve[:, 0], _softmax(_mlp_numpy(first))[np.arange(3), targets], rtol=1e-5)
  np.testing.assert_allclose(curve[:, -1], _softmax(_mlp_numpy(last))[np.arange(3), targets], rtol=1e-5)
  # An explicit target overrides the prediction.
  labels = np.array([3, 2, 1])
  labelled = metrics.perturbation_curve(_mlp_apply, params, jnp.asarray(x), jnp.asarray(attribution),
                                        jnp.asarray(labels), mode=mode, baseline=jnp.asarray(mean),
                                        pixels_per_step=pixels_per_step)
  np.testing.assert_allclose(labelled[:, -1], _softmax(_mlp_numpy(last))[np.arange(3), labels], rtol=1e-5)


def test_rise_curve_jits_with_a_traced_baseline():
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.uniform(size=(2, 6, 5, 2)), jnp.float32)
  attribution = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)
  params = (jnp.asarray(_W1, jnp.float32), jnp.asarray(_W2, jnp.float32))
  jitted = jax.jit(metrics.perturbation_curve, static_argnums=0,
                   static_argnames=("mode", "substrate", "pixels_per_step", "steps", "score"))
  for mode in metrics.CURVE_MODES:
    np.testing.assert_allclose(jitted(_mlp_apply, params, x, attribution, mode=mode, baseline=jnp.array(0.3)),
                               metrics.perturbation_curve(_mlp_apply, params, x, attribution, mode=mode,
                                                          baseline=0.3), rtol=1e-6)


def _weighted_sum_model(weights):
  # logit 0 = Σ_p w_p x_p on a single-channel image; logit 1 = 0.
  def apply_fn(params, x):
    logit = jnp.sum(x[..., 0] * params, axis=(1, 2))
    return jnp.stack([logit, jnp.zeros_like(logit)], -1)
  return apply_fn, jnp.asarray(weights, jnp.float32)


def test_constant_substrate_deletion_and_insertion_auc_on_a_weighted_sum():
  # Pixels weigh 4, 3, 2, 1 and the oracle attribution orders them that way: deleting one per step gives the
  # curve 10, 6, 3, 1, 0 (AUC 3.75); inserting gives 0, 4, 7, 9, 10 (AUC 6.25). The reversed order swaps them.
  apply_fn, params = _weighted_sum_model([[4.0, 3.0], [2.0, 1.0]])
  x, target = jnp.ones((1, 2, 2, 1)), jnp.zeros(1, jnp.int32)
  curve = functools.partial(metrics.perturbation_curve, apply_fn, params, x, target=target, steps=4, score="logit",
                            substrate="constant")
  oracle = params[None]
  np.testing.assert_allclose(curve(oracle, mode="deletion")[0], [10, 6, 3, 1, 0])
  np.testing.assert_allclose(curve(oracle, mode="insertion")[0], [0, 4, 7, 9, 10])
  np.testing.assert_allclose(metrics.curve_auc(curve(oracle, mode="deletion")), [3.75])
  np.testing.assert_allclose(metrics.curve_auc(curve(oracle, mode="insertion")), [6.25])
  np.testing.assert_allclose(metrics.curve_auc(curve(-oracle, mode="deletion")), [6.25])
  # The same game by pixels per step.
  np.testing.assert_allclose(curve(oracle, mode="deletion", steps=None, pixels_per_step=1)[0], [10, 6, 3, 1, 0])


def test_softmax_curve_starts_at_model_probability_and_ends_at_baseline():
  apply_fn, params = _weighted_sum_model(np.arange(16.0).reshape(4, 4) / 16)
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(3, 4, 4, 1)), jnp.float32)
  target = jnp.array([0, 1, 0])
  attribution = jnp.asarray(np.random.default_rng(4).normal(size=(3, 4, 4)), jnp.float32)
  deletion = jax.jit(functools.partial(metrics.perturbation_curve, apply_fn, steps=8))(params, x, attribution,
                                                                                        target)
  probs = jax.nn.softmax(apply_fn(params, x))[jnp.arange(3), target]
  np.testing.assert_allclose(deletion[:, 0], probs, rtol=1e-6)
  np.testing.assert_allclose(deletion[:, -1], 0.5, rtol=1e-6)


def test_invalid_options_raise():
  apply_fn, params = _weighted_sum_model(np.ones((2, 2)))
  x, target = jnp.ones((1, 2, 2, 1)), jnp.zeros(1, jnp.int32)
  with pytest.raises(ValueError, match="mode must be one of"):
    metrics.perturbation_curve(apply_fn, params, x, x, target, mode="blur")
  with pytest.raises(ValueError, match="substrate must be one of"):
    metrics.perturbation_curve(apply_fn, params, x, x, target, substrate="noise")
  with pytest.raises(ValueError, match="pixels_per_step or steps"):
    metrics.perturbation_curve(apply_fn, params, x, x, target, steps=4, pixels_per_step=1)
  with pytest.raises(ValueError, match="grid_size must divide"):
    metrics.pointing_game_score(jnp.ones((1, 5, 5)), 2, jnp.zeros(1, jnp.int32))
  with pytest.raises(ValueError, match="odd kernel size"):
    metrics.pointing_game_score(jnp.ones((1, 4, 4)), 2, jnp.zeros(1, jnp.int32), smooth=2)
  with pytest.raises(ValueError, match="grid_size must be >= 2"):
    metrics.make_grids(np.zeros((4, 2, 2, 1)), np.arange(4), 3, num_grids=1, selection="random")
  with pytest.raises(ValueError, match="needs the model's logits"):
    metrics.make_grids(np.zeros((4, 2, 2, 1)), np.arange(4), 2, num_grids=1)
  with pytest.raises(ValueError, match="cells must be one of"):
    metrics.grid_cells(np.zeros((1, 4), np.int64), cells="one")
